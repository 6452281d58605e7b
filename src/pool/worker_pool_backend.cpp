#include "pool/worker_pool_backend.hpp"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "backends/http_client.hpp"
#include "core/hash.hpp"

namespace pixelgate::pool {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How often the manager looks at its processes when nothing wakes it.
constexpr milliseconds kManagerTick{100};
// Bounds of one readiness probe. A server that is still loading refuses the
// connection at once, so only a hung server reaches them.
constexpr int kProbeConnectTimeoutMs = 1'000;
constexpr int kProbeTimeoutMs = 2'000;
// Expected time left for a start that already took longer than the average.
constexpr milliseconds kLateStartEstimate{1'000};
// How long the prober sleeps between checks of its cancel flag.
constexpr milliseconds kProbeSleepSlice{20};
// After a connection failure, how long to look for the instance's exit.
constexpr milliseconds kExitWaitStep{10};
constexpr int kExitWaitSteps = 20;
// How long shutdown waits for calls to return once their instances are gone.
constexpr milliseconds kShutdownReturnWait{5'000};
constexpr int kQueueFullRetryAfterSeconds = 2;
constexpr int kBusyRetryAfterSeconds = 5;

long to_ms(Clock::duration duration) {
  return static_cast<long>(std::chrono::duration_cast<milliseconds>(duration).count());
}

int retry_after_seconds(milliseconds delay) {
  return std::max(1, static_cast<int>((delay.count() + 999) / 1000));
}

// The adapter's configuration for one instance: the pool's backend settings
// with the instance's own address.
config::BackendConfig instance_config(const config::BackendConfig& config, int port) {
  config::BackendConfig copy = config;
  copy.pool.reset();
  copy.base_url = "http://127.0.0.1:" + std::to_string(port);
  return copy;
}

std::string join_arguments(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& argument : argv) out += (out.empty() ? "" : " ") + argument;
  return out;
}

bool can_bind(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  // Servers set SO_REUSEADDR, so a port with connections in TIME_WAIT is
  // free for them too.
  const int yes = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  const bool bound = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  ::close(fd);
  return bound;
}

}  // namespace

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
    release(instance);
    if (result || !exit) return result;

