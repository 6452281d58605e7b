// Token-bucket rate limiting behind an interface, so a shared (Redis)
// implementation can replace the in-memory one.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>

#include "core/clock.hpp"

namespace pixelgate::admission {

// A bucket holds up to `burst` tokens and refills at `rate_per_second`.
struct RatePolicy {
  std::string name;  // shown in RateLimit-Policy, e.g. "requests"
  double rate_per_second = 0;  // 0 = unlimited
  double burst = 0;

  bool unlimited() const noexcept { return rate_per_second <= 0; }
};

struct RateDecision {
  bool allowed = true;
  int remaining = 0;            // whole tokens left after this request
  int reset_seconds = 0;        // until the bucket is full again
  int retry_after_seconds = 0;  // when rejected: until one token is back
  // Set when a shared limiter could not reach its store; `allowed` is then
  // false, and the caller decides whether to fail open or closed.
  bool unavailable = false;
};

class RateLimiter {
 public:
  virtual ~RateLimiter() = default;
  // Takes one token from the bucket named `bucket` under `policy`.
  virtual RateDecision consume(const std::string& bucket, const RatePolicy& policy) = 0;
  // Puts one token back, for work that turned out not to need it.
  virtual void refund(const std::string& bucket, const RatePolicy& policy) = 0;
};

// Buckets in process memory. At most `max_buckets` are kept; the least
// recently used bucket is dropped first, which forgives that client's debt,
// so the bound stays small only while honest clients dominate.
// Thread-safety: all members may be called concurrently.
class InMemoryRateLimiter final : public RateLimiter {
 public:
  InMemoryRateLimiter(const core::Clock& clock, std::size_t max_buckets = 100'000);

  RateDecision consume(const std::string& bucket, const RatePolicy& policy) override;
  void refund(const std::string& bucket, const RatePolicy& policy) override;

 private:
  struct Bucket {
    double tokens = 0;
    double updated = 0;
    std::list<std::string>::iterator order;
  };
  Bucket& find_or_create(const std::string& key, const RatePolicy& policy, double now);
  static void refill(Bucket& bucket, const RatePolicy& policy, double now);

  const core::Clock& clock_;
  const std::size_t max_buckets_;
  std::mutex mutex_;
  std::unordered_map<std::string, Bucket> buckets_;
  std::list<std::string> order_;  // most recently used first
};

// Formats the RateLimit-Policy and RateLimit header values of the IETF
// httpapi draft (draft-ietf-httpapi-ratelimit-headers-10):
//   RateLimit-Policy: "requests";q=40;w=2
//   RateLimit: "requests";r=39;t=1
std::string rate_limit_policy_header(const RatePolicy& policy);
std::string rate_limit_header(const RatePolicy& policy, const RateDecision& decision);

}  // namespace pixelgate::admission
