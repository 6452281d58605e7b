#include "redis/redis_spend_counters.hpp"

#include <spdlog/spdlog.h>

#include "admission/budget.hpp"

namespace pixelgate::redis {
namespace {

constexpr long long kDayTotalTtlMs = 3LL * 24 * 3600 * 1000;
constexpr long long kMonthTotalTtlMs = 40LL * 24 * 3600 * 1000;

// KEYS[1..4]: the global day and month totals, then the caller's day and
// month totals. ARGV[1]: the amount, ARGV[2..5]: the limit for each key
// (0 = none), ARGV[6] and ARGV[7]: the expiry of day and month totals in ms.
// Returns 0 after adding the amount to all four totals, or the index of the
// first limit the amount would pass, with nothing added. The 1e-9 tolerance
// matches BudgetLedger, so 25 reservations of 0.04 fit a limit of 1.00.
const char* const kReserveScript = R"lua(
local amount = tonumber(ARGV[1])
for i = 1, 4 do
  local limit = tonumber(ARGV[i + 1])
  if limit > 0 then
    local spent = tonumber(redis.call('GET', KEYS[i]) or '0')
    if spent + amount > limit + 1e-9 then return i end
  end
end
for i = 1, 4 do
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[1])
  redis.call('PEXPIRE', KEYS[i], i % 2 == 1 and ARGV[6] or ARGV[7])
end
return 0
)lua";

// The same keys and expiry arguments as kReserveScript; adds ARGV[1] to all
// four totals without checking limits.
const char* const kAdjustScript = R"lua(
for i = 1, 4 do
  redis.call('INCRBYFLOAT', KEYS[i], ARGV[1])
  redis.call('PEXPIRE', KEYS[i], i % 2 == 1 and ARGV[2] or ARGV[3])
end
return 0
)lua";

const Script& reserve_script() {
  static const Script script(kReserveScript);
  return script;
}

const Script& adjust_script() {
  static const Script script(kAdjustScript);
  return script;
}

}  // namespace

RedisSpendCounters::RedisSpendCounters(RedisClient& client, const core::Clock& clock)
    : client_(client), clock_(clock) {}

std::vector<std::string> RedisSpendCounters::total_keys(const std::string& principal, const std::string& day,
                                                        const std::string& month) const {
  return {client_.key("spend:*:" + day), client_.key("spend:*:" + month), client_.key("spend:" + principal + ":" + day),
          client_.key("spend:" + principal + ":" + month)};
}

core::Status RedisSpendCounters::reserve(const std::string& principal, const std::string& day,
                                         const std::string& month, double amount_usd,
                                         const admission::SpendLimits& principal_limits,
                                         const admission::SpendLimits& global_limits) {
  auto reply = client_.run_script(
      reserve_script(), total_keys(principal, day, month),
      {format_double(amount_usd), format_double(global_limits.daily_usd), format_double(global_limits.monthly_usd),
       format_double(principal_limits.daily_usd), format_double(principal_limits.monthly_usd),
       std::to_string(kDayTotalTtlMs), std::to_string(kMonthTotalTtlMs)});
  if (reply && reply->type != Reply::Type::Integer) {
    reply = core::Error::internal("the spend-reservation script returned an unexpected reply");
  }
  if (!reply) {
    if (auto suppressed = error_log_.allow()) {
      spdlog::warn("budget: reserving {} USD for {} in Redis failed: {}{}", amount_usd,
                   principal, reply.error().message, suppressed_note(*suppressed));
    }
    return std::move(reply).error();
  }

  const std::int64_t now = clock_.unix_seconds();
  switch (reply->integer) {
    case 0:
      return core::Ok{};
    case 1:
      return admission::spend_limit_error(admission::SpendLimitKind::GlobalDaily, global_limits.daily_usd, day, month,
                                          now);
    case 2:
      return admission::spend_limit_error(admission::SpendLimitKind::GlobalMonthly, global_limits.monthly_usd, day,
                                          month, now);
    case 3:
      return admission::spend_limit_error(admission::SpendLimitKind::CallerDaily, principal_limits.daily_usd, day,
                                          month, now);
    case 4:
      return admission::spend_limit_error(admission::SpendLimitKind::CallerMonthly, principal_limits.monthly_usd, day,
                                          month, now);
    default:
      return core::Error::internal("the spend-reservation script returned " + std::to_string(reply->integer));
  }
}

void RedisSpendCounters::adjust(const std::string& principal, const std::string& day, const std::string& month,
                                double delta_usd) noexcept {
  try {
    auto reply = client_.run_script(adjust_script(), total_keys(principal, day, month),
                                    {format_double(delta_usd), std::to_string(kDayTotalTtlMs),
                                     std::to_string(kMonthTotalTtlMs)});
    // NOTE: a lost refund leaves the budget lower than it should be, which
    // is safe; a lost settlement above the estimate goes uncounted.
    if (!reply) {
      if (auto suppressed = error_log_.allow()) {
        spdlog::error("budget: adding {} USD to the totals of {} for {} in Redis failed: {}{}",
                      delta_usd, principal, day, reply.error().message, suppressed_note(*suppressed));
      }
    }
  } catch (const std::exception& error) {
    spdlog::error("budget: adding {} USD to the totals of {} for {} in Redis failed: {}", delta_usd, principal, day,
                  error.what());
  }
}

core::Result<double> RedisSpendCounters::spent(const std::string& principal, const std::string& period) {
  const std::string key = client_.key("spend:" + principal + ":" + period);
  auto reply = client_.command({"GET", key});
  if (!reply) return std::move(reply).error();
  if (reply->is_nil()) return 0.0;
  auto value = parse_double(reply->text);
  if (!value) return core::Error::internal("Redis key " + key + " contains \"" + reply->text + "\", which is not a number");
  return *value;
}

}  // namespace pixelgate::redis
