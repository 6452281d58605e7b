// The objects one pixelgate process needs to generate and serve images,
// built from a configuration, shared by `serve` and `generate`.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "admission/budget.hpp"
#include "admission/gate.hpp"
#include "admission/rate_limiter.hpp"
#include "config/config.hpp"
#include "core/clock.hpp"
#include "core/worker_pool.hpp"
#include "generation/backend_health.hpp"
#include "generation/image_service.hpp"
#include "generation/resolver.hpp"
#include "redis/redis_client.hpp"
#include "redis/redis_lease.hpp"
#include "redis/redis_spend_counters.hpp"
#include "storage/hot_cache.hpp"
#include "storage/object_store.hpp"

namespace pixelgate::cli {

// Ownership: the Runtime owns everything; members are declared in the order
// they depend on each other, so destruction runs in reverse.
struct Runtime {
  config::Config config;
  generation::BackendMap backends;
  std::unique_ptr<storage::ObjectStore> store;
  std::unique_ptr<storage::HotCache> hot_cache;
  core::SystemClock clock;
  // Set when [redis] url is: shared by the limiter, counters and lease.
  std::unique_ptr<redis::RedisClient> redis;
  std::unique_ptr<redis::RedisSpendCounters> spend_counters;
  std::unique_ptr<redis::RedisLease> lease;
  std::unique_ptr<admission::RateLimiter> rate_limiter;
  std::unique_ptr<admission::BudgetLedger> ledger;
  std::unique_ptr<admission::Gate> gate;
  std::unique_ptr<generation::BackendHealth> health;
  std::unique_ptr<core::WorkerPool> workers;
  std::unique_ptr<generation::Resolver> resolver;
  std::unique_ptr<generation::ImageService> images;

  ~Runtime();
};

// Opens the object store the configuration names (disk or S3).
core::Result<std::unique_ptr<storage::ObjectStore>> open_store(const config::Config& config);

// Starts libraries, backends, storage and workers. Errors name the setting.
core::Result<std::unique_ptr<Runtime>> build_runtime(config::Config config);

// Returns what an operator must know before serving: open access, or a
// signed mode that no key can pass. warn_about_access() logs the same lines.
std::vector<std::string> access_warnings(const config::Config& config);
void warn_about_access(const config::Config& config);

// Loads the configuration from --config PATH (or PIXELGATE_CONFIG) and the
// environment; an empty path means embedded defaults.
core::Result<config::Config> load_config(const std::string& path);

// Returns the ledger path: budgets.ledger_path, or ledger.sqlite3 in the
// storage folder.
std::string ledger_path(const config::Config& config);

}  // namespace pixelgate::cli