    {
      std::lock_guard lock(mutex_);
      ++failovers_;
    }
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
// The manager thread: it forks every child, so the children's parent-death
// signal fires only when this thread ends, after it has stopped them.
// ---------------------------------------------------------------------------

void PoolBackend::wake_manager() {
  wake_pending_ = true;
  manager_wake_.notify_one();
}

void PoolBackend::run_manager() {
  std::unique_lock lock(mutex_);
  while (!closing_) {
    std::vector<std::unique_ptr<Instance>> removed;
    try {
      tick(removed);
    } catch (const std::exception& error) {
      spdlog::error("pool {}: managing the instances failed: {}", config_.name, error.what());
    }
    if (!removed.empty()) {
      lock.unlock();
      for (auto& instance : removed) {
        if (instance->prober.joinable()) instance->prober.join();
      }
      removed.clear();
      lock.lock();
    }
    manager_wake_.wait_for(lock, kManagerTick, [this] { return closing_ || wake_pending_; });
    wake_pending_ = false;
  }
  try {
    stop_all_for_shutdown(lock);
  } catch (const std::exception& error) {
    spdlog::error("pool {}: stopping the instances failed: {}", config_.name, error.what());
  }
}

void PoolBackend::tick(std::vector<std::unique_ptr<Instance>>& removed) {
  const auto now = Clock::now();

  for (auto& instance : instances_) {
    if (instance->state == InstanceState::Exited) continue;
    if (auto exit = instance->process->poll()) handle_exit(*instance, *exit, now);
  }

  for (auto& instance : instances_) {
    if (instance->state == InstanceState::Starting && now >= instance->start_deadline) {
      spdlog::error("pool {}: {} did not become ready within start_timeout_ms ({} ms); killing its process group",
                    config_.name, describe(*instance), pool_.start_timeout_ms);
      instance->start_failed = true;
      ++failed_starts_;
      ++consecutive_failures_;
      instance->state = InstanceState::Stopping;
      instance->cancel_probe = true;
      instance->stop_deadline = now;
      instance->kill_sent = true;
      instance->process->signal_group(SIGKILL);
      schedule_restart(describe(*instance) + " missed its start deadline", now);
    } else if (instance->state == InstanceState::Stopping && !instance->kill_sent && now >= instance->stop_deadline) {
      spdlog::warn("pool {}: {} is still running {} ms after SIGTERM; sending SIGKILL to its process group",
                   config_.name, describe(*instance), pool_.stop_grace_ms);
      instance->kill_sent = true;
      instance->process->signal_group(SIGKILL);
    }
  }

  // A crash loop doubles the restart delay; an instance that stays up for
  // the longest delay ends the loop.
  if (consecutive_failures_ > 0) {
    for (const auto& instance : instances_) {
      if (instance->state == InstanceState::Ready && now - instance->ready_at >= milliseconds(pool_.restart_backoff_max_ms)) {
        spdlog::info("pool {}: {} has been ready for {} ms; restart delays start again at {} ms", config_.name,
                     describe(*instance), to_ms(now - instance->ready_at), pool_.restart_backoff_ms);
        consecutive_failures_ = 0;
        break;
      }
    }
  }

  const int min_instances = effective_min_instances();
  auto live_count = [this] {
    return static_cast<int>(std::count_if(instances_.begin(), instances_.end(), [](const auto& instance) {
      return instance->state == InstanceState::Starting || instance->state == InstanceState::Ready;
    }));
  };
  int live = live_count();
  for (auto& instance : instances_) {
    if (instance->state != InstanceState::Ready || instance->active > 0 || waiters_ > 0) continue;
    const auto idle = now - instance->last_used;
    if (idle >= milliseconds(pool_.idle_timeout_ms) && live > min_instances) {
      ++idle_stops_;
      --live;
      stop_instance(*instance, "idle for " + std::to_string(to_ms(idle)) + " ms", now);
    }
  }

  // Restarts whose delay has passed, when anything still needs them.
  std::vector<Clock::time_point> due;
  for (auto it = restarts_.begin(); it != restarts_.end();) {
    if (*it <= now) {
      due.push_back(*it);
      it = restarts_.erase(it);
    } else {
      ++it;
    }
  }
  for (std::size_t i = 0; i < due.size(); ++i) {
    if (demand() > 0 || live_count() + static_cast<int>(restarts_.size()) < min_instances) {
      start_instance(demand_since_.value_or(now), true);
    } else {
      spdlog::info("pool {}: restart not needed any more: no request waits and min_instances ({}) is met",
                   config_.name, min_instances);
    }
  }

  auto total_count = [this] {
    return static_cast<int>(std::count_if(instances_.begin(), instances_.end(),
                                          [](const auto& instance) { return instance->state != InstanceState::Exited; })) +
           static_cast<int>(restarts_.size());
  };
  while (!closing_ && live_count() + static_cast<int>(restarts_.size()) < min_instances &&
         total_count() < pool_.max_instances) {
    const int before = total_count();
    start_instance(now, false);
    if (total_count() <= before) break;
  }

  const int starts = instances_to_start(demand(), pool_.instance_concurrency, live_count(), total_count(),
                                        pool_.max_instances);
  for (int i = 0; i < starts && !closing_; ++i) start_instance(demand_since_.value_or(now), false);
  warm_requested_ = false;
  if (waiters_ == 0) demand_since_.reset();

  for (auto it = instances_.begin(); it != instances_.end();) {
    Instance& instance = **it;
    if (instance.state == InstanceState::Exited && instance.active == 0 && instance.probe_finished) {
      removed.push_back(std::move(*it));
      it = instances_.erase(it);
    } else {
      ++it;
    }
  }
  log_counts_if_changed();
}

void PoolBackend::handle_exit(Instance& instance, const ExitStatus& exit, Clock::time_point now) {
  const InstanceState previous = instance.state;
  instance.exit = exit;
  instance.state = InstanceState::Exited;
  instance.cancel_probe = true;
  switch (previous) {
    case InstanceState::Stopping:
      if (instance.start_failed) {
        spdlog::warn("pool {}: {} was killed after missing its start deadline ({})", config_.name, describe(instance),
                     exit.describe());
      } else {
        spdlog::info("pool {}: {} stopped ({})", config_.name, describe(instance), exit.describe());
      }
      break;
    case InstanceState::Starting:
      ++failed_starts_;
      ++consecutive_failures_;
      spdlog::error("pool {}: {} exited before it became ready ({}); check its command and its output above",
                    config_.name, describe(instance), exit.describe());
      schedule_restart(describe(instance) + " exited before it became ready", now);
      break;
    case InstanceState::Ready:
      ++crashes_;
      ++consecutive_failures_;
      spdlog::error("pool {}: {} exited unexpectedly ({}) with {} generation(s) running", config_.name,
                    describe(instance), exit.describe(), instance.active);
      schedule_restart(describe(instance) + " crashed", now);
      break;
    case InstanceState::Exited:
      break;
  }
  slot_freed_.notify_all();
}

void PoolBackend::schedule_restart(const std::string& reason, Clock::time_point now) {
  if (closing_) return;
  const milliseconds delay = restart_delay(pool_.restart_backoff_ms, pool_.restart_backoff_max_ms, consecutive_failures_);
  restarts_.push_back(now + delay);
  spdlog::warn("pool {}: {}; restarting in {} ms if still needed ({} consecutive failure(s))", config_.name, reason,
               delay.count(), consecutive_failures_);
}

void PoolBackend::start_instance(Clock::time_point requested_at, bool restart) {
  const auto now = Clock::now();
  auto port = allocate_port();
  if (!port) {
    spdlog::error("pool {}: cannot start an instance: {}", config_.name, port.error().message);
    ++failed_starts_;
    ++consecutive_failures_;
    schedule_restart("no port for a new instance", now);
    return;
  }

  auto instance = std::make_unique<Instance>();
  instance->id = next_instance_id_++;
  instance->port = *port;

  auto adapter = maker_(instance_config(config_, instance->port));
  if (!adapter) {
    spdlog::error("pool {}: cannot build the adapter for instance {}: {}", config_.name, instance->id,
                  adapter.error().message);
    ++failed_starts_;
    ++consecutive_failures_;
    schedule_restart("instance " + std::to_string(instance->id) + " could not be set up", now);
    return;
  }
  instance->adapter = std::move(adapter).value();

  SpawnOptions options;
  for (const auto& argument : pool_.command) {
    options.argv.push_back(expand_placeholders(argument, instance->port, config_.model));
  }
  for (const auto& [name, value] : pool_.env) {
    options.environment[name] = expand_placeholders(value, instance->port, config_.model);
  }
  options.output_file = pool_.log_file;
  options.log_prefix = "pool " + config_.name + " instance " + std::to_string(instance->id);

  auto process = ChildProcess::spawn(options);
  if (!process) {
    spdlog::error("pool {}: starting instance {} failed: {}", config_.name, instance->id, process.error().message);
    ++failed_starts_;
    ++consecutive_failures_;
    schedule_restart("instance " + std::to_string(instance->id) + " could not be started", now);
    return;
  }
  instance->process = std::move(process).value();
  instance->state = InstanceState::Starting;
  instance->requested_at = std::min(requested_at, now);
  instance->spawned_at = now;
  instance->last_used = now;
  instance->start_deadline = now + milliseconds(pool_.start_timeout_ms);
  if (restart) ++restart_count_;
  if (demand_since_ && *demand_since_ <= requested_at) demand_since_.reset();

  spdlog::info("pool {}: starting {}{}: {}", config_.name, describe(*instance), restart ? " as a restart" : "",
               join_arguments(options.argv));
  Instance* raw = instance.get();
  instances_.push_back(std::move(instance));
  const int alive = static_cast<int>(std::count_if(instances_.begin(), instances_.end(), [](const auto& each) {
    return each->state != InstanceState::Exited;
  }));
  peak_instances_ = std::max(peak_instances_, alive);
  raw->prober = std::thread([this, raw] { probe_until_ready(raw); });
}

void PoolBackend::stop_instance(Instance& instance, const std::string& reason, Clock::time_point now) {
  instance.state = InstanceState::Stopping;
  instance.cancel_probe = true;
  instance.stop_deadline = now + milliseconds(pool_.stop_grace_ms);
  const int signal_number = pool_.stop_grace_ms > 0 ? SIGTERM : SIGKILL;
  instance.kill_sent = signal_number == SIGKILL;
  spdlog::info("pool {}: stopping {} ({}): {} to its process group{}", config_.name, describe(instance), reason,
               signal_number == SIGTERM ? "SIGTERM" : "SIGKILL",
               signal_number == SIGTERM ? ", SIGKILL after " + std::to_string(pool_.stop_grace_ms) + " ms" : "");
  if (!instance.process->signal_group(signal_number)) {
    spdlog::warn("pool {}: {} had already exited", config_.name, describe(instance));
  }
}

void PoolBackend::stop_all_for_shutdown(std::unique_lock<std::mutex>& lock) {
  slot_freed_.notify_all();
  // Generations still running may finish within the grace period.
  const auto drain_deadline = Clock::now() + milliseconds(pool_.stop_grace_ms);
  auto busy = [this] {
    return std::any_of(instances_.begin(), instances_.end(), [](const auto& instance) { return instance->active > 0; });
  };
  while (busy() && Clock::now() < drain_deadline) slot_freed_.wait_until(lock, drain_deadline);

  restarts_.clear();
  const auto now = Clock::now();
  int stopping = 0;
  for (auto& instance : instances_) {
    if (instance->state == InstanceState::Exited) continue;
    if (auto exit = instance->process->poll()) {
      handle_exit(*instance, *exit, now);
      continue;
    }
    ++stopping;
    if (instance->state != InstanceState::Stopping) stop_instance(*instance, "pixelgate is shutting down", now);
  }
  if (stopping > 0) spdlog::info("pool {}: waiting for {} instance(s) to stop", config_.name, stopping);

  const auto kill_deadline = Clock::now() + milliseconds(pool_.stop_grace_ms);
  while (true) {
    bool running = false;
    for (auto& instance : instances_) {
      if (instance->state == InstanceState::Exited) continue;
      if (auto exit = instance->process->poll()) {
        handle_exit(*instance, *exit, Clock::now());
      } else {
        running = true;
      }
    }
    if (!running) break;
    if (Clock::now() >= kill_deadline) {
      for (auto& instance : instances_) {
        if (instance->state == InstanceState::Exited) continue;
        if (!instance->kill_sent) {
          spdlog::warn("pool {}: {} did not stop within stop_grace_ms ({} ms); sending SIGKILL", config_.name,
                       describe(*instance), pool_.stop_grace_ms);
        }
        handle_exit(*instance, instance->process->kill_and_wait(), Clock::now());
      }
      break;
    }
    lock.unlock();
    std::this_thread::sleep_for(milliseconds(20));
    lock.lock();
  }

  // With the processes gone, calls still running fail fast. An instance
  // whose call has not returned by then is leaked rather than freed under it.
  const auto return_deadline = Clock::now() + kShutdownReturnWait;
  while (busy() && Clock::now() < return_deadline) slot_freed_.wait_until(lock, return_deadline);
  std::vector<bool> leaked;
  for (const auto& instance : instances_) {
    leaked.push_back(instance->active > 0);
    if (instance->active == 0) continue;
    spdlog::error("pool {}: {} still has {} generation(s) running at shutdown; leaving it allocated", config_.name,
                  describe(*instance), instance->active);
  }

  std::vector<std::unique_ptr<Instance>> instances = std::move(instances_);
  instances_.clear();
  lock.unlock();
  for (std::size_t i = 0; i < instances.size(); ++i) {
    if (instances[i]->prober.joinable()) instances[i]->prober.join();
    if (leaked[i]) static_cast<void>(instances[i].release());
  }
  instances.clear();
  lock.lock();
  spdlog::info("pool {}: every instance has stopped", config_.name);
}

bool PoolBackend::warm_window_open() const {
  return in_warm_window(pool_.warm_start_minute, pool_.warm_end_minute,
                        utc_minute_of_day(std::chrono::system_clock::now()));
}

int PoolBackend::effective_min_instances() const { return warm_window_open() ? pool_.min_instances : 0; }

int PoolBackend::demand() const {
  int active = 0;
  for (const auto& instance : instances_) {
    if (instance->state != InstanceState::Exited) active += instance->active;
  }
  return std::max(active + waiters_, warm_requested_ ? 1 : 0);
}

std::string PoolBackend::counts_summary() const {
  int starting = 0;
  int ready = 0;
  int busy = 0;
  int stopping = 0;
  for (const auto& instance : instances_) {
    switch (instance->state) {
      case InstanceState::Starting: ++starting; break;
      case InstanceState::Ready: ++(instance->active > 0 ? busy : ready); break;
      case InstanceState::Stopping: ++stopping; break;
      case InstanceState::Exited: break;
    }
  }
  return "starting " + std::to_string(starting) + ", ready " + std::to_string(ready) + ", busy " +
         std::to_string(busy) + ", stopping " + std::to_string(stopping) + ", restarts scheduled " +
         std::to_string(restarts_.size()) + ", waiting requests " + std::to_string(waiters_);
}

void PoolBackend::log_counts_if_changed() {
  std::string counts = counts_summary();
  if (counts == last_counts_) return;
  spdlog::info("pool {}: instances: {}; cold starts {} (last {} ms, average {} ms, max {} ms), failed starts {}, "
               "restarts {}",
               config_.name, counts, cold_starts_.count(), cold_starts_.last_ms(), cold_starts_.average_ms(),
               cold_starts_.max_ms(), failed_starts_, restart_count_);
  last_counts_ = std::move(counts);
}

std::string PoolBackend::describe(const Instance& instance) const {
  return "instance " + std::to_string(instance.id) + " (pid " +
         std::to_string(instance.process ? instance.process->pid() : 0) + ", port " + std::to_string(instance.port) +
         ")";
}

core::Result<int> PoolBackend::allocate_port() const {
  if (pool_.port_min > 0) {
    for (int port = pool_.port_min; port <= pool_.port_max; ++port) {
      const bool in_use = std::any_of(instances_.begin(), instances_.end(), [port](const auto& instance) {
        return instance->port == port && instance->state != InstanceState::Exited;
      });
      if (!in_use && can_bind(port)) return port;
    }
    return core::Error::unavailable("no port of port_range [" + std::to_string(pool_.port_min) + ", " +
                                        std::to_string(pool_.port_max) + "] is free",
                                    5);
  }
  // The kernel picks a free port, and the instance binds it moments later.
  // A start that loses the port to another program fails and is retried.
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return core::Error::internal(std::string("socket() failed: ") + std::strerror(errno));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    const std::string reason = std::strerror(errno);
    ::close(fd);
    return core::Error::internal("finding a free port on 127.0.0.1 failed: " + reason);
  }
  ::close(fd);
  return static_cast<int>(ntohs(address.sin_port));
}

