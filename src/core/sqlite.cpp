#include "core/sqlite.hpp"

#include <sqlite3.h>

namespace pixelgate::core {

Result<sqlite3*> open_sqlite(const std::string& path, const std::string& schema, const std::string& what) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
                      nullptr) != SQLITE_OK) {
    const std::string reason = db ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return Error::internal("cannot open " + what + " " + path + ": " + reason);
  }
  sqlite3_busy_timeout(db, 5000);
  char* error = nullptr;
  const std::string setup = "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;" + schema;
  if (sqlite3_exec(db, setup.c_str(), nullptr, nullptr, &error) != SQLITE_OK) {
    const std::string reason = error ? error : "unknown error";
    sqlite3_free(error);
    sqlite3_close(db);
    return Error::internal("cannot set up " + what + " " + path + ": " + reason);
  }
  return db;
}

}  // namespace pixelgate::core
