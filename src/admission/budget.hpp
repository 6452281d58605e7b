// Spend budgets: cost is reserved before a backend call and settled (or
// refunded) after it, against per-principal and global daily and monthly
// limits. The ledger lives in SQLite (WAL), so amounts survive restarts.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
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

// The four limits a reservation is checked against, in the order checked.
enum class SpendLimitKind { GlobalDaily, GlobalMonthly, CallerDaily, CallerMonthly };

// Builds the BudgetExhausted error for a reservation that would pass `kind`:
// the limit, its amount and the UTC period it lasts until, with Retry-After
// set to the seconds from `now_unix` to the end of that period. `day` is
// "YYYY-MM-DD" and `month` "YYYY-MM". Shared by BudgetLedger and the Redis
// spend counters, so both reject with the same message.
core::Error spend_limit_error(SpendLimitKind kind, double limit_usd, const std::string& day, const std::string& month,
                              std::int64_t now_unix);

class SpendCounters;

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

  // Makes `counters` (shared by several replicas, e.g. in Redis) the place
  // where limits are checked and totals are read; the SQLite rows are still
  // written for reports. Call before the ledger is used by other threads;
  // `counters` must outlive the ledger.
  void set_shared_counters(SpendCounters* counters) noexcept { shared_ = counters; }

  // Reserves `amount_usd` for `principal`. Fails with BudgetExhausted,
  // naming the limit, when the principal's or the global daily or monthly
  // total would pass its limit, and with Unavailable when the shared
  // counters cannot be reached (spending fails closed). Returns the
  // reservation id.
  core::Result<std::int64_t> reserve(const std::string& principal, const std::string& backend,
                                     const std::string& model, const std::string& image_key, double amount_usd,
                                     const SpendLimits& principal_limits, const SpendLimits& global_limits);

  // Replaces the reserved amount with what the call really cost.
  void settle(std::int64_t reservation, double actual_usd);

  // Cancels a reservation; the amount no longer counts.
  void refund(std::int64_t reservation);

  // Spent (settled plus reserved) today and this month (UTC); an empty
  // principal means everyone. With shared counters the totals of all
  // replicas; when those cannot be read, this replica's own totals, with a
  // warning in the log.
  double spent_today(const std::string& principal) const;
  double spent_this_month(const std::string& principal) const;

  // Sums settled amounts by "key", "backend" or "day".
  core::Result<std::vector<SpendLine>> report(const std::string& by) const;

 private:
  BudgetLedger(sqlite3* db, const core::Clock& clock);
  core::Status load_totals();
  void add(const std::string& principal, const std::string& day, const std::string& month, double amount);
  std::optional<core::Error> check_local_limits(const std::string& principal, const std::string& day,
                                                const std::string& month, std::int64_t now, double amount_usd,
                                                const SpendLimits& principal_limits,
                                                const SpendLimits& global_limits);
  core::Result<std::int64_t> insert_reservation(const std::string& principal, const std::string& backend,
                                                const std::string& model, const std::string& image_key,
                                                double amount_usd, std::int64_t now, const std::string& day,
                                                const std::string& month);
  double spent_in(const std::string& principal, const std::string& period) const;

  sqlite3* db_;
  const core::Clock& clock_;
  SpendCounters* shared_ = nullptr;
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
