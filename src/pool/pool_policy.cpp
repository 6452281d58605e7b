#include "pool/pool_policy.hpp"

#include <algorithm>
#include <ctime>

namespace pixelgate::pool {

std::chrono::milliseconds restart_delay(int base_ms, int max_ms, int consecutive_failures) {
  long long delay = std::max(base_ms, 0);
  for (int i = 1; i < consecutive_failures && delay < max_ms; ++i) delay *= 2;
  return std::chrono::milliseconds(std::min<long long>(delay, max_ms));
}

bool in_warm_window(int start_minute, int end_minute, int minute) {
  if (start_minute < 0 || end_minute < 0) return true;
  if (start_minute < end_minute) return minute >= start_minute && minute < end_minute;
  return minute >= start_minute || minute < end_minute;
}

int utc_minute_of_day(std::chrono::system_clock::time_point now) {
  const std::time_t seconds = std::chrono::system_clock::to_time_t(now);
  std::tm parts{};
  gmtime_r(&seconds, &parts);
  return parts.tm_hour * 60 + parts.tm_min;
}

std::string expand_placeholders(std::string_view text, int port, std::string_view model) {
  std::string out;
  out.reserve(text.size());
  const std::string port_text = std::to_string(port);
  for (std::size_t i = 0; i < text.size();) {
    if (text.substr(i, 6) == "{port}") {
      out += port_text;
      i += 6;
    } else if (text.substr(i, 7) == "{model}") {
      out += model;
      i += 7;
    } else {
      out += text[i++];
    }
  }
  return out;
}

int instances_to_start(int demand, int concurrency, int serving_or_starting, int total, int max_instances) {
  if (demand <= 0 || concurrency <= 0) return 0;
  const int needed = (demand + concurrency - 1) / concurrency - serving_or_starting;
  return std::clamp(needed, 0, std::max(0, max_instances - total));
}

std::chrono::milliseconds remaining_start(std::chrono::milliseconds expected, std::chrono::milliseconds elapsed,
                                          std::chrono::milliseconds until_deadline,
                                          std::chrono::milliseconds late_estimate) {
  const auto left = elapsed < expected ? expected - elapsed : late_estimate;
  return std::clamp(left, std::chrono::milliseconds(0), std::max(until_deadline, std::chrono::milliseconds(0)));
}

void ColdStartStats::record(std::chrono::milliseconds duration) {
  const long ms = static_cast<long>(std::max<long long>(duration.count(), 0));
  ++count_;
  last_ms_ = ms;
  max_ms_ = std::max(max_ms_, ms);
  total_ms_ += ms;
}

}  // namespace pixelgate::pool
