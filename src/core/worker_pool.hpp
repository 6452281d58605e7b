// A fixed set of threads with a bounded task queue, for blocking work (provider
// calls, disk reads on misses, image work) that must stay off the event loop.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace pixelgate::core {

// Thread-safety: every member function may be called from any thread.
class WorkerPool {
 public:
  WorkerPool(std::size_t threads, std::size_t max_queued);
  ~WorkerPool();  // calls stop()
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Queues `task`. Returns false, and does not run it, when the queue already
  // holds max_queued tasks or the pool is stopping.
  bool try_submit(std::function<void()> task);

  // Runs the tasks already queued, then joins the threads. Idempotent.
  void stop();

  std::size_t queued() const;
  std::size_t busy() const;

 private:
  void run();

  const std::size_t max_queued_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<std::function<void()>> tasks_;
  std::vector<std::thread> threads_;
  std::size_t busy_ = 0;
  bool stopping_ = false;
};

}  // namespace pixelgate::core
