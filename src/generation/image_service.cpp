#include "generation/image_service.hpp"

#include <ctime>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/clock.hpp"
#include "core/hash.hpp"

namespace pixelgate::generation {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

double elapsed_ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

std::string digest_header(const std::string& sha256_hex) {
  // Repr-Digest (RFC 9530) carries the digest as base64 of the raw bytes.
  std::string raw;
  for (std::size_t i = 0; i + 1 < sha256_hex.size(); i += 2) {
    raw.push_back(static_cast<char>(std::stoi(sha256_hex.substr(i, 2), nullptr, 16)));
  }
  return "sha-256=:" + core::base64_encode(raw) + ":";
}

// Errors of a store that is down or refusing requests, as opposed to a
// damaged object.
bool is_store_outage(core::ErrorCode code) {
  return code == core::ErrorCode::Unavailable || code == core::ErrorCode::DeadlineExceeded ||
         code == core::ErrorCode::BadGateway;
}

Json spec_json(const core::GenerationSpec& spec) {
  return {{"backend", spec.backend},
          {"backend_type", spec.backend_type},
          {"adapter_version", spec.adapter_version},
          {"model", spec.model},
          {"prompt", spec.prompt},
          {"negative_prompt", spec.negative_prompt},
          {"width", spec.width},
          {"height", spec.height},
          {"steps", spec.steps},
          {"guidance", spec.guidance},
          {"sampler", spec.sampler},
          {"quality", spec.quality},
          {"style", spec.style},
          {"seed", spec.seed},
          {"random_seed", spec.random_seed},
          {"template", spec.template_name},
          {"template_version", spec.template_version}};
}

}  // namespace

std::string_view to_string(CacheState state) noexcept {
  switch (state) {
    case CacheState::Hit: return "hit";
    case CacheState::Miss: return "miss";
    case CacheState::Coalesced: return "coalesced";
  }
  return "miss";
}

std::shared_ptr<const storage::CachedImage> make_cached_image(const std::string& key, std::string bytes,
                                                              std::string metadata_json) {
  auto image = std::make_shared<storage::CachedImage>();
  image->key = key;
  image->content_type = std::string(imaging::mime_type(imaging::sniff_format(bytes)));
  const Json metadata = Json::parse(metadata_json, nullptr, false);
  std::string sha = metadata.is_object() ? metadata.value("sha256", "") : "";
  if (!core::is_sha256_hex(sha)) sha = core::sha256_hex(bytes);
  image->digest_header = digest_header(sha);
  if (metadata.is_object() && metadata.contains("spec") && metadata["spec"].is_object()) {
    image->placeholder = metadata["spec"].value("backend_type", "") == "placeholder";
  }
  image->bytes = std::make_shared<const std::string>(std::move(bytes));
  image->metadata_json = std::move(metadata_json);
  return image;
}

ImageService::ImageService(storage::ObjectStore& store, storage::HotCache& hot_cache, core::WorkerPool& workers,
                           ImageServiceOptions options)
    : store_(store),
      hot_cache_(hot_cache),
      workers_(workers),
      options_(options),
      open_files_(store, options.open_files) {}

std::shared_ptr<const core::OpenFile> ImageService::sendable_file(
    const std::shared_ptr<const storage::CachedImage>& image) {
  bool should_open = false;
  auto file = open_files_.find(*image, &should_open);
  if (should_open && !workers_.try_submit([this, image] { open_files_.open(*image); })) {
    open_files_.open_skipped(*image);
  }
  return file;
}

std::shared_ptr<const storage::CachedImage> ImageService::find_hot(const std::string& key) {
  return hot_cache_.find(key);
}

void ImageService::fetch_or_generate(const ResolvedRequest& resolved, const std::string& request_id,
                                     const core::GenerationCaller& caller, Completion done) {
  if (!resolved.spec.random_seed) {
    if (auto image = hot_cache_.find(resolved.key)) {
      done(ImageOutcome{std::move(image), CacheState::Hit, {}, 0});
      return;
    }
  }

  {
    std::lock_guard lock(mutex_);
    auto [it, inserted] = flights_.try_emplace(resolved.key);
    it->second.waiters.push_back({std::move(done), inserted});
    if (!inserted) {
      spdlog::debug("generation: request {} joined the generation of {}", request_id, resolved.key);
      return;
    }
  }

  const auto queued_at = Clock::now();
  const bool submitted = workers_.try_submit([this, resolved, request_id, caller, queued_at] {
    run_flight(resolved, request_id, caller, queued_at);
  });
  if (!submitted) {
    spdlog::warn("generation: worker queue full; rejecting request {} for {}", request_id, resolved.key);
    finish(resolved.key, core::Error::unavailable("the server is busy: the generation queue is full; retry later", 2));
  }
}

