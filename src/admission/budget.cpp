#include "admission/budget.hpp"

#include <sqlite3.h>

#include <algorithm>
#include <ctime>

#include <spdlog/spdlog.h>

#include "admission/spend_counters.hpp"
#include "core/sqlite.hpp"

namespace pixelgate::admission {
namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS ledger (
  id INTEGER PRIMARY KEY,
  created_unix INTEGER NOT NULL,
  day TEXT NOT NULL,
  month TEXT NOT NULL,
  principal TEXT NOT NULL,
  backend TEXT NOT NULL,
  model TEXT NOT NULL,
  image_key TEXT NOT NULL,
  amount_usd REAL NOT NULL,
  state TEXT NOT NULL CHECK (state IN ('reserved', 'settled', 'refunded'))
);
CREATE INDEX IF NOT EXISTS ledger_by_month ON ledger (month, principal);
)sql";

// Small RAII holder for prepared statements.
struct Statement {
  sqlite3_stmt* handle = nullptr;
  Statement(sqlite3* db, const char* sql) { sqlite3_prepare_v2(db, sql, -1, &handle, nullptr); }
  ~Statement() { sqlite3_finalize(handle); }
  bool ok() const { return handle != nullptr; }
};

std::string format_period(std::int64_t unix_seconds, const char* format) {
  const std::time_t time = static_cast<std::time_t>(unix_seconds);
  std::tm parts{};
  gmtime_r(&time, &parts);
  char text[16];
  std::strftime(text, sizeof(text), format, &parts);
  return text;
}

// Seconds from `now` to the next UTC midnight, or to the first second of the
// next UTC month.
int seconds_until_period_end(std::int64_t now, bool daily) {
  const std::time_t time = static_cast<std::time_t>(now);
  std::tm parts{};
  gmtime_r(&time, &parts);
  parts.tm_hour = 0;
  parts.tm_min = 0;
  parts.tm_sec = 0;
  if (daily) {
    parts.tm_mday += 1;
  } else {
    parts.tm_mday = 1;
    parts.tm_mon += 1;
  }
  const std::int64_t end = timegm(&parts);
  return static_cast<int>(std::max<std::int64_t>(1, end - now));
}

std::string money(double usd) {
  char text[32];
  std::snprintf(text, sizeof(text), "$%.2f", usd);
  return text;
}

}  // namespace

core::Error spend_limit_error(SpendLimitKind kind, double limit_usd, const std::string& day, const std::string& month,
                              std::int64_t now_unix) {
  const bool daily = kind == SpendLimitKind::GlobalDaily || kind == SpendLimitKind::CallerDaily;
  std::string what;
  switch (kind) {
    case SpendLimitKind::GlobalDaily: what = "the global daily"; break;
    case SpendLimitKind::GlobalMonthly: what = "the global monthly"; break;
    case SpendLimitKind::CallerDaily: what = "this caller's daily"; break;
    case SpendLimitKind::CallerMonthly: what = "this caller's monthly"; break;
  }
  const std::string until = "the end of " + (daily ? day : month) + " UTC";
  return core::Error{core::ErrorCode::BudgetExhausted,
                     what + " spend budget of " + money(limit_usd) + " is used up until " + until, {},
                     seconds_until_period_end(now_unix, daily)};
}

std::string utc_day(std::int64_t unix_seconds) { return format_period(unix_seconds, "%Y-%m-%d"); }
std::string utc_month(std::int64_t unix_seconds) { return format_period(unix_seconds, "%Y-%m"); }

BudgetLedger::BudgetLedger(sqlite3* db, const core::Clock& clock) : db_(db), clock_(clock) {}

BudgetLedger::~BudgetLedger() { sqlite3_close(db_); }

core::Result<std::unique_ptr<BudgetLedger>> BudgetLedger::open(const std::string& path, const core::Clock& clock) {
  auto opened = core::open_sqlite(path, kSchema, "the budget ledger");
  if (!opened) return std::move(opened).error();
  sqlite3* db = *opened;
  auto ledger = std::unique_ptr<BudgetLedger>(new BudgetLedger(db, clock));
  if (auto status = ledger->load_totals(); !status) return std::move(status).error();
  return ledger;
}

