#include "cli/runtime.hpp"

#include <filesystem>

#include <spdlog/spdlog.h>

#include "backends/http_client.hpp"
#include "imaging/image.hpp"
#include "redis/redis_rate_limiter.hpp"
#include "storage/disk_store.hpp"
#include "storage/s3_store.hpp"

namespace pixelgate::cli {

Runtime::~Runtime() {
  // Workers go first: their tasks use the service, store and backends.
  if (workers) workers->stop();
}

core::Result<config::Config> load_config(const std::string& path) {
  return config::load_file(path, config::process_environment());
}

std::vector<std::string> access_warnings(const config::Config& config) {
  std::vector<std::string> warnings;
  const auto& security = config.security;
  if (security.mode == "open") {
    warnings.push_back("security: mode \"open\": anyone who reaches this server can generate images at your cost. "
                       "Use it for local development only; set [security] mode = \"signed\" for anything public.");
  } else if (security.signing_keys.empty() && config.api_keys.empty() &&
             (security.mode == "signed" || security.public_templates.empty())) {
    warnings.push_back("security: mode \"" + security.mode +
                       "\" with no [security.signing_keys] and no [api_keys]: every image request will be rejected "
                       "with 403. Add a signing key (docs/signing.md) or set mode = \"open\" for local development.");
  }
  return warnings;
}

void warn_about_access(const config::Config& config) {
  for (const auto& warning : access_warnings(config)) spdlog::warn("{}", warning);
}

std::string ledger_path(const config::Config& config) {
  if (!config.budgets.ledger_path.empty()) return config.budgets.ledger_path;
  return (std::filesystem::path(config.storage.path) / "ledger.sqlite3").string();
}

core::Result<std::unique_ptr<storage::ObjectStore>> open_store(const config::Config& cfg) {
  if (cfg.storage.kind == "s3") {
    auto s3_store = storage::S3Store::open(cfg.storage.s3);
    if (!s3_store) return std::move(s3_store).error();
    spdlog::info("storage: using {}", (*s3_store)->describe());
    return std::unique_ptr<storage::ObjectStore>(std::move(s3_store).value());
  }
  auto store = storage::DiskStore::open(cfg.storage.path);
  if (!store) return std::move(store).error();
  return std::unique_ptr<storage::ObjectStore>(std::move(store).value());
}

core::Result<std::unique_ptr<Runtime>> build_runtime(config::Config config) {
  if (auto status = imaging::initialize(); !status) return std::move(status).error();
  backends::initialize_http_client();

  auto runtime = std::make_unique<Runtime>();
  runtime->config = std::move(config);
  const config::Config& cfg = runtime->config;

  for (const auto& [name, backend_config] : cfg.backends) {
    auto backend = backends::make_backend(backend_config);
    if (!backend) return std::move(backend).error();
    if ((*backend)->is_placeholder()) {
      spdlog::warn("backend {}: PLACEHOLDER backend in use: it draws cards showing the prompt and is NOT AI. "
                   "Configure an AI backend (see docs/configuration.md) for real images.",
                   name);
    }
    runtime->backends.emplace(name, std::move(backend).value());
  }

  auto store = open_store(cfg);
  if (!store) return std::move(store).error();
  runtime->store = std::move(store).value();
  // With S3 storage nothing else creates the local folder the ledger lives in.
  const std::filesystem::path ledger_file = ledger_path(cfg);
  if (ledger_file.has_parent_path()) {
    std::error_code ignored;
    std::filesystem::create_directories(ledger_file.parent_path(), ignored);
  }
  auto ledger = admission::BudgetLedger::open(ledger_file.string(), runtime->clock);
  if (!ledger) return std::move(ledger).error();
  runtime->ledger = std::move(ledger).value();
  if (cfg.redis.url.empty()) {
    runtime->rate_limiter = std::make_unique<admission::InMemoryRateLimiter>(runtime->clock);
  } else {
    auto client = redis::RedisClient::create(cfg.redis);
    if (!client) return std::move(client).error();
    runtime->redis = std::move(client).value();
    if (auto ping = runtime->redis->ping(); !ping) {
      // Not fatal: hits are served while Redis is away, generations wait for it.
      spdlog::warn("redis: not reachable at start-up: {}; new generations are rejected until it is",
                   ping.error().message);
    }
    runtime->rate_limiter = std::make_unique<redis::RedisRateLimiter>(*runtime->redis);
    runtime->spend_counters = std::make_unique<redis::RedisSpendCounters>(*runtime->redis, runtime->clock);
    runtime->ledger->set_shared_counters(runtime->spend_counters.get());
    runtime->lease = std::make_unique<redis::RedisLease>(*runtime->redis);
    spdlog::info("redis: rate limits, spend budgets and generation leases are shared through {}",
                 runtime->redis->endpoint().display());
  }
  runtime->gate = std::make_unique<admission::Gate>(cfg, runtime->clock, *runtime->rate_limiter, *runtime->ledger);

  runtime->hot_cache = std::make_unique<storage::HotCache>(static_cast<std::size_t>(cfg.storage.hot_cache_bytes),
                                                           static_cast<std::size_t>(cfg.storage.hot_cache_max_object_bytes));
  runtime->workers = std::make_unique<core::WorkerPool>(static_cast<std::size_t>(cfg.limits.workers),
                                                        static_cast<std::size_t>(cfg.limits.queue_size));
  runtime->resolver = std::make_unique<generation::Resolver>(runtime->config, runtime->backends);

  generation::ImageServiceOptions options;
  options.generation_timeout = std::chrono::milliseconds(cfg.limits.generation_timeout_ms);
  options.probe_limits.max_bytes = static_cast<std::size_t>(cfg.limits.max_image_bytes);
  options.probe_limits.max_dimension = std::max(cfg.limits.max_dimension, 1);
  options.guard = runtime->gate.get();
  runtime->health = std::make_unique<generation::BackendHealth>(cfg, runtime->clock);
  options.health = runtime->health.get();
  options.refusal_ttl = std::chrono::milliseconds(cfg.limits.refusal_cache_ms);
  options.open_files = static_cast<std::size_t>(cfg.storage.open_files);
  if (runtime->lease) {
    options.lease = runtime->lease.get();
    options.lease_ttl = std::chrono::milliseconds(cfg.redis.lease_ttl_ms);
    options.lease_poll = std::chrono::milliseconds(cfg.redis.lease_poll_ms);
  }
  runtime->images =
      std::make_unique<generation::ImageService>(*runtime->store, *runtime->hot_cache, *runtime->workers, options);
  return runtime;
}

}  // namespace pixelgate::cli
