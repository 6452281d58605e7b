#include "backends/retry.hpp"

#include <algorithm>
#include <charconv>
#include <thread>

#include <spdlog/spdlog.h>

#include "backends/backend.hpp"
#include "core/hash.hpp"

namespace pixelgate::backends {

bool GenerateContext::allow_retry() const { return retry_budget == nullptr || retry_budget->try_spend(); }

bool sleep_before_retry(const config::BackendConfig& config, const GenerateContext& context, int attempt,
                        int max_attempts, std::optional<std::chrono::milliseconds> retry_after) {
  if (!context.allow_retry()) {
    spdlog::warn("backend {}: not retrying request {}: the backend's retry budget is used up", config.name,
                 context.request_id);
    return false;
  }
  const auto delay = backoff_delay(attempt, std::chrono::milliseconds(config.retry_base_delay_ms),
                                   std::chrono::milliseconds(config.retry_max_delay_ms), retry_after);
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(context.deadline -
                                                                          std::chrono::steady_clock::now());
  if (delay >= left) {
    spdlog::warn("backend {}: not retrying request {}: the {} ms delay would pass its deadline", config.name,
                 context.request_id, delay.count());
    return false;
  }
  spdlog::info("backend {}: retrying request {} in {} ms (attempt {} of {})", config.name, context.request_id,
               delay.count(), attempt + 1, max_attempts);
  std::this_thread::sleep_for(delay);
  return true;
}

std::chrono::milliseconds backoff_delay(int attempt, std::chrono::milliseconds base, std::chrono::milliseconds max,
                                        std::optional<std::chrono::milliseconds> retry_after) {
  if (retry_after) return std::min(*retry_after, max);
  const int shift = std::clamp(attempt - 1, 0, 20);
  const auto exponential = std::min<std::int64_t>(base.count() << shift, max.count());
  const double jitter = 0.5 + 0.5 * static_cast<double>(core::random_u64() % 10001) / 10000.0;
  return std::chrono::milliseconds(static_cast<std::int64_t>(static_cast<double>(exponential) * jitter));
}

std::optional<std::chrono::milliseconds> parse_retry_after(const std::optional<std::string>& seconds,
                                                           const std::optional<std::string>& milliseconds) {
  auto parse = [](const std::string& text) -> std::optional<double> {
    double value = 0;
    const auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || ptr != text.data() + text.size() || value < 0) return std::nullopt;
    return value;
  };
  if (milliseconds) {
    if (auto value = parse(*milliseconds)) return std::chrono::milliseconds(static_cast<std::int64_t>(*value));
  }
  if (seconds) {
    if (auto value = parse(*seconds)) return std::chrono::milliseconds(static_cast<std::int64_t>(*value * 1000));
  }
  return std::nullopt;
}

}  // namespace pixelgate::backends
