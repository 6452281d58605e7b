// Opening the SQLite databases pixelgate keeps (budget ledger, jobs).
#pragma once

#include <string>

#include "core/error.hpp"

struct sqlite3;

namespace pixelgate::core {

// Opens or creates the database at `path` for use from several threads, in
// WAL mode with a 5 s busy timeout, and runs `schema`. `what` names the
// database in errors, e.g. "the budget ledger". The caller owns the handle
// and closes it with sqlite3_close.
Result<sqlite3*> open_sqlite(const std::string& path, const std::string& schema, const std::string& what);

}  // namespace pixelgate::core
