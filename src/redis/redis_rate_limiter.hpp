// Token buckets kept in Redis, so every replica draws from the same bucket.
#pragma once

#include <string>

#include "admission/rate_limiter.hpp"
#include "redis/log_throttle.hpp"
#include "redis/redis_client.hpp"

namespace pixelgate::redis {

// Each bucket is a hash at "<key_prefix>rl:<bucket>" updated by one Lua
// script, with the time taken from the Redis server (TIME), so replicas with
// skewed clocks agree. A bucket expires once it would be full again, because
// a missing bucket counts as full. Decisions match InMemoryRateLimiter's.
// When Redis cannot be reached, consume() returns allowed = false and
// unavailable = true, and the caller decides whether to fail open.
// Thread-safety: all members may be called concurrently. The client must
// outlive the limiter.
class RedisRateLimiter final : public admission::RateLimiter {
 public:
  explicit RedisRateLimiter(RedisClient& client);

  admission::RateDecision consume(const std::string& bucket, const admission::RatePolicy& policy) override;
  void refund(const std::string& bucket, const admission::RatePolicy& policy) override;

 private:
  core::Result<Reply> run(const std::string& bucket, const admission::RatePolicy& policy, bool take);

  RedisClient& client_;
  LogThrottle error_log_{std::chrono::seconds(10)};
};

}  // namespace pixelgate::redis
