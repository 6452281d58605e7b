// Retry timing shared by the provider adapters.
#pragma once

#include <chrono>
#include <optional>
#include <string>

namespace pixelgate::backends {

// Returns the delay before retry number `attempt` (1 = the first retry):
// the server's Retry-After when it sent one, else exponential backoff with
// full jitter, base * 2^(attempt-1) scaled by a random factor in [0.5, 1],
// capped at `max`.
std::chrono::milliseconds backoff_delay(int attempt, std::chrono::milliseconds base, std::chrono::milliseconds max,
                                        std::optional<std::chrono::milliseconds> retry_after);

// Parses a Retry-After value in seconds ("3") or OpenAI's retry-after-ms
// ("1500"); HTTP dates are not used by the providers and are ignored.
std::optional<std::chrono::milliseconds> parse_retry_after(const std::optional<std::string>& seconds,
                                                           const std::optional<std::string>& milliseconds);

}  // namespace pixelgate::backends
