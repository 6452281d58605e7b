// A Backend that starts, routes to and stops its own self-hosted model
// servers ([backends.NAME.pool]). Each instance is a child process listening
// on http://127.0.0.1:{port} with an adapter of the configured type (a1111,
// sdcpp or comfyui) in front of it. docs/pools.md describes the lifecycle.
#pragma once

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "backends/backend.hpp"
#include "backends/registry.hpp"
#include "config/config.hpp"
#include "pool/pool_policy.hpp"
#include "pool/process.hpp"

namespace pixelgate::pool {

// Ready instances with at least one generation running are reported as
// "busy"; Exited ones wait to be removed.
enum class InstanceState { Starting, Ready, Stopping, Exited };
std::string_view to_string(InstanceState state) noexcept;

// Thread-safety: generate() and validate() run concurrently on worker
// threads. A manager thread owned by the pool starts and stops processes; a
// prober thread per starting instance checks readiness.
class PoolBackend final : public backends::Backend {
 public:
  // `config.pool` must be set. `maker` builds the adapter for each instance.
  PoolBackend(const config::BackendConfig& config, backends::BackendMaker maker,
              std::unique_ptr<backends::Backend> prototype);
  // Stops every instance (SIGTERM, then SIGKILL after stop_grace_ms) and
  // waits for the processes. Callers must have stopped calling generate();
  // a call still running is given a few seconds to return once its process
  // is gone.
  ~PoolBackend() override;
  PoolBackend(const PoolBackend&) = delete;
  PoolBackend& operator=(const PoolBackend&) = delete;

  const std::string& name() const override { return config_.name; }
  std::string_view type() const override { return prototype_->type(); }
  int adapter_version() const override { return prototype_->adapter_version(); }
  const std::string& default_model() const override { return prototype_->default_model(); }
  bool honours_seed() const override { return prototype_->honours_seed(); }
  bool supports_negative_prompt() const override { return prototype_->supports_negative_prompt(); }
  std::optional<double> list_price(const core::GenerationSpec& spec) const override {
    return prototype_->list_price(spec);
  }
  core::Status validate(const core::GenerationSpec& spec) const override { return prototype_->validate(spec); }

  // Runs the generation on an instance with a free slot, starting one when
  // needed. Errors: ColdStart when no instance is ready and the start would
  // take longer than context.cold_start_budget (an instance starts anyway);
  // Unavailable when the wait queue is full or the pool is shutting down.
  core::Result<backends::GeneratedImage> generate(const core::GenerationSpec& spec,
                                                  const backends::GenerateContext& context) override;

  // Returns the pool's instances, counters and cold-start figures as JSON.
  nlohmann::json status() const;

 private:
  using Clock = std::chrono::steady_clock;

  struct Instance {
    int id = 0;
    int port = 0;
    InstanceState state = InstanceState::Starting;
    std::unique_ptr<ChildProcess> process;
    std::unique_ptr<backends::Backend> adapter;
    int active = 0;  // generations running on it now
    Clock::time_point requested_at;  // when the demand that started it arrived
    Clock::time_point spawned_at;
    Clock::time_point ready_at;
    Clock::time_point last_used;
    Clock::time_point start_deadline;
    Clock::time_point stop_deadline;
    bool start_failed = false;  // counted as a failed start already
    bool kill_sent = false;     // SIGKILL sent after stop_grace_ms
    std::optional<ExitStatus> exit;
    std::thread prober;
    bool probe_finished = false;  // guarded by the pool's mutex
    bool cancel_probe = false;    // guarded by the pool's mutex
  };

  // A slot taken on one instance; release() gives it back.
  struct Lease {
    Instance* instance = nullptr;
  };

  core::Result<Lease> acquire(const backends::GenerateContext& context);
  void release(Instance& instance);

  // Manager thread.
  void run_manager();
  void tick(std::vector<std::unique_ptr<Instance>>& removed);
  void reap_exits(Clock::time_point now);
  void enforce_deadlines(Clock::time_point now);
  void end_crash_loop(Clock::time_point now);
  void stop_idle_instances(Clock::time_point now);
  void run_due_restarts(Clock::time_point now);
  void start_for_min_and_demand(Clock::time_point now);
  void collect_exited(std::vector<std::unique_ptr<Instance>>& removed);
  int live_count() const;   // starting and ready instances
  int total_count() const;  // instances with a process, plus scheduled restarts
  void handle_exit(Instance& instance, const ExitStatus& exit, Clock::time_point now);
  void start_instance(Clock::time_point requested_at, bool restart);
  void schedule_restart(const std::string& reason, Clock::time_point now);
  void stop_instance(Instance& instance, const std::string& reason, Clock::time_point now);
  void stop_all_for_shutdown(std::unique_lock<std::mutex>& lock);
  bool warm_window_open() const;
  int effective_min_instances() const;
  int demand() const;
  void wake_manager();
  std::string counts_summary() const;
  void log_counts_if_changed();

  // Prober thread of one instance.
  void probe_until_ready(Instance* instance);
  bool probe_once(const Instance& instance, Clock::time_point deadline, std::string& last_error);

  core::Result<int> allocate_port() const;
  std::chrono::milliseconds expected_cold_start() const;
  std::chrono::milliseconds expected_remaining_start(Clock::time_point now) const;
  bool has_ready_instance() const;
  Instance* find_free_instance();
  std::string describe(const Instance& instance) const;

  const config::BackendConfig config_;
  const config::PoolConfig pool_;
  const backends::BackendMaker maker_;
  const std::unique_ptr<backends::Backend> prototype_;  // handles validate() and the other queries

  mutable std::mutex mutex_;
  std::condition_variable slot_freed_;    // waiters: an instance became free or ready, or the pool closes
  std::condition_variable manager_wake_;  // the manager: demand changed or a process needs attention
  std::vector<std::unique_ptr<Instance>> instances_;
  std::vector<Clock::time_point> restarts_;  // scheduled restarts, each holding one instance slot
  int next_instance_id_ = 1;
  int waiters_ = 0;
  bool warm_requested_ = false;  // a request found no instance and left (cold-start policy)
  std::optional<Clock::time_point> demand_since_;  // oldest demand not yet given an instance
  int consecutive_failures_ = 0;
  bool closing_ = false;
  bool wake_pending_ = false;  // set with manager_wake_, so no wake-up is lost

  ColdStartStats cold_starts_;
  long failed_starts_ = 0;
  long restart_count_ = 0;
  long crashes_ = 0;
  long idle_stops_ = 0;
  long cold_start_rejections_ = 0;
  long failovers_ = 0;
  int peak_instances_ = 0;
  std::string last_counts_;

  std::thread manager_;
};

// Builds a PoolBackend for a backend with [pool]; the factory calls it.
core::Result<std::unique_ptr<backends::Backend>> make_pool_backend(const config::BackendConfig& config,
                                                                    backends::BackendMaker maker);

}  // namespace pixelgate::pool
