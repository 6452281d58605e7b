#include "jobs/job_runner.hpp"

#include <algorithm>
#include <atomic>
#include <memory>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

namespace pixelgate::jobs {
namespace {

using Clock = std::chrono::steady_clock;

constexpr auto kExpiryInterval = std::chrono::minutes(10);
// The timer thread looks for queued jobs this often, which starts deferred
// jobs once they are due.
constexpr auto kDispatchInterval = std::chrono::seconds(1);
constexpr int kMaxDeferralSeconds = 300;

// Collects the images of one job and reports once all are in.
struct JobBatch {
  explicit JobBatch(std::size_t n) : images(n), remaining(static_cast<int>(n)) {}
  std::mutex mutex;
  std::vector<JobImage> images;
  std::optional<core::Error> error;
  std::atomic<int> remaining;
};

}  // namespace

std::string error_json(const core::Error& error) {
  const nlohmann::json body = {{"code", std::string(core::to_string(error.code))},
                               {"message", error.message},
                               {"param", error.param.empty() ? nlohmann::json(nullptr) : nlohmann::json(error.param)}};
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

JobRunner::JobRunner(const config::JobsConfig& config, JobStore& store, generation::ImageService& images,
                     WebhookSender* webhooks, JobResolver resolver)
    : config_(config), store_(store), images_(images), webhooks_(webhooks), resolver_(std::move(resolver)) {}

JobRunner::~JobRunner() { stop(); }

core::Status JobRunner::start() {
  auto requeued = store_.requeue_interrupted(kMaxJobAttempts);
  if (!requeued) return std::move(requeued).error();
  if (*requeued > 0) spdlog::info("jobs: {} jobs interrupted by the last stop were queued again", *requeued);
  auto queued = store_.count(JobStatus::Queued);
  if (queued && *queued > 0) spdlog::info("jobs: {} queued jobs found at start-up", *queued);

  timer_thread_ = std::thread([this] { run_timers(); });
  dispatch();
  return core::Ok{};
}

core::Result<CreatedJob> JobRunner::submit(const NewJob& job) {
  auto created = store_.create(job, config_.max_queued);
  if (!created) return created;
  if (created->replayed) {
    spdlog::info("jobs: idempotency key of {} matched job {}; returning it", job.principal, created->job.id);
    return created;
  }
  spdlog::info("jobs: queued job {} for {}", created->job.id, job.principal);
  dispatch();
  return created;
}

core::Result<Job> JobRunner::attach(NewJob job) {
  job.initial_status = JobStatus::Running;
  auto created = store_.create(job, config_.max_queued);
  if (!created) return std::move(created).error();
  spdlog::info("jobs: job {} for {} follows a generation already in flight", created->job.id, job.principal);
  return std::move(created->job);
}

void JobRunner::complete(const std::string& job_id, const core::Result<std::vector<JobImage>>& outcome) {
  core::Result<std::optional<Job>> finished = outcome ? store_.finish(job_id, *outcome)
                                                      : store_.fail(job_id, error_json(outcome.error()));
  if (!finished) {
    spdlog::error("jobs: recording the outcome of job {} failed: {}", job_id, finished.error().message);
    return;
  }
  if (!*finished) return;  // already finished, or expired
  const Job& job = **finished;
  if (outcome) {
    spdlog::info("jobs: job {} succeeded with {} images", job.id, job.images.size());
  } else {
    spdlog::warn("jobs: job {} failed: {} ({})", job.id, outcome.error().message, core::to_string(outcome.error().code));
  }
  if (job.webhook_state == WebhookState::Pending && webhooks_) webhooks_->enqueue(job);
}

void JobRunner::dispatch() {
  // One thread at a time starts jobs. A call that arrives meanwhile, also
  // one from a job that finished at once inside start_job(), only sets
  // dispatch_again_ so that thread looks again, and starting never recurses.
  {
    std::lock_guard lock(mutex_);
    if (dispatching_) {
      dispatch_again_ = true;
      return;
    }
    dispatching_ = true;
    dispatch_again_ = false;
  }
  while (true) {
    bool slot = false;
    {
      std::lock_guard lock(mutex_);
      if (!stopping_ && running_ < config_.max_running) {
        ++running_;
        slot = true;
      }
    }
    if (slot) {
      auto next = store_.claim_next();
      if (next && *next) {
        start_job(**next);
        continue;
      }
      if (!next) spdlog::error("jobs: taking the next queued job failed: {}", next.error().message);
      std::lock_guard lock(mutex_);
      --running_;
    }

    // Nothing more can start now, unless something changed meanwhile.
    std::lock_guard lock(mutex_);
    if (dispatch_again_ && !stopping_) {
      dispatch_again_ = false;
      continue;
    }
    dispatching_ = false;
    return;
  }
}

void JobRunner::start_job(const Job& job) {
  spdlog::info("jobs: starting job {} for {} (attempt {})", job.id, job.principal, job.attempts);
  core::Result<std::vector<generation::ResolvedRequest>> resolved = core::Error::internal("no resolver");
  try {
    resolved = resolver_(job);
  } catch (const std::exception& error) {
    spdlog::error("jobs: resolving job {} threw: {}", job.id, error.what());
    resolved = core::Error::internal("the job request could not be read");
  }
  if (!resolved || resolved->empty()) {
    const core::Error error = resolved ? core::Error::internal("the job request names no image") : resolved.error();
    spdlog::warn("jobs: job {} no longer resolves: {}", job.id, error.message);
    return finish_running(job.id, error, job.deferrals);
  }

  const core::GenerationCaller caller{job.principal, job.client_address};
  auto batch = std::make_shared<JobBatch>(resolved->size());
  for (std::size_t i = 0; i < resolved->size(); ++i) {
    images_.fetch_or_generate((*resolved)[i], job.id, caller,
                              [this, batch, i, job_id = job.id,
                               deferrals = job.deferrals](core::Result<generation::ImageOutcome> outcome) {
                                {
                                  std::lock_guard lock(batch->mutex);
                                  if (!outcome) {
                                    if (!batch->error) batch->error = outcome.error();
                                  } else {
                                    batch->images[i] = {outcome->image->key, outcome->image->content_type};
                                  }
                                }
                                if (batch->remaining.fetch_sub(1) != 1) return;
                                if (batch->error) return finish_running(job_id, *batch->error, deferrals);
                                finish_running(job_id, batch->images, deferrals);
                              });
  }
}

void JobRunner::finish_running(const std::string& job_id, const core::Result<std::vector<JobImage>>& outcome,
                               int deferrals) {
  // A rate limit or a passing outage (a provider's 429, an open circuit, a
  // cold pool, Redis away) ends with time, so the job waits in the queue
  // instead of failing. Images it already produced are cache hits on the
  // next run. Spend budgets and invalid requests still fail the job.
  const bool transient = !outcome && (outcome.error().code == core::ErrorCode::ResourceExhausted ||
                                      outcome.error().code == core::ErrorCode::Unavailable ||
                                      outcome.error().code == core::ErrorCode::ColdStart);
  bool deferred = false;
  if (transient && deferrals < kMaxJobDeferrals) {
    const int seconds = std::clamp(outcome.error().retry_after_seconds, 1, kMaxDeferralSeconds);
    auto moved = store_.defer(job_id, seconds);
    if (!moved) {
      spdlog::error("jobs: deferring job {} failed: {}", job_id, moved.error().message);
    } else if (*moved) {
      deferred = true;
      spdlog::info("jobs: job {} hit a passing limit or outage ({}); starting it again in {} s (deferral {} of {})",
                   job_id,
                   outcome.error().message, seconds, deferrals + 1, kMaxJobDeferrals);
    }
  }
  if (!deferred) complete(job_id, outcome);
  {
    std::lock_guard lock(mutex_);
    --running_;
  }
  dispatch();
}

bool JobRunner::schedule(Clock::time_point due, std::function<void()> task) {
  {
    std::lock_guard lock(timer_mutex_);
    if (timers_stopping_ || timers_.size() >= kMaxTimers) return false;
    timers_.emplace(due, std::move(task));
  }
  timer_wake_.notify_one();
  return true;
}

void JobRunner::run_timers() {
  auto next_expiry = Clock::now();
  auto next_dispatch = Clock::now() + kDispatchInterval;
  std::unique_lock lock(timer_mutex_);
  while (!timers_stopping_) {
    const auto now = Clock::now();
    if (now >= next_expiry) {
      lock.unlock();
      expire_old_jobs();
      lock.lock();
      next_expiry = now + kExpiryInterval;
      continue;
    }
    if (now >= next_dispatch) {
      lock.unlock();
      dispatch();
      lock.lock();
      next_dispatch = now + kDispatchInterval;
      continue;
    }
    if (timers_.empty() || timers_.begin()->first > now) {
      auto wake_at = std::min(next_expiry, next_dispatch);
      if (!timers_.empty()) wake_at = std::min(wake_at, timers_.begin()->first);
      timer_wake_.wait_until(lock, wake_at);
      continue;
    }
    auto task = std::move(timers_.begin()->second);
    timers_.erase(timers_.begin());
    lock.unlock();
    try {
      task();
    } catch (const std::exception& error) {
      spdlog::error("jobs: a timer task threw: {}", error.what());
    }
    lock.lock();
  }
}

void JobRunner::expire_old_jobs() {
  const std::int64_t cutoff = std::chrono::duration_cast<std::chrono::seconds>(
                                  std::chrono::system_clock::now().time_since_epoch())
                                  .count() -
                              static_cast<std::int64_t>(config_.retention_hours) * 3600;
  auto removed = store_.expire(cutoff);
  if (!removed) {
    spdlog::error("jobs: deleting expired jobs failed: {}", removed.error().message);
  } else if (*removed > 0) {
    spdlog::info("jobs: deleted {} jobs finished more than {} hours ago", *removed, config_.retention_hours);
  }
}

void JobRunner::stop_dispatch() {
  std::lock_guard lock(mutex_);
  stopping_ = true;
}

void JobRunner::stop() {
  stop_dispatch();
  {
    std::lock_guard lock(timer_mutex_);
    timers_stopping_ = true;
    timers_.clear();
  }
  timer_wake_.notify_all();
  if (timer_thread_.joinable()) timer_thread_.join();
}

}  // namespace pixelgate::jobs
