#include "redis/redis_lease.hpp"

#include <openssl/rand.h>

#include <spdlog/spdlog.h>

#include "core/hash.hpp"

namespace pixelgate::redis {
namespace {

constexpr long long kFenceTtlMs = 7LL * 24 * 3600 * 1000;

// KEYS[1]: the lease, KEYS[2]: the fence counter. ARGV[1]: the holder's
// token, ARGV[2]: the lease time in ms, ARGV[3]: the fence counter's expiry
// in ms. Returns the new fence number, or 0 when the lease is held. The
// EXISTS check and the SET run in one script, so the SET cannot fail after
// the INCR and no fence number is used up by a refused acquire.
const char* const kAcquireScript = R"lua(
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local fence = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. fence, 'PX', ARGV[2])
return fence
)lua";

// KEYS[1]: the lease. ARGV[1]: "<token>:<fence>", ARGV[2]: the lease time
// in ms. Returns 1 when the lease was still held by ARGV[1] and now expires
// ARGV[2] ms from now, else 0.
const char* const kRenewScript = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
)lua";

// KEYS[1]: the lease. ARGV[1]: "<token>:<fence>". Deletes the lease only when
// ARGV[1] still holds it; returns the number of keys deleted.
const char* const kReleaseScript = R"lua(
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
)lua";

const Script& acquire_script() {
  static const Script script(kAcquireScript);
  return script;
}

const Script& renew_script() {
  static const Script script(kRenewScript);
  return script;
}

const Script& release_script() {
  static const Script script(kReleaseScript);
  return script;
}

std::string lease_value(const core::LeaseHandle& handle) { return handle.token + ":" + std::to_string(handle.fence); }

}  // namespace

RedisLease::RedisLease(RedisClient& client) : client_(client) {}

core::Result<std::optional<core::LeaseHandle>> RedisLease::try_acquire(const std::string& key,
                                                                       std::chrono::milliseconds ttl) {
  if (ttl.count() <= 0) return core::Error::internal("a generation lease needs a positive time, got " +
                                                     std::to_string(ttl.count()) + " ms");
  unsigned char random[16];
  if (RAND_bytes(random, sizeof(random)) != 1) return core::Error::internal("OpenSSL RAND_bytes failed");
  core::LeaseHandle handle;
  handle.token = core::to_hex(random, sizeof(random));

  auto reply = client_.run_script(acquire_script(), {client_.key("lease:" + key), client_.key("fence:" + key)},
                                  {handle.token, std::to_string(ttl.count()), std::to_string(kFenceTtlMs)});
  if (reply && reply->type != Reply::Type::Integer) {
    reply = core::Error::internal("the lease script returned an unexpected reply");
  }
  if (!reply) {
    if (auto suppressed = error_log_.allow()) {
      spdlog::warn("lease: acquiring the lease on {} failed: {}{}", key,
                   reply.error().message, suppressed_note(*suppressed));
    }
    return std::move(reply).error();
  }
  if (reply->integer == 0) return std::optional<core::LeaseHandle>{};
  handle.fence = reply->integer;
  spdlog::debug("lease: acquired {} with fence {} for {} ms", key, handle.fence, ttl.count());
  return std::optional<core::LeaseHandle>(std::move(handle));
}

core::Result<bool> RedisLease::renew(const std::string& key, const core::LeaseHandle& handle,
                                     std::chrono::milliseconds ttl) {
  if (ttl.count() <= 0) return core::Error::internal("a generation lease needs a positive time, got " +
                                                     std::to_string(ttl.count()) + " ms");
  auto reply = client_.run_script(renew_script(), {client_.key("lease:" + key)},
                                  {lease_value(handle), std::to_string(ttl.count())});
  if (reply && reply->type != Reply::Type::Integer) {
    reply = core::Error::internal("the lease script returned an unexpected reply");
  }
  if (!reply) {
    if (auto suppressed = error_log_.allow()) {
      spdlog::warn("lease: renewing the lease on {} (fence {}) failed: {}{}", key,
                   handle.fence, reply.error().message, suppressed_note(*suppressed));
    }
    return std::move(reply).error();
  }
  if (reply->integer != 1) {
    spdlog::warn("lease: the lease on {} (fence {}) expired before it was renewed", key, handle.fence);
    return false;
  }
  return true;
}

void RedisLease::release(const std::string& key, const core::LeaseHandle& handle) noexcept {
  try {
    auto reply = client_.run_script(release_script(), {client_.key("lease:" + key)}, {lease_value(handle)});
    if (!reply) {
      // The lease then expires on its own after its time.
      if (auto suppressed = error_log_.allow()) {
        spdlog::warn("lease: releasing the lease on {} (fence {}) failed: {}{}", key,
                     handle.fence, reply.error().message, suppressed_note(*suppressed));
      }
      return;
    }
    if (reply->integer == 0) {
      spdlog::info("lease: the lease on {} (fence {}) had already expired or passed to another holder", key,
                   handle.fence);
    }
  } catch (const std::exception& error) {
    spdlog::error("lease: releasing the lease on {} (fence {}) failed: {}", key, handle.fence, error.what());
  }
}

}  // namespace pixelgate::redis
