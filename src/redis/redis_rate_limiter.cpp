#include "redis/redis_rate_limiter.hpp"

#include <spdlog/spdlog.h>

namespace pixelgate::redis {
namespace {

// KEYS[1]: the bucket hash. ARGV[1]: refill rate in tokens per second,
// ARGV[2]: bucket size, ARGV[3]: "take" to consume a token or "give" to put
// one back. Returns {allowed (1 or 0), whole tokens left, seconds until the
// bucket is full, seconds until one token is back (0 unless rejected)}; the
// arithmetic mirrors InMemoryRateLimiter. Numbers passed to redis.call are
// sent with 17 significant digits, so tokens and times keep full precision.
const char* const kBucketScript = R"lua(
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'updated')
local tokens = tonumber(state[1])
local updated = tonumber(state[2])
if tokens == nil or updated == nil then
  if ARGV[3] == 'give' then return {1, 0, 0, 0} end
  tokens = burst
  updated = now
end
tokens = math.min(burst, tokens + math.max(0, now - updated) * rate)
local allowed = 1
local retry_after = 0
if ARGV[3] == 'give' then
  tokens = math.min(burst, tokens + 1)
elseif tokens >= 1 then
  tokens = tokens - 1
else
  allowed = 0
  retry_after = math.max(1, math.ceil((1 - tokens) / rate))
end
local full_in = (burst - tokens) / rate
redis.call('HSET', KEYS[1], 'tokens', tokens, 'updated', now)
-- A missing bucket counts as full, so the key may vanish once it would be
-- full again; a year caps absurd policies at a value PEXPIRE accepts.
redis.call('PEXPIRE', KEYS[1], math.min(math.ceil(full_in * 1000) + 1000, 31536000000))
return {allowed, math.floor(tokens), math.ceil(full_in), retry_after}
)lua";

const Script& bucket_script() {
  static const Script script(kBucketScript);
  return script;
}

}  // namespace

RedisRateLimiter::RedisRateLimiter(RedisClient& client) : client_(client) {}

core::Result<Reply> RedisRateLimiter::run(const std::string& bucket, const admission::RatePolicy& policy, bool take) {
  return client_.run_script(bucket_script(), {client_.key("rl:" + bucket)},
                            {format_double(policy.rate_per_second), format_double(policy.burst), take ? "take" : "give"});
}

admission::RateDecision RedisRateLimiter::consume(const std::string& bucket, const admission::RatePolicy& policy) {
  admission::RateDecision decision;
  if (policy.unlimited()) return decision;

  auto reply = run(bucket, policy, true);
  if (reply && (reply->type != Reply::Type::Array || reply->elements.size() != 4)) {
    reply = core::Error::internal("the rate-limit script returned an unexpected reply");
  }
  if (!reply) {
    if (auto suppressed = error_log_.allow()) {
      spdlog::warn("rate limit: bucket {} could not be checked in Redis: {}{}", bucket,
                   reply.error().message, suppressed_note(*suppressed));
    }
    decision.allowed = false;
    decision.unavailable = true;
    decision.retry_after_seconds = std::max(1, reply.error().retry_after_seconds);
    return decision;
  }

  const auto& values = reply->elements;
  decision.allowed = values[0].integer == 1;
  decision.remaining = static_cast<int>(values[1].integer);
  decision.reset_seconds = static_cast<int>(values[2].integer);
  decision.retry_after_seconds = static_cast<int>(values[3].integer);
  return decision;
}

void RedisRateLimiter::refund(const std::string& bucket, const admission::RatePolicy& policy) {
  if (policy.unlimited()) return;
  auto reply = run(bucket, policy, false);
  if (!reply) {
    if (auto suppressed = error_log_.allow()) {
      spdlog::warn("rate limit: returning a token to bucket {} in Redis failed: {}{}",
                   bucket, reply.error().message, suppressed_note(*suppressed));
    }
  }
}

}  // namespace pixelgate::redis
