// Constants and helpers shared by the files of PoolBackend
// (worker_pool_backend.cpp, pool_manager.cpp, pool_readiness.cpp).
#pragma once

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "config/config.hpp"

namespace pixelgate::pool::detail {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

// How often the manager looks at its processes when nothing wakes it.
inline constexpr milliseconds kManagerTick{100};
// Bounds of one readiness probe. A server that is still loading refuses the
// connection at once, so only a hung server reaches them.
inline constexpr int kProbeConnectTimeoutMs = 1'000;
inline constexpr int kProbeTimeoutMs = 2'000;
// Expected time left for a start that already took longer than the average.
inline constexpr milliseconds kLateStartEstimate{1'000};
// How long the prober sleeps between checks of its cancel flag.
inline constexpr milliseconds kProbeSleepSlice{20};
// After a connection failure, how long to look for the instance's exit.
inline constexpr milliseconds kExitWaitStep{10};
inline constexpr int kExitWaitSteps = 20;
// How long shutdown waits for calls to return once their instances are gone.
inline constexpr milliseconds kShutdownReturnWait{5'000};
inline constexpr int kQueueFullRetryAfterSeconds = 2;
inline constexpr int kBusyRetryAfterSeconds = 5;

inline long to_ms(Clock::duration duration) {
  return static_cast<long>(std::chrono::duration_cast<milliseconds>(duration).count());
}

inline int retry_after_seconds(milliseconds delay) {
  return std::max(1, static_cast<int>((delay.count() + 999) / 1000));
}

// The adapter's configuration for one instance: the pool's backend settings
// with the instance's own address.
inline config::BackendConfig instance_config(const config::BackendConfig& config, int port) {
  config::BackendConfig copy = config;
  copy.pool.reset();
  copy.base_url = "http://127.0.0.1:" + std::to_string(port);
  return copy;
}

inline std::string join_arguments(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& argument : argv) out += (out.empty() ? "" : " ") + argument;
  return out;
}

}  // namespace pixelgate::pool::detail
