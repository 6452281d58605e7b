#include "jobs/job_store.hpp"

#include <openssl/rand.h>
#include <sqlite3.h>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "core/hash.hpp"
#include "core/sqlite.hpp"

namespace pixelgate::jobs {
namespace {

using Json = nlohmann::json;

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  principal TEXT NOT NULL,
  client_address TEXT NOT NULL,
  idempotency_key TEXT,
  request_hash TEXT NOT NULL,
  request_json TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed')),
  images_json TEXT NOT NULL DEFAULT '[]',
  error_json TEXT NOT NULL DEFAULT '',
  webhook_url TEXT NOT NULL DEFAULT '',
  base_url TEXT NOT NULL DEFAULT '',
  webhook_state TEXT NOT NULL DEFAULT 'none' CHECK (webhook_state IN ('none', 'pending', 'delivered', 'failed')),
  webhook_attempts INTEGER NOT NULL DEFAULT 0,
  created_unix INTEGER NOT NULL,
  updated_unix INTEGER NOT NULL,
  attempts INTEGER NOT NULL DEFAULT 0,
  not_before_unix INTEGER NOT NULL DEFAULT 0,
  deferrals INTEGER NOT NULL DEFAULT 0,
  UNIQUE (principal, idempotency_key)
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE INDEX IF NOT EXISTS jobs_by_webhook ON jobs (webhook_state, seq);
)sql";

constexpr const char* kColumns =
    "seq, id, principal, client_address, idempotency_key, request_hash, request_json, status, images_json, "
    "error_json, webhook_url, base_url, webhook_state, webhook_attempts, created_unix, updated_unix, attempts, "
    "not_before_unix, deferrals";

// A prepared statement that is finalized with its scope.
class Statement {
 public:
  Statement(sqlite3* db, const std::string& sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &handle_, nullptr) != SQLITE_OK) handle_ = nullptr;
  }
  ~Statement() { sqlite3_finalize(handle_); }
  Statement(const Statement&) = delete;
  Statement& operator=(const Statement&) = delete;

  bool ok() const { return handle_ != nullptr; }
  sqlite3_stmt* get() const { return handle_; }
  std::string error() const { return sqlite3_errmsg(db_); }

  void bind(int index, const std::string& text) {
    sqlite3_bind_text(handle_, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
  }
  void bind(int index, std::int64_t number) { sqlite3_bind_int64(handle_, index, number); }
  void bind_null(int index) { sqlite3_bind_null(handle_, index); }

 private:
  sqlite3* db_;
  sqlite3_stmt* handle_ = nullptr;
};

std::string column_text(sqlite3_stmt* statement, int column) {
  const auto* text = reinterpret_cast<const char*>(sqlite3_column_text(statement, column));
  return text ? std::string(text, static_cast<std::size_t>(sqlite3_column_bytes(statement, column))) : std::string{};
}

JobStatus parse_status(const std::string& text) {
  if (text == "running") return JobStatus::Running;
  if (text == "succeeded") return JobStatus::Succeeded;
  if (text == "failed") return JobStatus::Failed;
  return JobStatus::Queued;
}

WebhookState parse_webhook_state(const std::string& text) {
  if (text == "pending") return WebhookState::Pending;
  if (text == "delivered") return WebhookState::Delivered;
  if (text == "failed") return WebhookState::Failed;
  return WebhookState::None;
}

std::vector<JobImage> parse_images(const std::string& text) {
  std::vector<JobImage> images;
  const Json array = Json::parse(text, nullptr, false);
  if (!array.is_array()) return images;
  for (const auto& item : array) {
    if (!item.is_object()) continue;
    images.push_back({item.value("key", ""), item.value("content_type", "")});
  }
  return images;
}

std::string images_json(const std::vector<JobImage>& images) {
  Json array = Json::array();
  for (const auto& image : images) array.push_back({{"key", image.key}, {"content_type", image.content_type}});
  return array.dump();
}

