#include "pool/worker_pool_backend.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "pool/pool_internal.hpp"

namespace pixelgate::pool {

using namespace detail;

std::string_view to_string(InstanceState state) noexcept {
  switch (state) {
    case InstanceState::Starting: return "starting";
    case InstanceState::Ready: return "ready";
    case InstanceState::Stopping: return "stopping";
    case InstanceState::Exited: return "exited";
  }
  return "exited";
}

core::Result<std::unique_ptr<backends::Backend>> make_pool_backend(const config::BackendConfig& config,
                                                                    backends::BackendMaker maker) {
  // The prototype handles validate() and the model queries; it never makes a call.
  auto prototype = maker(instance_config(config, 0));
  if (!prototype) return std::move(prototype).error();
  return std::unique_ptr<backends::Backend>(
      std::make_unique<PoolBackend>(config, maker, std::move(prototype).value()));
}

PoolBackend::PoolBackend(const config::BackendConfig& config, backends::BackendMaker maker,
                         std::unique_ptr<backends::Backend> prototype)
    : config_(config), pool_(*config.pool), maker_(maker), prototype_(std::move(prototype)) {
  spdlog::info("pool {}: type {}, {} to {} instances, {} generation(s) per instance, idle timeout {} ms, command: {}",
               config_.name, config_.type, pool_.min_instances, pool_.max_instances, pool_.instance_concurrency,
               pool_.idle_timeout_ms, join_arguments(pool_.command));
  manager_ = std::thread([this] { run_manager(); });
}

PoolBackend::~PoolBackend() {
  {
    std::lock_guard lock(mutex_);
    closing_ = true;
    wake_manager();
  }
  slot_freed_.notify_all();
  if (manager_.joinable()) manager_.join();
}

// ---------------------------------------------------------------------------
// Requests.
// ---------------------------------------------------------------------------

core::Result<backends::GeneratedImage> PoolBackend::generate(const core::GenerationSpec& spec,
                                                             const backends::GenerateContext& context) {
  // A request whose instance dies under it moves to another instance once.
  constexpr int kMaxAttempts = 2;
  for (int attempt = 1;; ++attempt) {
    auto lease = acquire(context);
    if (!lease) return std::move(lease).error();
    Instance& instance = *lease->instance;
    auto result = instance.adapter->generate(spec, context);
    std::optional<ExitStatus> exit = instance.process->poll();
    // The kernel closes a dying server's sockets before the process can be
    // reaped, so a refused or reset connection may come just before the exit.
    const bool transport_failure = !result && (result.error().code == core::ErrorCode::Unavailable ||
                                               result.error().code == core::ErrorCode::BadGateway);
    for (int i = 0; transport_failure && !exit && i < kExitWaitSteps; ++i) {
      std::this_thread::sleep_for(kExitWaitStep);
      exit = instance.process->poll();
    }
    const std::string instance_name = describe(instance);
    if (!result && exit) {
      // Marked before the slot is released, so that the retry below cannot
      // pick the dead instance again before the manager notices the exit.
      std::lock_guard lock(mutex_);
      ++failovers_;
      if (instance.state != InstanceState::Exited) handle_exit(instance, *exit, Clock::now());
    }
    release(instance);
    if (result || !exit) return result;

    const bool retry = attempt < kMaxAttempts && Clock::now() < context.deadline;
    spdlog::warn("pool {}: request {}: {} exited during the generation ({}; the adapter's error: {}); {}",
                 config_.name, context.request_id, instance_name, exit->describe(), result.error().message,
                 retry ? "trying another instance" : "giving up");
    if (!retry) {
      return core::Error::unavailable("an instance of backend " + config_.name + " exited during the generation (" +
                                          exit->describe() + "); retry later",
                                      retry_after_seconds(expected_cold_start()));
    }
  }
}

core::Result<PoolBackend::Lease> PoolBackend::acquire(const backends::GenerateContext& context) {
  std::unique_lock lock(mutex_);
  if (closing_) return core::Error::unavailable("backend " + config_.name + " is shutting down; retry later", 5);
  if (Instance* free = find_free_instance()) {
    ++free->active;
    return Lease{free};
  }
  if (waiters_ >= pool_.queue_size) {
    spdlog::warn("pool {}: request {} rejected: {} requests already wait for an instance (queue_size)", config_.name,
                 context.request_id, waiters_);
    return core::Error::unavailable("backend " + config_.name + " is busy and " + std::to_string(waiters_) +
                                        " generations already wait for it; retry later",
                                    kQueueFullRetryAfterSeconds);
  }

  const auto wait_started = Clock::now();
  ++waiters_;
  if (!demand_since_) demand_since_ = wait_started;
  wake_manager();
  struct WaiterCount {
    int& waiters;
    ~WaiterCount() { --waiters; }
  } counted{waiters_};

  while (true) {
    if (closing_) return core::Error::unavailable("backend " + config_.name + " is shutting down; retry later", 5);
    if (Instance* free = find_free_instance()) {
      ++free->active;
      return Lease{free};
    }

    const auto now = Clock::now();
    auto wake_at = context.deadline;
    if (context.cold_start_budget && !has_ready_instance()) {
      const milliseconds remaining = expected_remaining_start(now);
      const auto budget_left = *context.cold_start_budget - (now - wait_started);
      if (remaining > budget_left) {
        ++cold_start_rejections_;
        warm_requested_ = true;
        wake_manager();
        spdlog::info("pool {}: request {}: no instance is ready and the expected start ({} ms) exceeds the "
                     "cold-start budget ({} ms); answering cold_start while an instance starts",
                     config_.name, context.request_id, remaining.count(), context.cold_start_budget->count());
        return core::Error{core::ErrorCode::ColdStart,
                           "backend " + config_.name + " is starting an instance (expected in about " +
                               std::to_string(retry_after_seconds(remaining)) + " s); retry later",
                           {}, retry_after_seconds(remaining)};
      }
      wake_at = std::min(wake_at, wait_started + *context.cold_start_budget + milliseconds(1));
    }
    if (now >= context.deadline) {
      if (!has_ready_instance()) {
        const milliseconds remaining = expected_remaining_start(now);
        spdlog::warn("pool {}: request {}: no instance became ready before the generation deadline", config_.name,
                     context.request_id);
        return core::Error{core::ErrorCode::ColdStart,
                           "no instance of backend " + config_.name +
                               " became ready before the generation deadline; one is starting, retry later",
                           {}, retry_after_seconds(remaining)};
      }
      spdlog::warn("pool {}: request {}: every instance stayed busy until the generation deadline", config_.name,
                   context.request_id);
      return core::Error::unavailable("every instance of backend " + config_.name +
                                          " stayed busy until the deadline; retry later",
                                      kBusyRetryAfterSeconds);
    }
    slot_freed_.wait_until(lock, wake_at);
  }
}

void PoolBackend::release(Instance& instance) {
  {
    std::lock_guard lock(mutex_);
    --instance.active;
    instance.last_used = Clock::now();
    wake_manager();
  }
  slot_freed_.notify_all();
}

PoolBackend::Instance* PoolBackend::find_free_instance() {
  // The busiest instance with a free slot, then the oldest: new work packs
  // onto few instances, so the others can reach their idle timeout.
  Instance* best = nullptr;
  for (auto& instance : instances_) {
    if (instance->state != InstanceState::Ready || instance->active >= pool_.instance_concurrency) continue;
    if (!best || instance->active > best->active) best = instance.get();
  }
  return best;
}

bool PoolBackend::has_ready_instance() const {
  return std::any_of(instances_.begin(), instances_.end(),
                     [](const auto& instance) { return instance->state == InstanceState::Ready; });
}

milliseconds PoolBackend::expected_cold_start() const {
  if (cold_starts_.count() > 0) return milliseconds(cold_starts_.average_ms());
  return milliseconds(pool_.expected_start_ms > 0 ? pool_.expected_start_ms : pool_.start_timeout_ms);
}

milliseconds PoolBackend::expected_remaining_start(Clock::time_point now) const {
  const milliseconds expected = expected_cold_start();
  std::optional<milliseconds> best;
  for (const auto& instance : instances_) {
    if (instance->state != InstanceState::Starting) continue;
    const auto left = remaining_start(expected, std::chrono::duration_cast<milliseconds>(now - instance->spawned_at),
                                      std::chrono::duration_cast<milliseconds>(instance->start_deadline - now),
                                      kLateStartEstimate);
    if (!best || left < *best) best = left;
  }
  if (best) return *best;
  for (const auto& restart_at : restarts_) {
    const auto left = std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(restart_at - now)) + expected;
    if (!best || left < *best) best = left;
  }
  return best.value_or(expected);
}


