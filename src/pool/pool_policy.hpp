// The decisions of a worker pool that need no process: restart delays, the
// warm schedule, command placeholders, how many instances to start, and
// cold-start statistics. Kept apart so unit tests can check them directly.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

namespace pixelgate::pool {

// Returns the delay before restart number `consecutive_failures` (1 for the
// first): base_ms doubled per earlier failure, capped at max_ms.
std::chrono::milliseconds restart_delay(int base_ms, int max_ms, int consecutive_failures);

// Returns true when `minute` (minutes after 00:00 UTC) lies in the window
// [start_minute, end_minute); a window whose end is before its start runs
// past midnight. A start of -1 means no window: always true.
bool in_warm_window(int start_minute, int end_minute, int minute);

// Returns the minutes after 00:00 UTC of `now`.
int utc_minute_of_day(std::chrono::system_clock::time_point now);

// Returns `text` with every "{port}" and "{model}" replaced.
std::string expand_placeholders(std::string_view text, int port, std::string_view model);

// Returns how many instances to start so that `demand` requests (running and
// waiting) fit: each serving or starting instance takes `concurrency` of
// them, and `total` instances (every state, scheduled restarts included)
// never exceed `max_instances`.
int instances_to_start(int demand, int concurrency, int serving_or_starting, int total, int max_instances);

// Returns the expected time left until an instance that started `elapsed`
// ago is ready, given the `expected` duration of a whole cold start. A start
// already late is expected within `late_estimate`, but never after
// `until_deadline`.
std::chrono::milliseconds remaining_start(std::chrono::milliseconds expected, std::chrono::milliseconds elapsed,
                                          std::chrono::milliseconds until_deadline,
                                          std::chrono::milliseconds late_estimate);

// Durations of cold starts (start requested to instance ready).
class ColdStartStats {
 public:
  void record(std::chrono::milliseconds duration);
  long count() const noexcept { return count_; }
  long last_ms() const noexcept { return last_ms_; }
  long max_ms() const noexcept { return max_ms_; }
  // Returns the mean in milliseconds, 0 before the first cold start.
  long average_ms() const noexcept { return count_ == 0 ? 0 : static_cast<long>(total_ms_ / count_); }

 private:
  long count_ = 0;
  long last_ms_ = 0;
  long max_ms_ = 0;
  long long total_ms_ = 0;
};

}  // namespace pixelgate::pool
