// Runs queued jobs through the same pipeline as synchronous requests:
// ImageService::fetch_or_generate, whose admission guard applies the job
// principal's generation rate limit, concurrency caps and budgets.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "core/error.hpp"
#include "generation/image_service.hpp"
#include "generation/resolver.hpp"
#include "jobs/job_store.hpp"
#include "jobs/webhook_sender.hpp"

namespace pixelgate::jobs {

// Turns a stored job request back into the images to produce. It runs when
// the job starts, also after a restart, so it fails cleanly when the
// configuration no longer resolves the request (e.g. a removed template).
using JobResolver = std::function<core::Result<std::vector<generation::ResolvedRequest>>(const Job& job)>;

// Returns {"code", "message", "param"} for a job's error field.
std::string error_json(const core::Error& error);

// A job that was started this many times and interrupted by restarts each
// time is failed instead of started again, so a request that crashes the
// process cannot do so forever.
inline constexpr int kMaxJobAttempts = 3;

// How many times a job goes back to the queue after a rate limit or a
// passing outage. After that it fails with the error it last got.
inline constexpr int kMaxJobDeferrals = 20;

// Thread-safety: all public members may be called from any thread.
// Lifetime: the store, image service, sender and resolver must outlive the
// runner; call stop_dispatch() and drain the image service before
// destroying them.
class JobRunner {
 public:
  JobRunner(const config::JobsConfig& config, JobStore& store, generation::ImageService& images,
            WebhookSender* webhooks, JobResolver resolver);
  ~JobRunner();
  JobRunner(const JobRunner&) = delete;
  JobRunner& operator=(const JobRunner&) = delete;

  // Requeues jobs that a previous process left running, starts the timer
  // thread and the queued jobs.
  core::Status start();

  // Stores a queued job (or returns the earlier job for a replayed
  // idempotency key) and starts it when a slot is free.
  core::Result<CreatedJob> submit(const NewJob& job);

  // Stores a running job for a generation that is already in flight; the
  // caller reports its outcome with complete().
  core::Result<Job> attach(NewJob job);

  // Records the outcome of a running job and queues its webhook.
  void complete(const std::string& job_id, const core::Result<std::vector<JobImage>>& outcome);

  // Runs `task` on the timer thread at `due`. Returns false when stopped or
  // when too many tasks are waiting.
  bool schedule(std::chrono::steady_clock::time_point due, std::function<void()> task);

  // Stops starting queued jobs; those already running finish normally.
  void stop_dispatch();

  // Calls stop_dispatch() and stops the timer thread. Tasks not yet due are dropped.
  void stop();

  JobStore& store() { return store_; }
  const config::JobsConfig& config() const { return config_; }

 private:
  void dispatch();
  void start_job(const Job& job);
  void finish_running(const std::string& job_id, const core::Result<std::vector<JobImage>>& outcome, int deferrals);
  void run_timers();
  void expire_old_jobs();

  const config::JobsConfig& config_;
  JobStore& store_;
  generation::ImageService& images_;
  WebhookSender* webhooks_;
  JobResolver resolver_;

  std::mutex mutex_;
  int running_ = 0;
  bool stopping_ = false;
  bool dispatching_ = false;
  bool dispatch_again_ = false;

  static constexpr std::size_t kMaxTimers = 100'000;
  std::mutex timer_mutex_;
  std::condition_variable timer_wake_;
  std::multimap<std::chrono::steady_clock::time_point, std::function<void()>> timers_;
  bool timers_stopping_ = false;
  std::thread timer_thread_;
};

}  // namespace pixelgate::jobs
