// Asynchronous image jobs, persisted in SQLite (WAL) so that queued and
// running jobs survive a restart and finished ones can be read until they
// expire.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"

struct sqlite3;

namespace pixelgate::jobs {

enum class JobStatus { Queued, Running, Succeeded, Failed };
std::string_view to_string(JobStatus status) noexcept;

// Delivery state of a job's completion webhook.
enum class WebhookState { None, Pending, Delivered, Failed };
std::string_view to_string(WebhookState state) noexcept;

// One image a finished job produced.
struct JobImage {
  std::string key;
  std::string content_type;
};

struct Job {
  std::string id;
  std::int64_t sequence = 0;  // creation order; the queue runs in this order
  std::string principal;      // who created the job; only they may read it
  std::string client_address;
  std::string idempotency_key;  // empty when the request sent none
  std::string request_hash;     // SHA-256 hex of the request and the webhook URL
  std::string request_json;     // what the job runner resolves, see JobRunner
  JobStatus status = JobStatus::Queued;
  std::vector<JobImage> images;  // set when succeeded
  std::string error_json;        // {"code", "message", "param"} when failed
  std::string webhook_url;       // empty = no webhook
  std::string base_url;          // origin of the image URLs sent in the webhook, e.g. "http://127.0.0.1:8080"
  WebhookState webhook_state = WebhookState::None;
  int webhook_attempts = 0;
  std::int64_t created_unix = 0;
  std::int64_t updated_unix = 0;
  int attempts = 0;  // how many times the job was started, deferrals not counted
  std::int64_t not_before_unix = 0;  // a deferred job starts no earlier than this
  int deferrals = 0;                 // how often a rate limit sent the job back to the queue
};

struct NewJob {
  std::string principal;
  std::string client_address;
  std::string idempotency_key;
  std::string request_json;
  std::string webhook_url;
  std::string base_url;
  // Running: the job is attached to a generation already in flight
  // (`Prefer: wait`), so it takes no place in the queue.
  JobStatus initial_status = JobStatus::Queued;
};

struct CreatedJob {
  Job job;
  // True when the idempotency key matched an earlier job with the same
  // request, which is returned instead of a new one.
  bool replayed = false;
};

// Returns a new job id: "job_" and 22 base64url characters of 16 random bytes.
std::string new_job_id();

// Thread-safety: every member may be called concurrently; one mutex orders
// all statements.
class JobStore {
 public:
  // Opens or creates the database at `path` (":memory:" for tests).
  static core::Result<std::unique_ptr<JobStore>> open(const std::string& path, const core::Clock& clock);
  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Inserts a job. With an idempotency key that this principal used before,
  // returns that job (replayed) when the request hash matches, and fails with
  // IdempotencyKeyReused when it does not. Fails with Unavailable when
  // `max_queued` jobs are already queued and the new job would queue too.
  core::Result<CreatedJob> create(const NewJob& job, int max_queued);

  core::Result<std::optional<Job>> find(const std::string& id);

  // Returns the 1-based place of a queued job in the queue.
  core::Result<std::int64_t> queue_position(const Job& job);

  // Moves the oldest queued job whose not_before_unix has passed to running,
  // counts the attempt and returns it; nullopt when none is ready.
  core::Result<std::optional<Job>> claim_next();

  // Records the outcome of a queued or running job and marks its webhook
  // pending when it has one. Returns the updated job, or nullopt when the
  // job is missing or already finished.
  core::Result<std::optional<Job>> finish(const std::string& id, const std::vector<JobImage>& images);
  core::Result<std::optional<Job>> fail(const std::string& id, const std::string& error_json);

  // Puts a running job back in the queue, not to start for `delay_seconds`,
  // without counting the attempt. Returns false when the job is not running.
  core::Result<bool> defer(const std::string& id, int delay_seconds);

  // After a restart: puts running jobs back in the queue, ahead of the jobs
  // queued after them, and fails those already started `max_attempts` times.
  // Returns how many were queued again.
  core::Result<int> requeue_interrupted(int max_attempts);

  // Finished jobs whose webhook is still to be sent, oldest first.
  core::Result<std::vector<Job>> pending_webhooks(int limit);
  core::Status set_webhook_state(const std::string& id, WebhookState state, int attempts);

  // Deletes finished jobs last updated before `before_unix`, except those
  // whose webhook is still pending. Returns how many were deleted.
  core::Result<int> expire(std::int64_t before_unix);

  core::Result<std::int64_t> count(JobStatus status);

 private:
  JobStore(sqlite3* db, const core::Clock& clock);
  core::Result<std::optional<Job>> find_locked(const std::string& sql, const std::vector<std::string>& arguments);
  core::Result<std::optional<Job>> complete(const std::string& id, JobStatus status, const std::string& images_json,
                                            const std::string& error_json);

  sqlite3* db_;
  const core::Clock& clock_;
  std::mutex mutex_;
};

}  // namespace pixelgate::jobs
