#include "generation/backend_health.hpp"

#include <spdlog/spdlog.h>

namespace pixelgate::generation {

bool is_backend_failure(core::ErrorCode code) noexcept {
  return code == core::ErrorCode::Unavailable || code == core::ErrorCode::ColdStart ||
         code == core::ErrorCode::ResourceExhausted ||
         code == core::ErrorCode::DeadlineExceeded || code == core::ErrorCode::BadGateway;
}

CircuitBreaker::CircuitBreaker(std::string backend, int failure_threshold, int open_ms, const core::Clock& clock)
    : backend_(std::move(backend)),
      failure_threshold_(failure_threshold),
      open_seconds_(open_ms / 1000.0),
      clock_(clock) {}

bool CircuitBreaker::allow() {
  std::lock_guard lock(mutex_);
  if (state_ == State::Closed) return true;
  if (state_ == State::Open) {
    if (clock_.monotonic_seconds() - opened_at_ < open_seconds_) return false;
    state_ = State::HalfOpen;
    probe_in_flight_ = false;
    spdlog::info("backend {}: circuit half-open; letting one probe call through", backend_);
  }
  if (probe_in_flight_) return false;
  probe_in_flight_ = true;
  return true;
}

void CircuitBreaker::record_success() {
  std::lock_guard lock(mutex_);
  if (state_ != State::Closed) spdlog::info("backend {}: circuit closed after a successful call", backend_);
  state_ = State::Closed;
  consecutive_failures_ = 0;
  probe_in_flight_ = false;
}

void CircuitBreaker::record_failure() {
  std::lock_guard lock(mutex_);
  ++consecutive_failures_;
  const bool reopen = state_ == State::HalfOpen;
  if (reopen || (state_ == State::Closed && consecutive_failures_ >= failure_threshold_)) {
    state_ = State::Open;
    opened_at_ = clock_.monotonic_seconds();
    probe_in_flight_ = false;
    spdlog::warn("backend {}: circuit open after {} consecutive failures; no calls for {:.1f} s", backend_,
                 consecutive_failures_, open_seconds_);
  }
}

CircuitBreaker::State CircuitBreaker::state() const {
  std::lock_guard lock(mutex_);
  return state_;
}

ConcurrencyLimiter::ConcurrencyLimiter(std::string backend, int max_concurrency, int queue_size)
    : backend_(std::move(backend)), max_concurrency_(max_concurrency), queue_size_(queue_size) {}

core::Status ConcurrencyLimiter::acquire(std::chrono::steady_clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  if (max_concurrency_ <= 0) return core::Ok{};
  if (in_flight_ < max_concurrency_) {
    ++in_flight_;
    return core::Ok{};
  }
  if (waiting_ >= queue_size_) {
    spdlog::warn("backend {}: {} calls in flight and {} waiting; rejecting", backend_, in_flight_, waiting_);
    return core::Error::unavailable("backend " + backend_ + " is busy and its queue is full; retry shortly", 2);
  }
  ++waiting_;
  const bool got_slot = freed_.wait_until(lock, deadline, [this] { return in_flight_ < max_concurrency_; });
  --waiting_;
  if (!got_slot) {
    return core::Error{core::ErrorCode::DeadlineExceeded,
                       "timed out waiting for a free slot on backend " + backend_, {}, 0};
  }
  ++in_flight_;
  return core::Ok{};
}

void ConcurrencyLimiter::release() {
  {
    std::lock_guard lock(mutex_);
    if (max_concurrency_ <= 0) return;
    --in_flight_;
  }
  freed_.notify_one();
}

BackendHealth::BackendHealth(const config::Config& config, const core::Clock& clock) {
  for (const auto& [name, backend] : config.backends) {
    breakers_[name] = std::make_unique<CircuitBreaker>(name, backend.failure_threshold, backend.open_ms, clock);
    limiters_[name] = std::make_unique<ConcurrencyLimiter>(name, backend.max_concurrency, backend.queue_size);
    retry_budgets_[name] = std::make_unique<backends::RetryBudget>();
  }
}

backends::RetryBudget* BackendHealth::retry_budget(const std::string& backend) {
  auto it = retry_budgets_.find(backend);
  return it == retry_budgets_.end() ? nullptr : it->second.get();
}

CircuitBreaker* BackendHealth::breaker(const std::string& backend) {
  auto it = breakers_.find(backend);
  return it == breakers_.end() ? nullptr : it->second.get();
}

ConcurrencyLimiter* BackendHealth::limiter(const std::string& backend) {
  auto it = limiters_.find(backend);
  return it == limiters_.end() ? nullptr : it->second.get();
}

}  // namespace pixelgate::generation
