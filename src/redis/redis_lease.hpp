// Generation leases in Redis: one replica of several generates an image
// while the others wait for it to appear in the shared store.
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "core/generation_lease.hpp"
#include "redis/log_throttle.hpp"
#include "redis/redis_client.hpp"

namespace pixelgate::redis {

// The lease on KEY is the string "<token>:<fence>" at
// "<key_prefix>lease:KEY" with a PX expiry; the fence comes from INCR on
// "<key_prefix>fence:KEY". Each operation is one Lua script, so a holder can
// only renew or delete its own lease, and a refused acquire uses up no fence
// number. Fence counters expire 7 days after their last grant, after which
// numbering for that key starts again at 1.
// Thread-safety: all members may be called concurrently. The client must
// outlive the lease.
class RedisLease final : public core::GenerationLease {
 public:
  explicit RedisLease(RedisClient& client);

  core::Result<std::optional<core::LeaseHandle>> try_acquire(const std::string& key,
                                                             std::chrono::milliseconds ttl) override;
  core::Result<bool> renew(const std::string& key, const core::LeaseHandle& handle,
                           std::chrono::milliseconds ttl) override;
  void release(const std::string& key, const core::LeaseHandle& handle) noexcept override;

 private:
  RedisClient& client_;
  LogThrottle error_log_{std::chrono::seconds(10)};
};

}  // namespace pixelgate::redis