void ImageService::fetch_stored(const std::string& key, Completion done) {
  if (auto image = hot_cache_.find(key)) {
    done(ImageOutcome{std::move(image), CacheState::Hit, {}, 0});
    return;
  }
  const auto queued_at = Clock::now();
  auto shared_done = std::make_shared<Completion>(std::move(done));
  const bool submitted = workers_.try_submit([this, key, queued_at, shared_done] {
    StageTimings timings;
    timings.queue_ms = elapsed_ms(queued_at);
    const auto started = Clock::now();
    auto image = load(key);
    timings.lookup_ms = elapsed_ms(started);
    if (!image) return (*shared_done)(std::move(image).error());
    if (!*image) return (*shared_done)(core::Error::not_found("no image is stored under key " + key));
    (*shared_done)(ImageOutcome{std::move(*image), CacheState::Hit, timings, 0});
  });
  if (!submitted) (*shared_done)(core::Error::unavailable("the server is busy: the worker queue is full; retry later", 2));
}

core::Result<std::shared_ptr<const storage::CachedImage>> ImageService::load(const std::string& key) {
  auto found = store_.find(key);
  if (!found) {
    spdlog::error("storage: reading {} failed: {}", key, found.error().message);
    return std::move(found).error();
  }
  if (!found->has_value()) return std::shared_ptr<const storage::CachedImage>{};
  auto image = make_cached_image(key, std::move((*found)->data), std::move((*found)->metadata_json));
  hot_cache_.insert(image);
  return image;
}

void ImageService::run_flight(const ResolvedRequest& resolved, const std::string& request_id,
                              const core::GenerationCaller& caller, Clock::time_point queued_at) {
  StageTimings timings;
  timings.queue_ms = elapsed_ms(queued_at);

  if (!resolved.spec.random_seed) {
    const auto started = Clock::now();
    auto stored = load(resolved.key);
    timings.lookup_ms = elapsed_ms(started);
    if (stored && *stored) {
      finish(resolved.key, ImageOutcome{std::move(*stored), CacheState::Hit, timings, 0});
      return;
    }
    // load() has logged the failure. Generating anew replaces a damaged
    // object, but a store that cannot be reached may well hold the image, and
    // paying for it again on every request would not fix that.
    if (!stored && is_store_outage(stored.error().code)) {
      finish(resolved.key, core::Error::unavailable("the image store cannot be reached; retry later", 5));
      return;
    }
  }

  try {
    if (options_.lease && !resolved.spec.random_seed) {
      finish(resolved.key, generate_under_lease(resolved, request_id, caller, timings));
    } else {
      finish(resolved.key, generate(resolved, request_id, caller, timings));
    }
  } catch (const std::exception& error) {
    spdlog::error("generation: request {} for {} threw: {}", request_id, resolved.key, error.what());
    finish(resolved.key, core::Error::internal("generation failed unexpectedly"));
  }
}

namespace {

// Renews a lease every third of its lifetime on its own thread until stopped,
// so a long generation keeps it while a crashed replica's lease expires.
class LeaseKeeper {
 public:
  LeaseKeeper(core::GenerationLease& lease, std::string key, core::LeaseHandle handle, std::chrono::milliseconds ttl)
      : lease_(lease), key_(std::move(key)), handle_(std::move(handle)), ttl_(ttl), thread_([this] { run(); }) {}

  ~LeaseKeeper() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
    lease_.release(key_, handle_);
  }

