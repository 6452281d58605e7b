// The miss path: find an image in the hot cache or the object store, or
// generate it exactly once however many requests ask for it at the same time.
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/error.hpp"
#include "core/generation_lease.hpp"
#include "core/generation_guard.hpp"
#include "core/worker_pool.hpp"
#include "generation/backend_health.hpp"
#include "generation/resolver.hpp"
#include "imaging/image.hpp"
#include "storage/hot_cache.hpp"
#include "storage/object_store.hpp"
#include "storage/open_file_cache.hpp"

namespace pixelgate::generation {

enum class CacheState { Hit, Miss, Coalesced };
std::string_view to_string(CacheState state) noexcept;

// Milliseconds spent in each stage, for the Server-Timing header.
struct StageTimings {
  double queue_ms = 0;     // waiting for a worker
  double lookup_ms = 0;    // reading the object store
  double generate_ms = 0;  // the backend call, retries included
  double validate_ms = 0;  // probing the image
  double store_ms = 0;     // writing it
};

struct ImageOutcome {
  std::shared_ptr<const storage::CachedImage> image;
  CacheState state = CacheState::Hit;
  StageTimings timings;
  double cost_usd = 0;  // non-zero only for the request that paid for a generation
  // Set when a fallback backend made the image: it is stored under its own
  // key (image->key), not the requested one, so it must not be cached as
  // the response for the requested URL.
  std::string fallback_backend;
};

using Completion = std::function<void(core::Result<ImageOutcome>)>;

struct ImageServiceOptions {
  std::chrono::milliseconds generation_timeout{180'000};
  imaging::ProbeLimits probe_limits;
  // Consulted before every backend call; null admits everything.
  core::GenerationGuard* guard = nullptr;
  // Circuit breakers and concurrency limits per backend; null = none.
  BackendHealth* health = nullptr;
  // How long a content refusal is returned without calling the backend
  // again; 0 turns the refusal cache off.
  std::chrono::milliseconds refusal_ttl{600'000};
  // Set when several replicas share one store: a miss generates only while
  // holding this lease, and the other replicas wait for the stored image.
  core::GenerationLease* lease = nullptr;
  std::chrono::milliseconds lease_ttl{15'000};   // renewed every third of it
  std::chrono::milliseconds lease_poll{200};     // how often a waiting replica looks for the image
  // Image files kept open for sendfile(2); 0 sends every image from memory.
  std::size_t open_files = 1000;
};

// Thread-safety: all public members may be called from any thread. Every
// Completion runs exactly once, either inline (a hot-cache hit, a full queue)
// or on a worker thread; it must not block.
//
// Lifetime: a generation keeps running when every caller has gone away, and
// its image is stored all the same, because it has been paid for.
class ImageService {
 public:
  ImageService(storage::ObjectStore& store, storage::HotCache& hot_cache, core::WorkerPool& workers,
               ImageServiceOptions options);

  // Returns the image from the hot cache, or null, without blocking.
  std::shared_ptr<const storage::CachedImage> find_hot(const std::string& key);

  // Returns an open file that contains exactly `image->bytes` when the store
  // keeps one on local disk and it is already open, and null otherwise. It
  // does not touch the disk: on a miss the file is opened on the worker pool
  // for later requests.
  std::shared_ptr<const core::OpenFile> sendable_file(const std::shared_ptr<const storage::CachedImage>& image);

  // Serves `resolved` from the store or generates it, coalescing concurrent
  // requests for the same key into one backend call. The first caller of a
  // generation is the one its rate limits, caps and budget apply to.
  void fetch_or_generate(const ResolvedRequest& resolved, const std::string& request_id,
                         const core::GenerationCaller& caller, Completion done);

  // Loads an already stored image by key; NotFound when there is none.
  void fetch_stored(const std::string& key, Completion done);

  // Waits until no generation is in flight or `timeout` has passed. Returns
  // the number still in flight.
  std::size_t drain(std::chrono::milliseconds timeout);

  std::size_t in_flight() const;

  const storage::HotCache& hot_cache() const { return hot_cache_; }

 private:
  struct Waiter {
    Completion done;
    bool leader = false;
  };
  struct Flight {
    std::vector<Waiter> waiters;
  };

  void run_flight(const ResolvedRequest& resolved, const std::string& request_id, const core::GenerationCaller& caller,
                  std::chrono::steady_clock::time_point queued_at);
  core::Result<ImageOutcome> generate_under_lease(const ResolvedRequest& resolved, const std::string& request_id,
                                                  const core::GenerationCaller& caller, StageTimings timings);
  core::Result<ImageOutcome> generate(const ResolvedRequest& resolved, const std::string& request_id,
                                      const core::GenerationCaller& caller, StageTimings timings);
  core::Result<ImageOutcome> attempt(const Candidate& candidate, const std::string& request_id,
                                     const core::GenerationCaller& caller, StageTimings timings,
                                     std::chrono::steady_clock::time_point deadline, bool& rejected_by_guard);
  core::Result<ImageOutcome> call_backend(const Candidate& candidate, const std::string& request_id,
                                          StageTimings timings, std::chrono::steady_clock::time_point deadline);
  std::optional<core::Error> find_refusal(const std::string& key);
  void remember_refusal(const std::string& key, const core::Error& error);
  core::Result<std::shared_ptr<const storage::CachedImage>> load(const std::string& key);
  void finish(const std::string& key, const core::Result<ImageOutcome>& result);

  storage::ObjectStore& store_;
  storage::HotCache& hot_cache_;
  core::WorkerPool& workers_;
  ImageServiceOptions options_;
  storage::OpenFileCache open_files_;

  mutable std::mutex mutex_;
  std::condition_variable idle_;
  std::map<std::string, Flight> flights_;

  struct Refusal {
    core::Error error;
    std::chrono::steady_clock::time_point expires;
  };
  static constexpr std::size_t kMaxRefusals = 10'000;
  std::mutex refusals_mutex_;
  std::map<std::string, Refusal> refusals_;
};

// Builds the cache entry for stored bytes: content type from the magic bytes,
// digest from the metadata's sha256 or computed.
std::shared_ptr<const storage::CachedImage> make_cached_image(const std::string& key, std::string bytes,
                                                              std::string metadata_json);

}  // namespace pixelgate::generation
