// A limit on how often one kind of log line is written, so that an outage
// of a shared service does not write one line per request.
#pragma once

#include <chrono>
#include <cstdint>
#include <mutex>
#include <optional>
#include <string>

namespace pixelgate::redis {

// Thread-safety: all members may be called concurrently.
class LogThrottle {
 public:
  explicit LogThrottle(std::chrono::milliseconds interval) : interval_(interval) {}

  // Records one event. Returns the number of events suppressed since the
  // last logged one when this event should be logged (at most once per
  // interval), or nullopt when it should be suppressed.
  std::optional<std::uint64_t> allow() {
    const auto now = std::chrono::steady_clock::now();
    std::lock_guard lock(mutex_);
    if (logged_once_ && now - last_logged_ < interval_) {
      ++suppressed_;
      return std::nullopt;
    }
    logged_once_ = true;
    last_logged_ = now;
    const std::uint64_t suppressed = suppressed_;
    suppressed_ = 0;
    return suppressed;
  }

 private:
  const std::chrono::milliseconds interval_;
  std::mutex mutex_;
  bool logged_once_ = false;
  std::chrono::steady_clock::time_point last_logged_;
  std::uint64_t suppressed_ = 0;
};

// Returns " (N similar messages suppressed)" for N > 0, else "", to append
// to the line that LogThrottle::allow let through.
inline std::string suppressed_note(std::uint64_t suppressed) {
  if (suppressed == 0) return {};
  return " (" + std::to_string(suppressed) + " similar messages suppressed)";
}

}  // namespace pixelgate::redis
