// Spend totals shared by several replicas, so a budget holds for all of them
// together. BudgetLedger checks its limits here when one is set (Redis), and
// keeps its own SQLite rows for reports either way.
#pragma once

#include <string>

#include "core/error.hpp"

namespace pixelgate::admission {

struct SpendLimits;

// Thread-safety: every member may be called concurrently.
class SpendCounters {
 public:
  virtual ~SpendCounters() = default;

  // Atomically adds `amount_usd` to the principal's and the global totals of
  // `day` ("YYYY-MM-DD") and `month` ("YYYY-MM") unless one of them would
  // pass its limit (0 = unlimited). Fails with ResourceExhausted naming the
  // limit, or Unavailable when the shared store cannot be reached.
  virtual core::Status reserve(const std::string& principal, const std::string& day, const std::string& month,
                               double amount_usd, const SpendLimits& principal_limits,
                               const SpendLimits& global_limits) = 0;

  // Adds `delta_usd` (negative for a refund or a cheaper settlement) to the
  // same four totals. Failures are logged, not returned.
  virtual void adjust(const std::string& principal, const std::string& day, const std::string& month,
                      double delta_usd) noexcept = 0;

  // Spent (settled plus reserved) by `principal` ("*" = everyone) in the period.
  virtual core::Result<double> spent(const std::string& principal, const std::string& period) = 0;
};

}  // namespace pixelgate::admission
