// Spend totals in Redis, shared by every replica, so a daily or monthly
// budget holds for all of them together.
#pragma once

#include <string>
#include <vector>

#include "admission/spend_counters.hpp"
#include "core/clock.hpp"
#include "redis/log_throttle.hpp"
#include "redis/redis_client.hpp"

namespace pixelgate::redis {

// Each total is a float string at "<key_prefix>spend:<principal>:<period>"
// (principal "*" = everyone, period "YYYY-MM-DD" or "YYYY-MM"), checked and
// raised by one Lua script with INCRBYFLOAT, so concurrent reservations from
// any number of replicas never pass a limit together. Day totals expire after
// 3 days and month totals after 40, counted from their last change.
// Thread-safety: all members may be called concurrently. The client and the
// clock must outlive the counters.
class RedisSpendCounters final : public admission::SpendCounters {
 public:
  // `clock` gives the time for Retry-After on a rejection.
  RedisSpendCounters(RedisClient& client, const core::Clock& clock);

  core::Status reserve(const std::string& principal, const std::string& day, const std::string& month,
                       double amount_usd, const admission::SpendLimits& principal_limits,
                       const admission::SpendLimits& global_limits) override;
  void adjust(const std::string& principal, const std::string& day, const std::string& month,
              double delta_usd) noexcept override;
  core::Result<double> spent(const std::string& principal, const std::string& period) override;

 private:
  // Returns the global day and month keys, then the principal's, in the order
  // the limits are checked.
  std::vector<std::string> total_keys(const std::string& principal, const std::string& day,
                                      const std::string& month) const;

  RedisClient& client_;
  const core::Clock& clock_;
  LogThrottle error_log_{std::chrono::seconds(10)};
};

}  // namespace pixelgate::redis
