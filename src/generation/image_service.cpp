#include "generation/image_service.hpp"

#include <ctime>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/hash.hpp"

namespace pixelgate::generation {
namespace {

using Clock = std::chrono::steady_clock;
using Json = nlohmann::json;

double elapsed_ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

std::string utc_timestamp() {
  const std::time_t now = std::time(nullptr);
  std::tm parts{};
  gmtime_r(&now, &parts);
  char text[32];
  std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%SZ", &parts);
  return text;
}

std::string digest_header(const std::string& sha256_hex) {
  // Repr-Digest (RFC 9530) carries the digest as base64 of the raw bytes.
  std::string raw;
  for (std::size_t i = 0; i + 1 < sha256_hex.size(); i += 2) {
    raw.push_back(static_cast<char>(std::stoi(sha256_hex.substr(i, 2), nullptr, 16)));
  }
  return "sha-256=:" + core::base64_encode(raw) + ":";
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
  image->bytes = std::make_shared<const std::string>(std::move(bytes));
  image->metadata_json = std::move(metadata_json);
  return image;
}

ImageService::ImageService(storage::ObjectStore& store, storage::HotCache& hot_cache, core::WorkerPool& workers,
                           ImageServiceOptions options)
    : store_(store), hot_cache_(hot_cache), workers_(workers), options_(options) {}

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
    // A store that cannot be read is logged by load(); generating anew
    // replaces a damaged object.
  }

  try {
    finish(resolved.key, generate(resolved, request_id, caller, timings));
  } catch (const std::exception& error) {
    spdlog::error("generation: request {} for {} threw: {}", request_id, resolved.key, error.what());
    finish(resolved.key, core::Error::internal("generation failed unexpectedly"));
  }
}

core::Result<ImageOutcome> ImageService::generate(const ResolvedRequest& resolved, const std::string& request_id,
                                                  const core::GenerationCaller& caller, StageTimings timings) {
  core::GenerationGuard* guard = options_.guard;
  if (!guard) return call_backend(resolved, request_id, timings);

  auto permit = guard->acquire(resolved.spec, resolved.key, caller, resolved.backend->list_price(resolved.spec));
  if (!permit) return std::move(permit).error();
  // The permit must be released whatever happens, or its reservation and
  // concurrency slot would leak.
  core::Result<ImageOutcome> outcome = core::Error::internal("generation failed unexpectedly");
  try {
    outcome = call_backend(resolved, request_id, timings);
  } catch (const std::exception& error) {
    spdlog::error("generation: request {} for {} threw: {}", request_id, resolved.key, error.what());
  }
  if (!outcome) {
    guard->release(*permit, false, 0);
    return outcome;
  }
  outcome->cost_usd = guard->release(*permit, true, outcome->cost_usd);
  return outcome;
}

core::Result<ImageOutcome> ImageService::call_backend(const ResolvedRequest& resolved, const std::string& request_id,
                                                      StageTimings timings) {
  const auto& spec = resolved.spec;
  spdlog::info("generation: start {} for request {} on backend {} (model {}, {}x{})", resolved.key, request_id,
               spec.backend, spec.model, spec.width, spec.height);

  backends::GenerateContext context{request_id, Clock::now() + options_.generation_timeout};
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
                         {"created_at", utc_timestamp()},
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
