// Per-backend resilience: a circuit breaker that stops calling a backend
// after consecutive failures, and a concurrency limit with a bounded queue.
#pragma once

#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "backends/retry.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"

namespace pixelgate::generation {

// Closed: calls pass. Open: calls are rejected until open_ms has passed.
// Half-open: one probe call passes; its success closes the circuit and its
// failure opens it again. Thread-safe.
class CircuitBreaker {
 public:
  enum class State { Closed, Open, HalfOpen };

  CircuitBreaker(std::string backend, int failure_threshold, int open_ms, const core::Clock& clock);

  // Returns true when a call may go ahead now. In the half-open state only
  // the first caller gets true, as the probe.
  bool allow();
  void record_success();
  void record_failure();
  State state() const;

 private:
  const std::string backend_;
  const int failure_threshold_;
  const double open_seconds_;
  const core::Clock& clock_;
  mutable std::mutex mutex_;
  State state_ = State::Closed;
  int consecutive_failures_ = 0;
  double opened_at_ = 0;
  bool probe_in_flight_ = false;
};

// At most `max_concurrency` calls at once (0 = no limit); at most
// `queue_size` callers wait for a slot. Waiting blocks the calling worker
// thread until a slot frees up or the deadline passes. Thread-safe.
class ConcurrencyLimiter {
 public:
  ConcurrencyLimiter(std::string backend, int max_concurrency, int queue_size);

  // Takes a slot. Errors: Unavailable when the queue is full,
  // DeadlineExceeded when the deadline passes while waiting.
  core::Status acquire(std::chrono::steady_clock::time_point deadline);
  void release();

 private:
  const std::string backend_;
  const int max_concurrency_;
  const int queue_size_;
  std::mutex mutex_;
  std::condition_variable freed_;
  int in_flight_ = 0;
  int waiting_ = 0;
};

// The breaker and limiter of every configured backend, by name.
class BackendHealth {
 public:
  BackendHealth(const config::Config& config, const core::Clock& clock);

  CircuitBreaker* breaker(const std::string& backend);
  ConcurrencyLimiter* limiter(const std::string& backend);
  backends::RetryBudget* retry_budget(const std::string& backend);

 private:
  std::map<std::string, std::unique_ptr<CircuitBreaker>> breakers_;
  std::map<std::string, std::unique_ptr<ConcurrencyLimiter>> limiters_;
  std::map<std::string, std::unique_ptr<backends::RetryBudget>> retry_budgets_;
};

// Returns true for errors that show the backend, not the request, is the problem, so
// another backend may succeed: Unavailable, ColdStart, ResourceExhausted,
// DeadlineExceeded and BadGateway.
bool is_backend_failure(core::ErrorCode code) noexcept;

}  // namespace pixelgate::generation
