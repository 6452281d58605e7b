// PoolBackend's manager thread: starting, stopping and reaping instances.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>

#include "pool/pool_internal.hpp"
#include "pool/worker_pool_backend.hpp"

namespace pixelgate::pool {
namespace {

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

using namespace detail;

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
  reap_exits(now);
  enforce_deadlines(now);
  end_crash_loop(now);
  stop_idle_instances(now);
  run_due_restarts(now);
  start_for_min_and_demand(now);
  collect_exited(removed);
  log_counts_if_changed();
}

void PoolBackend::reap_exits(Clock::time_point now) {
  for (auto& instance : instances_) {
    if (instance->state == InstanceState::Exited) continue;
    if (auto exit = instance->process->poll()) handle_exit(*instance, *exit, now);
  }
}

void PoolBackend::enforce_deadlines(Clock::time_point now) {
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
}

void PoolBackend::end_crash_loop(Clock::time_point now) {
  // A crash loop doubles the restart delay; an instance that stays up for
  // the longest delay ends the loop.
  if (consecutive_failures_ == 0) return;
  for (const auto& instance : instances_) {
    if (instance->state == InstanceState::Ready && now - instance->ready_at >= milliseconds(pool_.restart_backoff_max_ms)) {
      spdlog::info("pool {}: {} has been ready for {} ms; restart delays start again at {} ms", config_.name,
                   describe(*instance), to_ms(now - instance->ready_at), pool_.restart_backoff_ms);
      consecutive_failures_ = 0;
      return;
    }
  }
}

void PoolBackend::stop_idle_instances(Clock::time_point now) {
  if (waiters_ > 0) return;
  const int min_instances = effective_min_instances();
  int live = live_count();
  for (auto& instance : instances_) {
    if (instance->state != InstanceState::Ready || instance->active > 0) continue;
    const auto idle = now - instance->last_used;
    if (idle >= milliseconds(pool_.idle_timeout_ms) && live > min_instances) {
      ++idle_stops_;
      --live;
      stop_instance(*instance, "idle for " + std::to_string(to_ms(idle)) + " ms", now);
    }
  }
}

void PoolBackend::run_due_restarts(Clock::time_point now) {
  std::vector<Clock::time_point> due;
  for (auto it = restarts_.begin(); it != restarts_.end();) {
    if (*it <= now) {
      due.push_back(*it);
      it = restarts_.erase(it);
    } else {
      ++it;
    }
  }
  // A restart goes ahead only when something still needs it.
  const int min_instances = effective_min_instances();
  for (std::size_t i = 0; i < due.size(); ++i) {
    if (demand() > 0 || live_count() + static_cast<int>(restarts_.size()) < min_instances) {
      start_instance(demand_since_.value_or(now), true);
    } else {
      spdlog::info("pool {}: restart not needed any more: no request waits and min_instances ({}) is met",
                   config_.name, min_instances);
    }
  }
}

void PoolBackend::start_for_min_and_demand(Clock::time_point now) {
  const int min_instances = effective_min_instances();
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
}

void PoolBackend::collect_exited(std::vector<std::unique_ptr<Instance>>& removed) {
  for (auto it = instances_.begin(); it != instances_.end();) {
    Instance& instance = **it;
    if (instance.state == InstanceState::Exited && instance.active == 0 && instance.probe_finished) {
      removed.push_back(std::move(*it));
      it = instances_.erase(it);
    } else {
      ++it;
    }
  }
}

int PoolBackend::live_count() const {
  return static_cast<int>(std::count_if(instances_.begin(), instances_.end(), [](const auto& instance) {
    return instance->state == InstanceState::Starting || instance->state == InstanceState::Ready;
  }));
}

int PoolBackend::total_count() const {
  const auto alive = std::count_if(instances_.begin(), instances_.end(),
                                   [](const auto& instance) { return instance->state != InstanceState::Exited; });
  return static_cast<int>(alive) + static_cast<int>(restarts_.size());
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


}  // namespace pixelgate::pool
