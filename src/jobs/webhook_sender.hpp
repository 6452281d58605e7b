// Job-completion webhooks, signed as the Standard Webhooks specification
// describes: headers webhook-id, webhook-timestamp and webhook-signature
// ("v1," + base64 HMAC-SHA256 of "id.timestamp.body" under the secret's
// decoded bytes).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "config/config.hpp"
#include "core/error.hpp"
#include "jobs/job_store.hpp"

namespace pixelgate::jobs {

// Returns the HMAC key of a "whsec_<base64>" secret, or nullopt when the
// text is not one.
std::optional<std::string> decode_webhook_secret(std::string_view secret);

// Returns the webhook-signature header value for one attempt.
std::string sign_webhook(std::string_view key, std::string_view webhook_id, std::int64_t timestamp,
                         std::string_view body);

// Returns the event a finished job sends: {"type": "image.succeeded" or
// "image.failed", "timestamp", "data": {"id", "status", "images" or "error"}}.
// The body depends only on the stored job, so every retry sends the same bytes.
std::string webhook_event_body(const Job& job);

// Returns the webhook-id of a job's event; the same for every attempt.
std::string webhook_id_for(const Job& job);

// Returns the permanent URL of a stored image under `base_url`.
std::string stored_image_url(const std::string& base_url, const JobImage& image);

// Thread-safety: all public members may be called from any thread.
//
// An event is retried with exponential backoff after transport errors and
// 5xx, 408 and 429 responses, up to webhooks.max_attempts tries. Events not
// yet delivered when the process stops stay pending in the job store and
// are sent again by start() in the next process, so a receiver may get an
// event twice and should deduplicate by webhook-id.
class WebhookSender {
 public:
  WebhookSender(const config::WebhooksConfig& config, JobStore& store);
  ~WebhookSender();
  WebhookSender(const WebhookSender&) = delete;
  WebhookSender& operator=(const WebhookSender&) = delete;

  // Starts the sending threads and enqueues the store's pending webhooks.
  void start();

  // Queues the event of a finished job whose webhook is pending. Returns
  // false, and marks the webhook failed, when the queue is full.
  bool enqueue(const Job& job);

  // Stops the threads after the attempts in progress, each bounded by
  // webhooks.timeout_ms for the DNS lookup and again for the transfer.
  void stop();

  std::size_t queued() const;

 private:
  struct Delivery {
    std::string job_id;
    std::string url;
    std::string webhook_id;
    std::string body;
    int attempts = 0;  // made so far
    std::chrono::steady_clock::time_point due;
  };
  // The outcome of one delivery attempt.
  enum class Verdict { Delivered, Retry, GiveUp };
  struct Attempt {
    Verdict verdict = Verdict::GiveUp;
    std::string detail;                      // for the log
    std::optional<std::chrono::seconds> retry_after;  // from a Retry-After header
  };

  void run();
  Attempt send(const Delivery& delivery);
  void record(const Delivery& delivery, WebhookState state);

  const config::WebhooksConfig& config_;
  JobStore& store_;
  std::string key_;  // decoded secret; empty when no secret is configured

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Delivery> queue_;
  std::vector<std::thread> threads_;
  bool stopping_ = false;
};

}  // namespace pixelgate::jobs