// ---------------------------------------------------------------------------
// Readiness, on one prober thread per starting instance.
// ---------------------------------------------------------------------------

void PoolBackend::probe_until_ready(Instance* instance) {
  Clock::time_point deadline;
  {
    std::lock_guard lock(mutex_);
    deadline = instance->start_deadline;
  }
  const auto interval = milliseconds(pool_.ready_poll_ms);
  bool ready = false;
  int probes = 0;
  std::string last_error = "no probe was sent";
  auto cancelled = [this, instance] {
    std::lock_guard lock(mutex_);
    return instance->cancel_probe || instance->state != InstanceState::Starting || closing_;
  };

  while (!cancelled() && Clock::now() < deadline) {
    ++probes;
    if (probe_once(*instance, deadline, last_error)) {
      ready = true;
      break;
    }
    const auto next = std::min(deadline, Clock::now() + interval);
    while (Clock::now() < next && !cancelled()) std::this_thread::sleep_for(std::min<Clock::duration>(kProbeSleepSlice, next - Clock::now()));
  }

  std::lock_guard lock(mutex_);
  instance->probe_finished = true;
  const auto now = Clock::now();
  if (ready && instance->state == InstanceState::Starting && !closing_) {
    instance->state = InstanceState::Ready;
    instance->ready_at = now;
    instance->last_used = now;
    cold_starts_.record(std::chrono::duration_cast<milliseconds>(now - instance->requested_at));
    spdlog::info("pool {}: {} is ready: {} ms after it was requested, {} ms after spawn, {} readiness probe(s)",
                 config_.name, describe(*instance), to_ms(now - instance->requested_at),
                 to_ms(now - instance->spawned_at), probes);
    slot_freed_.notify_all();
  } else if (!ready && instance->state != InstanceState::Exited && !closing_) {
    spdlog::warn("pool {}: {} did not pass its readiness check after {} probe(s); the last one: {}", config_.name,
                 describe(*instance), probes, last_error);
  }
  wake_manager();
}