 private:
  void run() {
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, ttl_ / 3, [this] { return stopping_; })) {
      lock.unlock();
      auto renewed = lease_.renew(key_, handle_, ttl_);
      lock.lock();
      if (!renewed) {
        spdlog::warn("generation: renewing the lease on {} (fence {}) failed: {}", key_, handle_.fence,
                     renewed.error().message);
      } else if (!*renewed) {
        // Another replica may generate too now; the store keeps the first image.
        spdlog::warn("generation: the lease on {} (fence {}) was lost", key_, handle_.fence);
        return;
      }
    }
  }

  core::GenerationLease& lease_;
  const std::string key_;
  const core::LeaseHandle handle_;
  const std::chrono::milliseconds ttl_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace

core::Result<ImageOutcome> ImageService::generate_under_lease(const ResolvedRequest& resolved,
                                                              const std::string& request_id,
                                                              const core::GenerationCaller& caller,
                                                              StageTimings timings) {
  const auto deadline = Clock::now() + options_.generation_timeout;
  bool announced_wait = false;
  while (true) {
    auto acquired = options_.lease->try_acquire(resolved.key, options_.lease_ttl);
    if (!acquired) {
      spdlog::error("generation: cannot take the lease on {} for request {}: {}", resolved.key, request_id,
                    acquired.error().message);
      return core::Error::unavailable("new images cannot be generated now: the shared state is unreachable; retry later",
                                      5);
    }
    if (*acquired) {
      const core::LeaseHandle handle = **acquired;
      spdlog::debug("generation: request {} acquired the lease on {} (fence {})", request_id, resolved.key, handle.fence);
      LeaseKeeper keeper(*options_.lease, resolved.key, handle, options_.lease_ttl);
      // Another replica may have stored the image between the first lookup
      // and this lease.
      if (announced_wait) {
        auto stored = load(resolved.key);
        if (stored && *stored) return ImageOutcome{std::move(*stored), CacheState::Coalesced, timings, 0};
      }
      return generate(resolved, request_id, caller, timings);
    }

    if (!announced_wait) {
      spdlog::info("generation: {} for request {} is being generated by another replica; waiting for it",
                   resolved.key, request_id);
      announced_wait = true;
    }
    if (Clock::now() + options_.lease_poll > deadline) {
      return core::Error{core::ErrorCode::DeadlineExceeded,
                         "timed out waiting for another replica to generate the image; retry later", {}, 0};
    }
    std::this_thread::sleep_for(options_.lease_poll);
    const auto started = Clock::now();
    auto stored = load(resolved.key);
    timings.lookup_ms += elapsed_ms(started);
    if (stored && *stored) {
      spdlog::info("generation: {} for request {} was stored by another replica", resolved.key, request_id);
      return ImageOutcome{std::move(*stored), CacheState::Coalesced, timings, 0};
    }
  }
}

std::optional<core::Error> ImageService::find_refusal(const std::string& key) {
  std::lock_guard lock(refusals_mutex_);
  auto it = refusals_.find(key);
  if (it == refusals_.end()) return std::nullopt;
  if (Clock::now() >= it->second.expires) {
    refusals_.erase(it);
    return std::nullopt;
  }
  return it->second.error;
}

void ImageService::remember_refusal(const std::string& key, const core::Error& error) {
  if (options_.refusal_ttl.count() <= 0) return;
  std::lock_guard lock(refusals_mutex_);
  // Bounded: when full, drop expired entries, then the oldest-keyed one.
  if (refusals_.size() >= kMaxRefusals) {
    const auto now = Clock::now();
    for (auto it = refusals_.begin(); it != refusals_.end();) it = it->second.expires <= now ? refusals_.erase(it) : std::next(it);
    if (refusals_.size() >= kMaxRefusals) refusals_.erase(refusals_.begin());
  }
  refusals_[key] = {error, Clock::now() + options_.refusal_ttl};
}

