#include "cli/jobs_runtime.hpp"

#include <filesystem>

#include <spdlog/spdlog.h>

#include "api/jobs_route.hpp"

namespace pixelgate::cli {

JobsRuntime::~JobsRuntime() {
  if (runner) runner->stop();
  if (webhooks) webhooks->stop();
}

std::string jobs_db_path(const config::Config& config) {
  if (!config.jobs.db_path.empty()) return config.jobs.db_path;
  return (std::filesystem::path(config.storage.path) / "jobs.sqlite3").string();
}

core::Result<std::unique_ptr<JobsRuntime>> start_jobs(Runtime& runtime) {
  const config::Config& cfg = runtime.config;
  if (!cfg.jobs.enabled) {
    spdlog::info("jobs: disabled ([jobs] enabled = false); /v1/jobs returns 404 and Prefer: wait is ignored");
    return std::unique_ptr<JobsRuntime>{};
  }
  const std::filesystem::path path = jobs_db_path(cfg);
  if (path.has_parent_path()) {
    std::error_code ignored;
    std::filesystem::create_directories(path.parent_path(), ignored);
  }
  auto jobs = std::make_unique<JobsRuntime>();
  auto store = jobs::JobStore::open(path.string(), runtime.clock);
  if (!store) return std::move(store).error();
  jobs->store = std::move(store).value();
  jobs->webhooks = std::make_unique<jobs::WebhookSender>(cfg.webhooks, *jobs->store);
  jobs->runner = std::make_unique<jobs::JobRunner>(cfg.jobs, *jobs->store, *runtime.images, jobs->webhooks.get(),
                                                   api::make_job_resolver(cfg, *runtime.resolver, *runtime.gate));
  // The sender first: it takes over the webhooks a stopped process left
  // pending before the runner finishes new jobs.
  jobs->webhooks->start();
  if (auto started = jobs->runner->start(); !started) return std::move(started).error();
  spdlog::info("jobs: using {} (at most {} running, {} queued); webhooks {}", path.string(), cfg.jobs.max_running,
               cfg.jobs.max_queued,
               cfg.webhooks.secret.empty() ? "off (no [webhooks] secret_env)"
                                           : (cfg.webhooks.allow_private_addresses ? "on, private addresses allowed"
                                                                                   : "on"));
  return jobs;
}

}  // namespace pixelgate::cli
