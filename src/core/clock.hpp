// Time sources behind an interface, so expiry, rate limits and budget periods
// can be tested with simulated time.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

namespace pixelgate::core {

class Clock {
 public:
  virtual ~Clock() = default;
  // Seconds since the Unix epoch, UTC.
  virtual std::int64_t unix_seconds() const = 0;
  // Seconds on a monotonic clock with an arbitrary origin, fractional.
  virtual double monotonic_seconds() const = 0;
};

class SystemClock final : public Clock {
 public:
  std::int64_t unix_seconds() const override {
    return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }
  double monotonic_seconds() const override {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }
};

// A clock that moves only when told to. Thread-safe.
class ManualClock final : public Clock {
 public:
  explicit ManualClock(std::int64_t unix_start = 1'800'000'000) : unix_(unix_start) {}
  std::int64_t unix_seconds() const override { return unix_.load(); }
  double monotonic_seconds() const override { return monotonic_.load(); }
  void advance(double seconds) {
    monotonic_.store(monotonic_.load() + seconds);
    unix_.store(unix_.load() + static_cast<std::int64_t>(seconds));
  }
  void set_unix_seconds(std::int64_t value) { unix_.store(value); }

 private:
  std::atomic<std::int64_t> unix_;
  std::atomic<double> monotonic_{1000.0};
};

// Formats a Unix time as "YYYY-MM-DDTHH:MM:SSZ" (UTC).
std::string format_iso8601_utc(std::int64_t unix_seconds);

}  // namespace pixelgate::core
