// The job store, runner and webhook sender of `pixelgate serve`.
#pragma once

#include <memory>
#include <string>

#include "cli/runtime.hpp"
#include "jobs/job_runner.hpp"
#include "jobs/job_store.hpp"
#include "jobs/webhook_sender.hpp"

namespace pixelgate::cli {

// Ownership: members are declared in the order they depend on each other;
// the destructor stops the runner and the sender before the store closes.
struct JobsRuntime {
  std::unique_ptr<jobs::JobStore> store;
  std::unique_ptr<jobs::WebhookSender> webhooks;
  std::unique_ptr<jobs::JobRunner> runner;

  ~JobsRuntime();
};

// Returns jobs.db_path, or jobs.sqlite3 in the storage folder.
std::string jobs_db_path(const config::Config& config);

// Opens the job database, resends pending webhooks and starts the queued
// jobs. Returns null when [jobs] enabled is false.
core::Result<std::unique_ptr<JobsRuntime>> start_jobs(Runtime& runtime);

}  // namespace pixelgate::cli