core::Result<ImageOutcome> ImageService::generate(const ResolvedRequest& resolved, const std::string& request_id,
                                                  const core::GenerationCaller& caller, StageTimings timings) {
  // A prompt that a provider refused is not sent again for a while, so a
  // refused URL embedded in a page does not cost a call on every view.
  if (auto refusal = find_refusal(resolved.key)) {
    spdlog::info("generation: {} for request {} was refused recently; returning the error from the refusal cache",
                 resolved.key, request_id);
    return *refusal;
  }

  std::vector<Candidate> candidates;
  candidates.push_back({resolved.spec, resolved.key, resolved.backend, resolved.cold_start_budget});
  candidates.insert(candidates.end(), resolved.fallbacks.begin(), resolved.fallbacks.end());
  const auto deadline = Clock::now() + options_.generation_timeout;

  std::optional<core::Error> last_error;
  // A warming pool's error carries a Retry-After for the client, which is
  // more useful than a fallback's failure.
  std::optional<core::Error> cold_start;
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    const Candidate& candidate = candidates[i];
    const bool fallback = i > 0;
    if (fallback) {
      spdlog::info("generation: {} for request {}: trying fallback backend {} ({})", resolved.key, request_id,
                   candidate.spec.backend, last_error ? last_error->message : "");
      if (!candidate.spec.random_seed) {
        auto stored = load(candidate.key);
        if (stored && *stored) {
          ImageOutcome outcome{std::move(*stored), CacheState::Hit, timings, 0};
          outcome.fallback_backend = candidate.spec.backend;
          return outcome;
        }
      }
    }

    bool rejected_by_guard = false;
    auto outcome = attempt(candidate, request_id, caller, timings, deadline, rejected_by_guard);
    if (outcome) {
      if (fallback) outcome->fallback_backend = candidate.spec.backend;
      return outcome;
    }
    const core::Error& error = outcome.error();
    if (error.code == core::ErrorCode::ContentRefused) remember_refusal(resolved.key, error);
    // Admission errors (budgets, rate limits) and errors about the request
    // itself end the search; only backend failures move on to a fallback.
    if (!is_backend_failure(error.code) || rejected_by_guard) {
      return outcome;
    }
    if (error.code == core::ErrorCode::ColdStart && !cold_start) cold_start = error;
    last_error = error;
  }
  return cold_start ? *cold_start : *last_error;
}

core::Result<ImageOutcome> ImageService::attempt(const Candidate& candidate, const std::string& request_id,
                                                 const core::GenerationCaller& caller, StageTimings timings,
                                                 Clock::time_point deadline, bool& rejected_by_guard) {
  ConcurrencyLimiter* limiter = options_.health ? options_.health->limiter(candidate.spec.backend) : nullptr;
  CircuitBreaker* breaker = options_.health ? options_.health->breaker(candidate.spec.backend) : nullptr;

  if (limiter) {
    if (auto status = limiter->acquire(deadline); !status) return std::move(status).error();
  }
  if (breaker && !breaker->allow()) {
    if (limiter) limiter->release();
    spdlog::info("generation: backend {} skipped for request {}: its circuit is open", candidate.spec.backend,
                 request_id);
    return core::Error::unavailable("backend " + candidate.spec.backend +
                                        " is failing and temporarily not called; retry later",
                                    5);
  }

  std::optional<std::int64_t> permit;
  if (options_.guard) {
    auto acquired = options_.guard->acquire(candidate.spec, candidate.key, caller,
                                            candidate.backend->list_price(candidate.spec));
    if (!acquired) {
      if (limiter) limiter->release();
      if (breaker) breaker->record_success();  // the backend was not tried; release a half-open probe
      rejected_by_guard = true;
      return std::move(acquired).error();
    }
    permit = *acquired;
  }

  // The permit and the slot must be released whatever happens, or the
  // reservation, the concurrency slot and a half-open probe would leak.
  core::Result<ImageOutcome> outcome = core::Error::internal("generation failed unexpectedly");
  try {
    outcome = call_backend(candidate, request_id, timings, deadline);
  } catch (const std::exception& error) {
    spdlog::error("generation: request {} for {} threw: {}", request_id, candidate.key, error.what());
  }
  if (limiter) limiter->release();
  if (breaker) {
    // A pool that is starting an instance is not failing; recording success
    // also releases a half-open probe.
    if (!outcome && is_backend_failure(outcome.error().code) && outcome.error().code != core::ErrorCode::ColdStart) {
      breaker->record_failure();
    } else {
      breaker->record_success();
    }
  }
  if (permit) {
    if (!outcome) {
      options_.guard->release(*permit, false, 0);
    } else {
      outcome->cost_usd = options_.guard->release(*permit, true, outcome->cost_usd);
    }
  }
  return outcome;
}

