// The hook through which admission control (rate limits on generations,
// concurrency caps, spend budgets) checks each generation. It lives in core/
// so that generation/ can call it without depending on admission/.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "core/error.hpp"
#include "core/generation_spec.hpp"

namespace pixelgate::core {

// The caller of a generation.
struct GenerationCaller {
  std::string principal;       // e.g. "key:site-a", "kid:k1", "anonymous"
  std::string client_address;  // after trusted-proxy processing
};

// Thread-safety: acquire() and release() are called concurrently from
// worker threads.
class GenerationGuard {
 public:
  virtual ~GenerationGuard() = default;

  // Called once per generation, just before the backend call. The estimate
  // is the adapter's list price, or nullopt when the adapter does not know
  // it. Returns a permit id, or an error that every waiter receives
  // (ResourceExhausted for rate limits and budgets, Unavailable for the
  // concurrency caps).
  virtual Result<std::int64_t> acquire(const GenerationSpec& spec, const std::string& key,
                                       const GenerationCaller& caller, std::optional<double> estimated_usd) = 0;

  // Ends a permit. On success the spend is settled at `actual_usd` when it is
  // positive, else at the reserved amount; on failure it is refunded. Returns
  // the amount charged.
  virtual double release(std::int64_t permit, bool succeeded, double actual_usd) = 0;
};

}  // namespace pixelgate::core