// Reads one row selected with kColumns.
Job read_job(sqlite3_stmt* row) {
  Job job;
  job.sequence = sqlite3_column_int64(row, 0);
  job.id = column_text(row, 1);
  job.principal = column_text(row, 2);
  job.client_address = column_text(row, 3);
  job.idempotency_key = column_text(row, 4);
  job.request_hash = column_text(row, 5);
  job.request_json = column_text(row, 6);
  job.status = parse_status(column_text(row, 7));
  job.images = parse_images(column_text(row, 8));
  job.error_json = column_text(row, 9);
  job.webhook_url = column_text(row, 10);
  job.base_url = column_text(row, 11);
  job.webhook_state = parse_webhook_state(column_text(row, 12));
  job.webhook_attempts = sqlite3_column_int(row, 13);
  job.created_unix = sqlite3_column_int64(row, 14);
  job.updated_unix = sqlite3_column_int64(row, 15);
  job.attempts = sqlite3_column_int(row, 16);
  job.not_before_unix = sqlite3_column_int64(row, 17);
  job.deferrals = sqlite3_column_int(row, 18);
  return job;
}

core::Error database_error(const std::string& what, const std::string& detail) {
  spdlog::error("jobs: {} failed: {}", what, detail);
  return core::Error::unavailable("the job database cannot be used now (" + what + " failed); retry later", 5);
}

// Runs BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when not committed.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) {
    begun_ = sqlite3_exec(db_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) == SQLITE_OK;
  }
  ~Transaction() {
    if (begun_ && !committed_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  bool begun() const { return begun_; }
  bool commit() {
    committed_ = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr) == SQLITE_OK;
    return committed_;
  }

 private:
  sqlite3* db_;
  bool begun_ = false;
  bool committed_ = false;
};

}  // namespace

std::string_view to_string(JobStatus status) noexcept {
  switch (status) {
    case JobStatus::Queued: return "queued";
    case JobStatus::Running: return "running";
    case JobStatus::Succeeded: return "succeeded";
    case JobStatus::Failed: return "failed";
  }
  return "queued";
}

std::string_view to_string(WebhookState state) noexcept {
  switch (state) {
    case WebhookState::None: return "none";
    case WebhookState::Pending: return "pending";
    case WebhookState::Delivered: return "delivered";
    case WebhookState::Failed: return "failed";
  }
  return "none";
}

std::string new_job_id() {
  unsigned char bytes[16];
  if (RAND_bytes(bytes, sizeof(bytes)) != 1) throw std::runtime_error("OpenSSL RAND_bytes failed");
  std::string text = core::base64_encode(std::string_view(reinterpret_cast<const char*>(bytes), sizeof(bytes)));
  for (char& c : text) {
    if (c == '+') c = '-';
    if (c == '/') c = '_';
  }
  while (!text.empty() && text.back() == '=') text.pop_back();
  return "job_" + text;
}

JobStore::JobStore(sqlite3* db, const core::Clock& clock) : db_(db), clock_(clock) {}

JobStore::~JobStore() { sqlite3_close(db_); }

core::Result<std::unique_ptr<JobStore>> JobStore::open(const std::string& path, const core::Clock& clock) {
  auto opened = core::open_sqlite(path, kSchema, "the job database");
  if (!opened) return std::move(opened).error();
  sqlite3* db = *opened;
  return std::unique_ptr<JobStore>(new JobStore(db, clock));
}

core::Result<std::optional<Job>> JobStore::find_locked(const std::string& sql, const std::vector<std::string>& arguments) {
  Statement query(db_, sql);
  if (!query.ok()) return database_error("a job query", query.error());
  for (std::size_t i = 0; i < arguments.size(); ++i) query.bind(static_cast<int>(i + 1), arguments[i]);
  const int step = sqlite3_step(query.get());
  if (step == SQLITE_ROW) return std::optional<Job>(read_job(query.get()));
  if (step == SQLITE_DONE) return std::optional<Job>{};
  return database_error("a job query", query.error());
}

