// One generation at a time per self-hosted server. AUTOMATIC1111, Forge,
// SD.Next and stable-diffusion.cpp's sd-server run one job at a time, so
// overlapping calls only queue inside the server where pixelgate cannot see
// or bound them. Callers wait here instead, bounded in number and in time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>

#include "core/error.hpp"

namespace pixelgate::backends {

class InstanceLock {
 public:
  // Releases the instance when destroyed. Movable so it can travel in a Result.
  class Guard {
   public:
    Guard(Guard&& other) noexcept : lock_(other.lock_) { other.lock_ = nullptr; }
    Guard& operator=(Guard&&) = delete;
    Guard(const Guard&) = delete;
    ~Guard() {
      if (lock_ != nullptr) lock_->release();
    }

   private:
    friend class InstanceLock;
    explicit Guard(InstanceLock* lock) : lock_(lock) {}
    InstanceLock* lock_;
  };

  // `max_waiters` bounds the calls that may wait for the instance at once
  // (the backend's queue_size); 0 means no call may wait.
  explicit InstanceLock(int max_waiters) : max_waiters_(max_waiters < 0 ? 0 : max_waiters) {}
  InstanceLock(const InstanceLock&) = delete;
  InstanceLock& operator=(const InstanceLock&) = delete;

  // Waits until the instance is free or `deadline` passes. Fails with
  // Unavailable, and a retry delay, when the waiting line is full or the
  // deadline passes first.
  core::Result<Guard> acquire(std::chrono::steady_clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (busy_ && waiters_ >= max_waiters_) {
      return core::Error::unavailable("the backend is busy and " + std::to_string(waiters_) +
                                          " generations already wait for it; retry later",
                                      kRetryAfterSeconds);
    }
    ++waiters_;
    const bool free = released_.wait_until(lock, deadline, [this] { return !busy_; });
    --waiters_;
    if (!free) {
      return core::Error::unavailable("the backend stayed busy with other generations until the deadline; "
                                      "retry later",
                                      kRetryAfterSeconds);
    }
    busy_ = true;
    return Guard(this);
  }

  // Returns the number of calls waiting now (for tests and logs).
  int waiters() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return waiters_;
  }

 private:
  // A self-hosted generation takes seconds, so a client retrying sooner
  // would only find the instance still busy.
  static constexpr int kRetryAfterSeconds = 5;

  void release() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      busy_ = false;
    }
    released_.notify_one();
  }

  mutable std::mutex mutex_;
  std::condition_variable released_;
  const int max_waiters_;
  int waiters_ = 0;
  bool busy_ = false;
};

}  // namespace pixelgate::backends
