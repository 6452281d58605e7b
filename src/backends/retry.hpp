// Retry timing shared by the provider adapters.
#pragma once

#include <algorithm>
#include <chrono>
#include <mutex>
#include <optional>
#include <string>

#include "config/config.hpp"

namespace pixelgate::backends {

// Caps retries across all calls to one backend, so a struggling provider is
// not hit with max_retries times the traffic: every call deposits `ratio`
// tokens (up to `max_tokens`), and every retry spends one. With the default
// ratio of 0.2, retries add at most about 20% to the calls, plus a burst of
// `max_tokens`. Thread-safe.
class RetryBudget {
 public:
  explicit RetryBudget(double ratio = 0.2, double max_tokens = 10.0) : ratio_(ratio), max_tokens_(max_tokens), tokens_(max_tokens) {}

  void record_call() {
    std::lock_guard lock(mutex_);
    tokens_ = std::min(max_tokens_, tokens_ + ratio_);
  }

  // Returns true, and spends a token, when a retry is allowed now.
  bool try_spend() {
    std::lock_guard lock(mutex_);
    if (tokens_ < 1.0) return false;
    tokens_ -= 1.0;
    return true;
  }

 private:
  const double ratio_;
  const double max_tokens_;
  std::mutex mutex_;
  double tokens_;
};

// Returns the delay before retry number `attempt` (1 = the first retry):
// the server's Retry-After when it sent one, else exponential backoff with
// full jitter, base * 2^(attempt-1) scaled by a random factor in [0.5, 1],
// capped at `max`.
std::chrono::milliseconds backoff_delay(int attempt, std::chrono::milliseconds base, std::chrono::milliseconds max,
                                        std::optional<std::chrono::milliseconds> retry_after);

struct GenerateContext;

// Waits before retry number `attempt` + 1 of `max_attempts`. Returns false,
// with a log line saying why, when the backend's retry budget is used up or
// the backoff delay would pass the call's deadline. Otherwise it logs the
// retry, sleeps for the delay and returns true.
bool sleep_before_retry(const config::BackendConfig& config, const GenerateContext& context, int attempt,
                        int max_attempts, std::optional<std::chrono::milliseconds> retry_after);

// Parses a Retry-After value in seconds ("3") or OpenAI's retry-after-ms
// ("1500"); HTTP dates are not used by the providers and are ignored.
std::optional<std::chrono::milliseconds> parse_retry_after(const std::optional<std::string>& seconds,
                                                           const std::optional<std::string>& milliseconds);

}  // namespace pixelgate::backends