core::Result<CreatedJob> JobStore::create(const NewJob& request, int max_queued) {
  // The webhook URL is part of what the idempotency key stands for.
  const std::string hash = core::sha256_hex(request.request_json + "\n" + request.webhook_url);
  std::lock_guard lock(mutex_);
  Transaction transaction(db_);
  if (!transaction.begun()) return database_error("starting a transaction", sqlite3_errmsg(db_));

  if (!request.idempotency_key.empty()) {
    auto earlier = find_locked(std::string("SELECT ") + kColumns + " FROM jobs WHERE principal = ? AND idempotency_key = ?",
                               {request.principal, request.idempotency_key});
    if (!earlier) return std::move(earlier).error();
    if (*earlier) {
      if ((*earlier)->request_hash != hash) {
        return core::Error{core::ErrorCode::IdempotencyKeyReused,
                           "this Idempotency-Key was already used for job " + (*earlier)->id +
                               " with a different request body; send a new key for a new request",
                           "Idempotency-Key", 0};
      }
      return CreatedJob{std::move(**earlier), true};
    }
  }

  if (request.initial_status == JobStatus::Queued) {
    Statement counting(db_, "SELECT COUNT(*) FROM jobs WHERE status = 'queued'");
    if (!counting.ok() || sqlite3_step(counting.get()) != SQLITE_ROW) {
      return database_error("counting queued jobs", sqlite3_errmsg(db_));
    }
    const std::int64_t queued = sqlite3_column_int64(counting.get(), 0);
    if (queued >= max_queued) {
      spdlog::warn("jobs: rejecting a job for {}: {} jobs are queued (jobs.max_queued)", request.principal, queued);
      return core::Error::unavailable("the job queue is full (" + std::to_string(queued) + " jobs); retry later", 5);
    }
  }

  Job job;
  job.id = new_job_id();
  job.principal = request.principal;
  job.client_address = request.client_address;
  job.idempotency_key = request.idempotency_key;
  job.request_hash = hash;
  job.request_json = request.request_json;
  job.status = request.initial_status;
  job.webhook_url = request.webhook_url;
  job.base_url = request.base_url;
  job.created_unix = clock_.unix_seconds();
  job.updated_unix = job.created_unix;
  job.attempts = request.initial_status == JobStatus::Running ? 1 : 0;

  Statement insert(db_,
                   "INSERT INTO jobs (id, principal, client_address, idempotency_key, request_hash, request_json, "
                   "status, webhook_url, base_url, created_unix, updated_unix, attempts) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
  if (!insert.ok()) return database_error("inserting a job", insert.error());
  insert.bind(1, job.id);
  insert.bind(2, job.principal);
  insert.bind(3, job.client_address);
  if (job.idempotency_key.empty()) {
    insert.bind_null(4);
  } else {
    insert.bind(4, job.idempotency_key);
  }
  insert.bind(5, job.request_hash);
  insert.bind(6, job.request_json);
  insert.bind(7, std::string(to_string(job.status)));
  insert.bind(8, job.webhook_url);
  insert.bind(9, job.base_url);
  insert.bind(10, job.created_unix);
  insert.bind(11, job.updated_unix);
  insert.bind(12, static_cast<std::int64_t>(job.attempts));
  if (sqlite3_step(insert.get()) != SQLITE_DONE) return database_error("inserting a job", insert.error());
  job.sequence = sqlite3_last_insert_rowid(db_);
  if (!transaction.commit()) return database_error("committing a new job", sqlite3_errmsg(db_));
  return CreatedJob{std::move(job), false};
}

core::Result<std::optional<Job>> JobStore::find(const std::string& id) {
  std::lock_guard lock(mutex_);
  return find_locked(std::string("SELECT ") + kColumns + " FROM jobs WHERE id = ?", {id});
}

core::Result<std::int64_t> JobStore::queue_position(const Job& job) {
  std::lock_guard lock(mutex_);
  Statement query(db_, "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND seq <= ?");
  if (!query.ok()) return database_error("reading a queue position", query.error());
  query.bind(1, job.sequence);
  if (sqlite3_step(query.get()) != SQLITE_ROW) return database_error("reading a queue position", query.error());
  return sqlite3_column_int64(query.get(), 0);
}

core::Result<std::optional<Job>> JobStore::claim_next() {
  std::lock_guard lock(mutex_);
  Transaction transaction(db_);
  if (!transaction.begun()) return database_error("starting a transaction", sqlite3_errmsg(db_));
  auto next = find_locked(std::string("SELECT ") + kColumns +
                              " FROM jobs WHERE status = 'queued' AND not_before_unix <= ? ORDER BY seq LIMIT 1",
                          {std::to_string(clock_.unix_seconds())});
  if (!next || !*next) return next;
  Job& job = **next;
  job.status = JobStatus::Running;
  job.attempts += 1;
  job.updated_unix = clock_.unix_seconds();
  Statement update(db_, "UPDATE jobs SET status = 'running', attempts = ?, updated_unix = ? WHERE seq = ?");
  if (!update.ok()) return database_error("starting a job", update.error());
  update.bind(1, static_cast<std::int64_t>(job.attempts));
  update.bind(2, job.updated_unix);
  update.bind(3, job.sequence);
  if (sqlite3_step(update.get()) != SQLITE_DONE) return database_error("starting a job", update.error());
  if (!transaction.commit()) return database_error("committing a started job", sqlite3_errmsg(db_));
  return next;
}

core::Result<std::optional<Job>> JobStore::complete(const std::string& id, JobStatus status,
                                                    const std::string& images, const std::string& error_json) {
  std::lock_guard lock(mutex_);
  Statement update(db_,
                   "UPDATE jobs SET status = ?, images_json = ?, error_json = ?, updated_unix = ?, "
                   "webhook_state = CASE WHEN webhook_url = '' THEN 'none' ELSE 'pending' END "
                   "WHERE id = ? AND status IN ('queued', 'running')");
  if (!update.ok()) return database_error("finishing a job", update.error());
  update.bind(1, std::string(to_string(status)));
  update.bind(2, images);
  update.bind(3, error_json);
  update.bind(4, clock_.unix_seconds());
  update.bind(5, id);
  if (sqlite3_step(update.get()) != SQLITE_DONE) return database_error("finishing a job", update.error());
  if (sqlite3_changes(db_) == 0) return std::optional<Job>{};
  return find_locked(std::string("SELECT ") + kColumns + " FROM jobs WHERE id = ?", {id});
}

core::Result<std::optional<Job>> JobStore::finish(const std::string& id, const std::vector<JobImage>& images) {
  return complete(id, JobStatus::Succeeded, images_json(images), "");
}

core::Result<std::optional<Job>> JobStore::fail(const std::string& id, const std::string& error_json) {
  return complete(id, JobStatus::Failed, "[]", error_json);
}

core::Result<bool> JobStore::defer(const std::string& id, int delay_seconds) {
  std::lock_guard lock(mutex_);
  Statement update(db_,
                   "UPDATE jobs SET status = 'queued', not_before_unix = ?, updated_unix = ?, "
                   "attempts = MAX(attempts - 1, 0), deferrals = deferrals + 1 WHERE id = ? AND status = 'running'");
  if (!update.ok()) return database_error("deferring a job", update.error());
  update.bind(1, clock_.unix_seconds() + delay_seconds);
  update.bind(2, clock_.unix_seconds());
  update.bind(3, id);
  if (sqlite3_step(update.get()) != SQLITE_DONE) return database_error("deferring a job", update.error());
  return sqlite3_changes(db_) > 0;
}

core::Result<int> JobStore::requeue_interrupted(int max_attempts) {
  std::lock_guard lock(mutex_);
  Transaction transaction(db_);
  if (!transaction.begun()) return database_error("starting a transaction", sqlite3_errmsg(db_));

  const Json error = {{"code", std::string(core::to_string(core::ErrorCode::Internal))},
                      {"message", "the job was interrupted by a restart " + std::to_string(max_attempts) +
                                      " times and was not started again; submit it again"},
                      {"param", nullptr}};
  Statement give_up(db_,
                    "UPDATE jobs SET status = 'failed', error_json = ?, updated_unix = ?, "
                    "webhook_state = CASE WHEN webhook_url = '' THEN 'none' ELSE 'pending' END "
                    "WHERE status = 'running' AND attempts >= ?");
  if (!give_up.ok()) return database_error("failing interrupted jobs", give_up.error());
  give_up.bind(1, error.dump());
  give_up.bind(2, clock_.unix_seconds());
  give_up.bind(3, static_cast<std::int64_t>(max_attempts));
  if (sqlite3_step(give_up.get()) != SQLITE_DONE) return database_error("failing interrupted jobs", give_up.error());
  const int failed = sqlite3_changes(db_);
  if (failed > 0) spdlog::warn("jobs: {} interrupted jobs had been started {} times and were failed", failed, max_attempts);

  // A requeued job keeps its sequence number, so it runs before the jobs
  // that were queued behind it.
  Statement requeue(db_, "UPDATE jobs SET status = 'queued', updated_unix = ? WHERE status = 'running'");
  if (!requeue.ok()) return database_error("requeueing interrupted jobs", requeue.error());
  requeue.bind(1, clock_.unix_seconds());
  if (sqlite3_step(requeue.get()) != SQLITE_DONE) return database_error("requeueing interrupted jobs", requeue.error());
  const int requeued = sqlite3_changes(db_);
  if (!transaction.commit()) return database_error("committing requeued jobs", sqlite3_errmsg(db_));
  return requeued;
}

core::Result<std::vector<Job>> JobStore::pending_webhooks(int limit) {
  std::lock_guard lock(mutex_);
  Statement query(db_, std::string("SELECT ") + kColumns +
                           " FROM jobs WHERE webhook_state = 'pending' ORDER BY seq LIMIT ?");
  if (!query.ok()) return database_error("reading pending webhooks", query.error());
  query.bind(1, static_cast<std::int64_t>(limit));
  std::vector<Job> jobs;
  int step = SQLITE_ROW;
  while ((step = sqlite3_step(query.get())) == SQLITE_ROW) jobs.push_back(read_job(query.get()));
  if (step != SQLITE_DONE) return database_error("reading pending webhooks", query.error());
  return jobs;
}

core::Status JobStore::set_webhook_state(const std::string& id, WebhookState state, int attempts) {
  std::lock_guard lock(mutex_);
  Statement update(db_, "UPDATE jobs SET webhook_state = ?, webhook_attempts = ? WHERE id = ?");
  if (!update.ok()) return database_error("recording a webhook delivery", update.error());
  update.bind(1, std::string(to_string(state)));
  update.bind(2, static_cast<std::int64_t>(attempts));
  update.bind(3, id);
  if (sqlite3_step(update.get()) != SQLITE_DONE) return database_error("recording a webhook delivery", update.error());
  return core::Ok{};
}

core::Result<int> JobStore::expire(std::int64_t before_unix) {
  std::lock_guard lock(mutex_);
  Statement remove(db_,
                   "DELETE FROM jobs WHERE status IN ('succeeded', 'failed') AND updated_unix < ? "
                   "AND webhook_state != 'pending'");
  if (!remove.ok()) return database_error("deleting expired jobs", remove.error());
  remove.bind(1, before_unix);
  if (sqlite3_step(remove.get()) != SQLITE_DONE) return database_error("deleting expired jobs", remove.error());
  return sqlite3_changes(db_);
}

core::Result<std::int64_t> JobStore::count(JobStatus status) {
  std::lock_guard lock(mutex_);
  Statement query(db_, "SELECT COUNT(*) FROM jobs WHERE status = ?");
  if (!query.ok()) return database_error("counting jobs", query.error());
  query.bind(1, std::string(to_string(status)));
  if (sqlite3_step(query.get()) != SQLITE_ROW) return database_error("counting jobs", query.error());
  return sqlite3_column_int64(query.get(), 0);
}

}  // namespace pixelgate::jobs
