// A lease that lets one replica of several generate an image while the
// others wait for it to appear in the shared store. The in-process coalescer
// already covers one replica; this covers many (implemented over Redis).
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>

#include "core/error.hpp"

namespace pixelgate::core {

struct LeaseHandle {
  std::string token;       // random, and given only to the holder
  std::int64_t fence = 0;  // increases with every grant for the same key
};

// Thread-safety: every member may be called concurrently.
class GenerationLease {
 public:
  virtual ~GenerationLease() = default;

  // Takes the lease on `key` for `ttl` unless it is held. Returns nullopt
  // when another holder has it, or Unavailable when the shared store cannot
  // be reached, so that generations fail closed.
  virtual Result<std::optional<LeaseHandle>> try_acquire(const std::string& key, std::chrono::milliseconds ttl) = 0;

  // Extends a held lease to `ttl` from now. Returns false when the lease was
  // lost (it expired and someone else may hold it).
  virtual Result<bool> renew(const std::string& key, const LeaseHandle& handle, std::chrono::milliseconds ttl) = 0;

  // Gives the lease up if it is still held by `handle`. Errors are logged,
  // not thrown (the function is noexcept).
  virtual void release(const std::string& key, const LeaseHandle& handle) noexcept = 0;
};

}  // namespace pixelgate::core
