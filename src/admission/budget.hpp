// Spend budgets: cost is reserved before a backend call and settled (or
// refunded) after it, against per-principal and global daily and monthly
// limits. The ledger lives in SQLite (WAL), so amounts survive restarts.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/clock.hpp"
#include "core/error.hpp"

struct sqlite3;

namespace pixelgate::admission {

// Limits in US dollars; 0 means unlimited.
struct SpendLimits {
  double daily_usd = 0;
  double monthly_usd = 0;
};

struct SpendLine {
  std::string group;  // the key, backend or day the line sums up
  int images = 0;
  double usd = 0;
};

// Thread-safety: every member may be called concurrently; one mutex orders
// the in-memory totals and the SQLite writes.
class BudgetLedger {
 public:
  // Opens or creates the ledger database at `path` (":memory:" for tests).
  static core::Result<std::unique_ptr<BudgetLedger>> open(const std::string& path, const core::Clock& clock);
  ~BudgetLedger();

  // Reserves `amount_usd` for `principal`. Fails with ResourceExhausted,
  // naming the limit, when the principal's or the global daily or monthly
  // total would pass its limit. Returns the reservation id.
  core::Result<std::int64_t> reserve(const std::string& principal, const std::string& backend,
                                     const std::string& model, const std::string& image_key, double amount_usd,
                                     const SpendLimits& principal_limits, const SpendLimits& global_limits);

  // Replaces the reserved amount with what the call really cost.
  void settle(std::int64_t reservation, double actual_usd);

  // Cancels a reservation; the amount no longer counts.
  void refund(std::int64_t reservation);

  // Spent (settled plus reserved) today and this month (UTC); an empty
  // principal means everyone.
  double spent_today(const std::string& principal) const;
  double spent_this_month(const std::string& principal) const;

  // Sums settled amounts by "key", "backend" or "day".
  core::Result<std::vector<SpendLine>> report(const std::string& by) const;

 private:
  BudgetLedger(sqlite3* db, const core::Clock& clock);
  core::Status load_totals();
  void add(const std::string& principal, const std::string& day, const std::string& month, double amount);

  sqlite3* db_;
  const core::Clock& clock_;
  mutable std::mutex mutex_;
  // Totals keyed by "principal|period"; the principal "*" is the global total.
  std::map<std::string, double> totals_;
  struct Reservation {
    std::string principal;
    std::string day;
    std::string month;
    double amount = 0;
  };
  std::map<std::int64_t, Reservation> open_reservations_;
};

// Returns "YYYY-MM-DD" and "YYYY-MM" for a Unix time, in UTC.
std::string utc_day(std::int64_t unix_seconds);
std::string utc_month(std::int64_t unix_seconds);

}  // namespace pixelgate::admission