core::Result<ImageOutcome> ImageService::call_backend(const Candidate& resolved, const std::string& request_id,
                                                      StageTimings timings, Clock::time_point deadline) {
  const auto& spec = resolved.spec;
  spdlog::info("generation: start {} for request {} on backend {} (model {}, {}x{})", resolved.key, request_id,
               spec.backend, spec.model, spec.width, spec.height);

  backends::GenerateContext context{request_id, deadline};
  context.cold_start_budget = resolved.cold_start_budget;
  if (options_.health) {
    context.retry_budget = options_.health->retry_budget(spec.backend);
    if (context.retry_budget) context.retry_budget->record_call();
  }
  auto started = Clock::now();
  auto generated = resolved.backend->generate(spec, context);
  timings.generate_ms = elapsed_ms(started);
  if (!generated) {
    spdlog::warn("generation: {} for request {} failed after {:.0f} ms: {} ({})", resolved.key, request_id,
                 timings.generate_ms, generated.error().message, core::to_string(generated.error().code));
    return std::move(generated).error();
  }

  started = Clock::now();
  auto info = imaging::probe(generated->bytes, options_.probe_limits);
  timings.validate_ms = elapsed_ms(started);
  if (!info) {
    spdlog::warn("generation: {} for request {}: backend {} returned an unusable image: {}", resolved.key, request_id,
                 spec.backend, info.error().message);
    return std::move(info).error();
  }
  if (info->width != spec.width || info->height != spec.height) {
    spdlog::warn("generation: {} for request {}: backend {} returned {}x{} instead of {}x{}", resolved.key, request_id,
                 spec.backend, info->width, info->height, spec.width, spec.height);
    return core::Error::bad_gateway("the backend returned an image of " + std::to_string(info->width) + "x" +
                                    std::to_string(info->height) + " pixels instead of the requested " +
                                    std::to_string(spec.width) + "x" + std::to_string(spec.height));
  }

  const std::string sha = core::sha256_hex(generated->bytes);
  const Json metadata = {{"key", resolved.key},
                         {"sha256", sha},
                         {"content_type", std::string(imaging::mime_type(info->format))},
                         {"bytes", generated->bytes.size()},
                         {"spec", spec_json(spec)},
                         {"cost_usd", generated->cost_usd},
                         {"attempts", generated->attempts},
                         {"provider_request_id", generated->provider_request_id},
                         {"revised_prompt", generated->revised_prompt},
                         {"generate_ms", timings.generate_ms},
                         {"created_at", core::format_iso8601_utc(std::time(nullptr))},
                         {"pixelgate_version", PIXELGATE_VERSION}};
  std::string metadata_text = metadata.dump();

  started = Clock::now();
  if (auto status = store_.put(resolved.key, generated->bytes, metadata_text); !status) {
    // The waiters still get the image they paid for; only the cache misses out.
    spdlog::error("storage: storing {} for request {} failed: {}", resolved.key, request_id, status.error().message);
  }
  timings.store_ms = elapsed_ms(started);

  auto image = make_cached_image(resolved.key, std::move(generated->bytes), std::move(metadata_text));
  if (!spec.random_seed) hot_cache_.insert(image);
  spdlog::info("generation: stored {} for request {} ({} bytes, {:.0f} ms, cost ${:.4f})", resolved.key, request_id,
               image->bytes->size(), timings.generate_ms, generated->cost_usd);
  return ImageOutcome{std::move(image), CacheState::Miss, timings, generated->cost_usd};
}

void ImageService::finish(const std::string& key, const core::Result<ImageOutcome>& result) {
  std::vector<Waiter> waiters;
  {
    std::lock_guard lock(mutex_);
    auto it = flights_.find(key);
    if (it == flights_.end()) return;
    waiters = std::move(it->second.waiters);
    flights_.erase(it);
  }
  idle_.notify_all();

  for (auto& waiter : waiters) {
    if (!result) {
      waiter.done(result.error());
      continue;
    }
    ImageOutcome outcome = result.value();
    if (!waiter.leader) {
      outcome.state = CacheState::Coalesced;
      outcome.cost_usd = 0;
    }
    waiter.done(std::move(outcome));
  }
}

std::size_t ImageService::drain(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mutex_);
  idle_.wait_for(lock, timeout, [this] { return flights_.empty(); });
  return flights_.size();
}

std::size_t ImageService::in_flight() const {
  std::lock_guard lock(mutex_);
  return flights_.size();
}

}  // namespace pixelgate::generation
