#include "cli/runtime.hpp"

#include <filesystem>

#include <spdlog/spdlog.h>

#include "backends/http_client.hpp"
#include "imaging/image.hpp"
#include "storage/disk_store.hpp"

namespace pixelgate::cli {

Runtime::~Runtime() {
  // Workers go first: their tasks use the service, store and backends.
  if (workers) workers->stop();
}

core::Result<config::Config> load_config(const std::string& path) {
  return config::load_file(path, config::process_environment());
}

void warn_about_access(const config::Config& config) {
  const auto& security = config.security;
  if (security.mode == "open") {
    spdlog::warn("security: mode \"open\": anyone who reaches this server can generate images at your cost. "
                 "Use it for local development only; set [security] mode = \"signed\" for anything public.");
  } else if (security.signing_keys.empty() && config.api_keys.empty() &&
             (security.mode == "signed" || security.public_templates.empty())) {
    spdlog::warn("security: mode \"{}\" with no [security.signing_keys] and no [api_keys]: every image request "
                 "will be rejected with 403. Add a signing key (docs/signing.md) or set mode = \"open\" for local "
                 "development.",
                 security.mode);
  }
}

std::string ledger_path(const config::Config& config) {
  if (!config.budgets.ledger_path.empty()) return config.budgets.ledger_path;
  return (std::filesystem::path(config.storage.path) / "ledger.sqlite3").string();
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

  auto store = storage::DiskStore::open(cfg.storage.path);
  if (!store) return std::move(store).error();
  runtime->store = std::move(store).value();
  auto ledger = admission::BudgetLedger::open(ledger_path(cfg), runtime->clock);
  if (!ledger) return std::move(ledger).error();
  runtime->ledger = std::move(ledger).value();
  runtime->rate_limiter = std::make_unique<admission::InMemoryRateLimiter>(runtime->clock);
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
  runtime->images =
      std::make_unique<generation::ImageService>(*runtime->store, *runtime->hot_cache, *runtime->workers, options);
  return runtime;
}

}  // namespace pixelgate::cli