bool PoolBackend::probe_once(const Instance& instance, Clock::time_point deadline, std::string& last_error) {
  const long left = to_ms(deadline - Clock::now());
  if (left <= 0) return false;

  if (pool_.ready_canary) {
    // A small generation proves the model is loaded, not only the HTTP server.
    core::GenerationSpec spec;
    spec.backend = config_.name;
    spec.backend_type = config_.type;
    spec.model = config_.model;
    spec.prompt = "pixelgate readiness check";
    spec.width = 64;
    spec.height = 64;
    spec.steps = 1;
    spec.seed = 1;
    if (!instance.adapter->validate(spec)) spec.width = spec.height = 512;
    backends::GenerateContext context{"pool-" + config_.name + "-canary-" + std::to_string(instance.id), deadline};
    auto image = instance.adapter->generate(spec, context);
    if (!image) {
      last_error = "canary generation failed: " + image.error().message;
      spdlog::debug("pool {}: instance {}: {}", config_.name, instance.id, last_error);
      return false;
    }
    return true;
  }

  backends::OutboundRequest request;
  request.url = "http://127.0.0.1:" + std::to_string(instance.port) + pool_.ready_path;
  request.connect_timeout_ms = static_cast<int>(std::min<long>(kProbeConnectTimeoutMs, left));
  request.timeout_ms = static_cast<int>(std::min<long>(kProbeTimeoutMs, left));
  if (!config_.api_key.empty()) {
    // The a1111 adapter logs in with HTTP basic authentication (--api-auth);
    // the others send a bearer token for a proxy in front of the server.
    request.headers.push_back(config_.type == "a1111"
                                  ? "Authorization: Basic " + core::base64_encode(config_.api_key.value)
                                  : "Authorization: Bearer " + config_.api_key.value);
  }
  auto response = backends::perform(request);
  if (!response) {
    last_error = "GET " + pool_.ready_path + " failed: " + response.error().message;
  } else if (response->status != pool_.ready_status) {
    last_error = "GET " + pool_.ready_path + " returned HTTP " + std::to_string(response->status) + " instead of " +
                 std::to_string(pool_.ready_status);
  } else {
    return true;
  }
  spdlog::debug("pool {}: instance {}: readiness probe: {}", config_.name, instance.id, last_error);
  return false;
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