// ---------------------------------------------------------------------------
// Status.
// ---------------------------------------------------------------------------

nlohmann::json PoolBackend::status() const {
  std::lock_guard lock(mutex_);
  const auto now = Clock::now();
  nlohmann::json counts = {{"starting", 0}, {"ready", 0}, {"busy", 0}, {"stopping", 0}};
  nlohmann::json list = nlohmann::json::array();
  for (const auto& instance : instances_) {
    if (instance->state == InstanceState::Exited) continue;
    std::string state(to_string(instance->state));
    if (instance->state == InstanceState::Ready && instance->active > 0) state = "busy";
    counts[state] = counts[state].get<int>() + 1;
    nlohmann::json entry = {{"id", instance->id},
                            {"pid", instance->process->pid()},
                            {"port", instance->port},
                            {"state", state},
                            {"active", instance->active},
                            {"age_ms", to_ms(now - instance->spawned_at)}};
    if (instance->state == InstanceState::Ready) entry["idle_ms"] = instance->active > 0 ? 0 : to_ms(now - instance->last_used);
    list.push_back(std::move(entry));
  }
  return {{"type", config_.type},
          {"min_instances", pool_.min_instances},
          {"effective_min_instances", effective_min_instances()},
          {"max_instances", pool_.max_instances},
          {"instance_concurrency", pool_.instance_concurrency},
          {"instances", counts},
          {"instance_list", list},
          {"scheduled_restarts", restarts_.size()},
          {"queue_length", waiters_},
          {"queue_size", pool_.queue_size},
          {"cold_starts",
           {{"count", cold_starts_.count()},
            {"last_ms", cold_starts_.last_ms()},
            {"average_ms", cold_starts_.average_ms()},
            {"max_ms", cold_starts_.max_ms()}}},
          {"expected_cold_start_ms", expected_cold_start().count()},
          {"failed_starts", failed_starts_},
          {"restarts", restart_count_},
          {"crashes", crashes_},
          {"idle_stops", idle_stops_},
          {"cold_start_rejections", cold_start_rejections_},
          {"failovers", failovers_},
          {"consecutive_failures", consecutive_failures_},
          {"peak_instances", peak_instances_}};
}


}  // namespace pixelgate::pool
