#include "admission/rate_limiter.hpp"

#include <algorithm>
#include <cmath>

namespace pixelgate::admission {

InMemoryRateLimiter::InMemoryRateLimiter(const core::Clock& clock, std::size_t max_buckets)
    : clock_(clock), max_buckets_(std::max<std::size_t>(max_buckets, 1)) {}

void InMemoryRateLimiter::refill(Bucket& bucket, const RatePolicy& policy, double now) {
  const double elapsed = std::max(0.0, now - bucket.updated);
  bucket.tokens = std::min(policy.burst, bucket.tokens + elapsed * policy.rate_per_second);
  bucket.updated = now;
}

InMemoryRateLimiter::Bucket& InMemoryRateLimiter::find_or_create(const std::string& key, const RatePolicy& policy,
                                                                 double now) {
  auto it = buckets_.find(key);
  if (it != buckets_.end()) {
    order_.splice(order_.begin(), order_, it->second.order);
    refill(it->second, policy, now);
    return it->second;
  }
  if (buckets_.size() >= max_buckets_) {
    buckets_.erase(order_.back());
    order_.pop_back();
  }
  order_.push_front(key);
  Bucket& bucket = buckets_[key];
  bucket.tokens = policy.burst;
  bucket.updated = now;
  bucket.order = order_.begin();
  return bucket;
}

RateDecision InMemoryRateLimiter::consume(const std::string& key, const RatePolicy& policy) {
  RateDecision decision;
  if (policy.unlimited()) return decision;

  std::lock_guard lock(mutex_);
  const double now = clock_.monotonic_seconds();
  Bucket& bucket = find_or_create(key, policy, now);
  if (bucket.tokens >= 1.0) {
    bucket.tokens -= 1.0;
  } else {
    decision.allowed = false;
    decision.retry_after_seconds =
        std::max(1, static_cast<int>(std::ceil((1.0 - bucket.tokens) / policy.rate_per_second)));
  }
  decision.remaining = static_cast<int>(std::floor(bucket.tokens));
  decision.reset_seconds = static_cast<int>(std::ceil((policy.burst - bucket.tokens) / policy.rate_per_second));
  return decision;
}

void InMemoryRateLimiter::refund(const std::string& key, const RatePolicy& policy) {
  if (policy.unlimited()) return;
  std::lock_guard lock(mutex_);
  auto it = buckets_.find(key);
  if (it == buckets_.end()) return;
  it->second.tokens = std::min(policy.burst, it->second.tokens + 1.0);
}

std::string rate_limit_policy_header(const RatePolicy& policy) {
  const int window = static_cast<int>(std::ceil(policy.burst / policy.rate_per_second));
  return "\"" + policy.name + "\";q=" + std::to_string(static_cast<long long>(policy.burst)) +
         ";w=" + std::to_string(std::max(1, window));
}

std::string rate_limit_header(const RatePolicy& policy, const RateDecision& decision) {
  return "\"" + policy.name + "\";r=" + std::to_string(decision.remaining) +
         ";t=" + std::to_string(std::max(0, decision.reset_seconds));
}

}  // namespace pixelgate::admission