core::Status BudgetLedger::load_totals() {
  // Reservations left open by a crash count as spent: the call may have
  // happened, and counting it keeps the budget on the safe side.
  Statement query(db_, "SELECT principal, day, month, amount_usd FROM ledger WHERE state != 'refunded' AND month >= ?");
  if (!query.ok()) return core::Error::internal(std::string("budget ledger query failed: ") + sqlite3_errmsg(db_));
  const std::string month = utc_month(clock_.unix_seconds());
  sqlite3_bind_text(query.handle, 1, month.c_str(), -1, SQLITE_TRANSIENT);
  std::lock_guard lock(mutex_);
  while (sqlite3_step(query.handle) == SQLITE_ROW) {
    const std::string principal = reinterpret_cast<const char*>(sqlite3_column_text(query.handle, 0));
    const std::string day = reinterpret_cast<const char*>(sqlite3_column_text(query.handle, 1));
    const std::string row_month = reinterpret_cast<const char*>(sqlite3_column_text(query.handle, 2));
    add(principal, day, row_month, sqlite3_column_double(query.handle, 3));
  }
  return core::Ok{};
}

void BudgetLedger::add(const std::string& principal, const std::string& day, const std::string& month, double amount) {
  totals_[principal + "|" + day] += amount;
  totals_[principal + "|" + month] += amount;
  totals_["*|" + day] += amount;
  totals_["*|" + month] += amount;
}

std::optional<core::Error> BudgetLedger::check_local_limits(const std::string& principal, const std::string& day,
                                                          const std::string& month, std::int64_t now,
                                                          double amount_usd, const SpendLimits& principal_limits,
                                                          const SpendLimits& global_limits) {
  auto over = [&](const std::string& who, const std::string& period, double limit) {
    if (limit <= 0) return false;
    return totals_[who + "|" + period] + amount_usd > limit + 1e-9;
  };
  if (over("*", day, global_limits.daily_usd)) {
    return spend_limit_error(SpendLimitKind::GlobalDaily, global_limits.daily_usd, day, month, now);
  }
  if (over("*", month, global_limits.monthly_usd)) {
    return spend_limit_error(SpendLimitKind::GlobalMonthly, global_limits.monthly_usd, day, month, now);
  }
  if (over(principal, day, principal_limits.daily_usd)) {
    return spend_limit_error(SpendLimitKind::CallerDaily, principal_limits.daily_usd, day, month, now);
  }
  if (over(principal, month, principal_limits.monthly_usd)) {
    return spend_limit_error(SpendLimitKind::CallerMonthly, principal_limits.monthly_usd, day, month, now);
  }
  return std::nullopt;
}

core::Result<std::int64_t> BudgetLedger::insert_reservation(const std::string& principal, const std::string& backend,
                                                            const std::string& model, const std::string& image_key,
                                                            double amount_usd, std::int64_t now,
                                                            const std::string& day, const std::string& month) {
  Statement insert(db_,
                   "INSERT INTO ledger (created_unix, day, month, principal, backend, model, image_key, amount_usd, "
                   "state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'reserved')");
  if (!insert.ok()) return core::Error::internal(std::string("budget ledger insert failed: ") + sqlite3_errmsg(db_));
  sqlite3_bind_int64(insert.handle, 1, now);
  sqlite3_bind_text(insert.handle, 2, day.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(insert.handle, 3, month.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(insert.handle, 4, principal.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(insert.handle, 5, backend.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(insert.handle, 6, model.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_text(insert.handle, 7, image_key.c_str(), -1, SQLITE_TRANSIENT);
  sqlite3_bind_double(insert.handle, 8, amount_usd);
  if (sqlite3_step(insert.handle) != SQLITE_DONE) {
    // Failing closed: without a ledger row the spend could not be accounted.
    spdlog::error("budget: recording a reservation for {} failed: {}", principal, sqlite3_errmsg(db_));
    return core::Error::unavailable("the spend ledger cannot be written; retry later", 5);
  }
  const std::int64_t id = sqlite3_last_insert_rowid(db_);
  add(principal, day, month, amount_usd);
  open_reservations_[id] = {principal, day, month, amount_usd};
  return id;
}

core::Result<std::int64_t> BudgetLedger::reserve(const std::string& principal, const std::string& backend,
                                                 const std::string& model, const std::string& image_key,
                                                 double amount_usd, const SpendLimits& principal_limits,
                                                 const SpendLimits& global_limits) {
  const std::int64_t now = clock_.unix_seconds();
  const std::string day = utc_day(now);
  const std::string month = utc_month(now);

  if (shared_ == nullptr) {
    std::lock_guard lock(mutex_);
    if (auto error = check_local_limits(principal, day, month, now, amount_usd, principal_limits, global_limits)) {
      return *std::move(error);
    }
    return insert_reservation(principal, backend, model, image_key, amount_usd, now, day, month);
  }

  // The shared counters check the limits and add the amount in one step for
  // all replicas, so this replica's totals are not consulted. The network
  // call runs outside the mutex, so one slow call does not hold up others.
  auto shared = shared_->reserve(principal, day, month, amount_usd, principal_limits, global_limits);
  if (!shared && shared.error().code != core::ErrorCode::BudgetExhausted) {
    // Failing closed. The counters have logged the cause, which names the
    // Redis address, so the client gets a message without it.
    return core::Error::unavailable("the shared spend budget (Redis) cannot be checked; retry shortly",
                                    std::max(1, shared.error().retry_after_seconds));
  }
  if (!shared) return std::move(shared).error();
  core::Result<std::int64_t> id = [&] {
    std::lock_guard lock(mutex_);
    return insert_reservation(principal, backend, model, image_key, amount_usd, now, day, month);
  }();
  if (!id) shared_->adjust(principal, day, month, -amount_usd);
  return id;
}

void BudgetLedger::settle(std::int64_t reservation, double actual_usd) {
  Reservation settled;
  {
    std::lock_guard lock(mutex_);
    auto it = open_reservations_.find(reservation);
    if (it == open_reservations_.end()) return;
    settled = it->second;
    add(settled.principal, settled.day, settled.month, actual_usd - settled.amount);
    open_reservations_.erase(it);

    Statement update(db_, "UPDATE ledger SET state = 'settled', amount_usd = ? WHERE id = ?");
    sqlite3_bind_double(update.handle, 1, actual_usd);
    sqlite3_bind_int64(update.handle, 2, reservation);
    if (!update.ok() || sqlite3_step(update.handle) != SQLITE_DONE) {
      spdlog::error("budget: settling reservation {} failed: {}", reservation, sqlite3_errmsg(db_));
    }
  }
  const double delta = actual_usd - settled.amount;
  if (shared_ != nullptr && delta != 0) shared_->adjust(settled.principal, settled.day, settled.month, delta);
}

void BudgetLedger::refund(std::int64_t reservation) {
  Reservation refunded;
  {
    std::lock_guard lock(mutex_);
    auto it = open_reservations_.find(reservation);
    if (it == open_reservations_.end()) return;
    refunded = it->second;
    add(refunded.principal, refunded.day, refunded.month, -refunded.amount);
    open_reservations_.erase(it);

    Statement update(db_, "UPDATE ledger SET state = 'refunded' WHERE id = ?");
    sqlite3_bind_int64(update.handle, 1, reservation);
    if (!update.ok() || sqlite3_step(update.handle) != SQLITE_DONE) {
      spdlog::error("budget: refunding reservation {} failed: {}", reservation, sqlite3_errmsg(db_));
    }
  }
  if (shared_ != nullptr && refunded.amount != 0) {
    shared_->adjust(refunded.principal, refunded.day, refunded.month, -refunded.amount);
  }
}

double BudgetLedger::spent_in(const std::string& principal, const std::string& period) const {
  const std::string who = principal.empty() ? "*" : principal;
  if (shared_ != nullptr) {
    auto spent = shared_->spent(who, period);
    if (spent) return *spent;
    spdlog::warn("budget: reading the shared total of {} for {} failed, so this replica's total is shown: {}", who,
                 period, spent.error().message);
  }
  std::lock_guard lock(mutex_);
  auto it = totals_.find(who + "|" + period);
  return it == totals_.end() ? 0.0 : it->second;
}

double BudgetLedger::spent_today(const std::string& principal) const {
  return spent_in(principal, utc_day(clock_.unix_seconds()));
}

double BudgetLedger::spent_this_month(const std::string& principal) const {
  return spent_in(principal, utc_month(clock_.unix_seconds()));
}

core::Result<std::vector<SpendLine>> BudgetLedger::report(const std::string& by) const {
  std::string column;
  if (by == "key") column = "principal";
  else if (by == "backend") column = "backend || ' ' || model";
  else if (by == "day") column = "day";
  else return core::Error::invalid("--by must be key, backend or day, got \"" + by + "\"");

  const std::string sql = "SELECT " + column + ", COUNT(*), SUM(amount_usd) FROM ledger WHERE state = 'settled' GROUP BY 1 ORDER BY 1";
  std::lock_guard lock(mutex_);
  Statement query(db_, sql.c_str());
  if (!query.ok()) return core::Error::internal(std::string("budget report failed: ") + sqlite3_errmsg(db_));
  std::vector<SpendLine> lines;
  while (sqlite3_step(query.handle) == SQLITE_ROW) {
    SpendLine line;
    line.group = reinterpret_cast<const char*>(sqlite3_column_text(query.handle, 0));
    line.images = sqlite3_column_int(query.handle, 1);
    line.usd = sqlite3_column_double(query.handle, 2);
    lines.push_back(std::move(line));
  }
  return lines;
}

}  // namespace pixelgate::admission
