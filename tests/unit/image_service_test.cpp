// Coalescing and failure handling of the miss path, with an in-process
// backend that counts calls and can be held or made to fail (HeldBackend).
#include <gtest/gtest.h>

#include <condition_variable>
#include <filesystem>
#include <future>
#include <map>

#include "backends/backend.hpp"
#include "core/hash.hpp"
#include "generation/cache_key.hpp"
#include "generation/image_service.hpp"
#include "imaging/image.hpp"
#include "held_backend.hpp"
#include "storage/disk_store.hpp"

using namespace pixelgate;
namespace fs = std::filesystem;

namespace {

const core::GenerationCaller kCaller{"anonymous", "127.0.0.1"};

// A guard that admits a fixed number of generations and records releases.
class CountingGuard final : public core::GenerationGuard {
 public:
  explicit CountingGuard(int allowed) : allowed_(allowed) {}
  core::Result<std::int64_t> acquire(const core::GenerationSpec&, const std::string&, const core::GenerationCaller&,
                                     std::optional<double> estimate) override {
    last_estimate = estimate;
    if (allowed_-- <= 0) return core::Error{core::ErrorCode::BudgetExhausted, "budget used up", {}, 60};
    return ++acquired;
  }
  double release(std::int64_t, bool succeeded, double actual) override {
    (succeeded ? settled : refunded)++;
    return succeeded ? actual + 1.0 : 0.0;
  }
  int allowed_;
  std::int64_t acquired = 0;
  int settled = 0;
  int refunded = 0;
  std::optional<double> last_estimate;
};

class ImageServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(imaging::initialize().ok());
    root_ = fs::temp_directory_path() / ("pixelgate-service-" + std::to_string(core::random_u64()));
    store_ = std::move(storage::DiskStore::open(root_)).value();
    service_ = std::make_unique<generation::ImageService>(*store_, hot_cache_, workers_, generation::ImageServiceOptions{});
  }

  void TearDown() override {
    backend_.release();
    service_->drain(std::chrono::seconds(10));
    workers_.stop();
    fs::remove_all(root_);
  }

  generation::ResolvedRequest request(const std::string& prompt) {
    generation::ResolvedRequest resolved;
    resolved.spec.backend = "counting";
    resolved.spec.prompt = prompt;
    resolved.spec.width = 64;
    resolved.spec.height = 64;
    resolved.key = generation::cache_key(resolved.spec);
    resolved.backend = &backend_;
    return resolved;
  }

  std::future<core::Result<generation::ImageOutcome>> start(const generation::ResolvedRequest& resolved) {
    auto promise = std::make_shared<std::promise<core::Result<generation::ImageOutcome>>>();
    auto future = promise->get_future();
    service_->fetch_or_generate(resolved, "test", kCaller, [promise](core::Result<generation::ImageOutcome> outcome) {
      promise->set_value(std::move(outcome));
    });
    return future;
  }

  void wait_for_calls(int expected) {
    for (int i = 0; i < 500 && backend_.calls.load() < expected; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }

  fs::path root_;
  test_support::HeldBackend backend_{"counting", 0.25};
  std::unique_ptr<storage::DiskStore> store_;
  storage::HotCache hot_cache_{64 * 1024 * 1024, 8 * 1024 * 1024};
  core::WorkerPool workers_{4, 64};
  std::unique_ptr<generation::ImageService> service_;
};

}  // namespace

TEST_F(ImageServiceTest, GuardRejectionReachesAllWaiters) {
  CountingGuard guard(0);
  generation::ImageServiceOptions options;
  options.guard = &guard;
  generation::ImageService guarded(*store_, hot_cache_, workers_, options);
  const auto resolved = request("over budget");
  std::vector<std::future<core::Result<generation::ImageOutcome>>> futures;
  for (int i = 0; i < 5; ++i) {
    auto promise = std::make_shared<std::promise<core::Result<generation::ImageOutcome>>>();
    futures.push_back(promise->get_future());
    guarded.fetch_or_generate(resolved, "test", kCaller, [promise](core::Result<generation::ImageOutcome> outcome) {
      promise->set_value(std::move(outcome));
    });
  }
  for (auto& future : futures) {
    auto outcome = future.get();
    ASSERT_FALSE(outcome.ok());
    EXPECT_EQ(outcome.error().code, core::ErrorCode::BudgetExhausted);
  }
  EXPECT_EQ(backend_.calls.load(), 0);
  EXPECT_EQ(guard.last_estimate, 0.25);
}

TEST_F(ImageServiceTest, GuardSettlesSuccessAndRefundsFailure) {
  backend_.release();
  CountingGuard guard(10);
  generation::ImageServiceOptions options;
  options.guard = &guard;
  generation::ImageService guarded(*store_, hot_cache_, workers_, options);
  auto run = [&](const generation::ResolvedRequest& resolved) {
    std::promise<core::Result<generation::ImageOutcome>> promise;
    guarded.fetch_or_generate(resolved, "test", kCaller, [&promise](core::Result<generation::ImageOutcome> outcome) {
      promise.set_value(std::move(outcome));
    });
    return promise.get_future().get();
  };
  auto success = run(request("settled"));
  ASSERT_TRUE(success.ok());
  EXPECT_DOUBLE_EQ(success->cost_usd, 1.25);  // the guard's settled amount becomes the reported cost
  backend_.fail = true;
  EXPECT_FALSE(run(request("refunded")).ok());
  EXPECT_EQ(guard.settled, 1);
  EXPECT_EQ(guard.refunded, 1);
}

TEST_F(ImageServiceTest, ConcurrentMissesMakeOneCall) {
  const auto resolved = request("a dog");
  std::vector<std::future<core::Result<generation::ImageOutcome>>> futures;
  for (int i = 0; i < 50; ++i) futures.push_back(start(resolved));
  wait_for_calls(1);
  backend_.release();

  int misses = 0;
  int coalesced = 0;
  std::shared_ptr<const std::string> first_bytes;
  for (auto& future : futures) {
    auto outcome = future.get();
    ASSERT_TRUE(outcome.ok());
    if (outcome->state == generation::CacheState::Miss) ++misses;
    if (outcome->state == generation::CacheState::Coalesced) ++coalesced;
    if (!first_bytes) first_bytes = outcome->image->bytes;
    EXPECT_EQ(*outcome->image->bytes, *first_bytes);
  }
  EXPECT_EQ(backend_.calls.load(), 1);
  EXPECT_EQ(misses, 1);
  EXPECT_EQ(coalesced, 49);
}

TEST_F(ImageServiceTest, OnlyLeaderIsCharged) {
  const auto resolved = request("charged");
  auto leader = start(resolved);
  auto follower = start(resolved);
  wait_for_calls(1);
  backend_.release();
  EXPECT_DOUBLE_EQ(leader.get()->cost_usd, 0.25);
  EXPECT_DOUBLE_EQ(follower.get()->cost_usd, 0.0);
}

TEST_F(ImageServiceTest, FailureReachesEveryWaiterAndIsNotStored) {
  backend_.fail = true;
  const auto resolved = request("fails");
  std::vector<std::future<core::Result<generation::ImageOutcome>>> futures;
  for (int i = 0; i < 10; ++i) futures.push_back(start(resolved));
  wait_for_calls(1);
  backend_.release();
  for (auto& future : futures) {
    auto outcome = future.get();
    ASSERT_FALSE(outcome.ok());
    EXPECT_EQ(outcome.error().code, core::ErrorCode::BadGateway);
    EXPECT_EQ(outcome.error().message, "scripted failure");
  }
  auto stored = store_->find(resolved.key);
  ASSERT_TRUE(stored.ok());
  EXPECT_FALSE(stored->has_value());

  backend_.fail = false;
  auto retry = start(resolved).get();
  ASSERT_TRUE(retry.ok());
  EXPECT_EQ(backend_.calls.load(), 2);
}

TEST_F(ImageServiceTest, AbandonedGenerationIsStillStored) {
  const auto resolved = request("nobody waits");
  service_->fetch_or_generate(resolved, "gone", kCaller, [](core::Result<generation::ImageOutcome>) {});
  wait_for_calls(1);
  backend_.release();
  EXPECT_EQ(service_->drain(std::chrono::seconds(10)), 0u);
  auto stored = store_->find(resolved.key);
  ASSERT_TRUE(stored.ok());
  EXPECT_TRUE(stored->has_value());
}

TEST_F(ImageServiceTest, SecondRequestIsHotHit) {
  backend_.release();
  const auto resolved = request("cached");
  ASSERT_TRUE(start(resolved).get().ok());
  auto again = start(resolved).get();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->state, generation::CacheState::Hit);
  EXPECT_EQ(backend_.calls.load(), 1);
}

TEST_F(ImageServiceTest, StoredImageSurvivesNewService) {
  backend_.release();
  const auto resolved = request("persisted");
  ASSERT_TRUE(start(resolved).get().ok());

  storage::HotCache empty_cache(1024 * 1024, 1024 * 1024);
  generation::ImageService fresh(*store_, empty_cache, workers_, {});
  std::promise<core::Result<generation::ImageOutcome>> promise;
  fresh.fetch_or_generate(resolved, "test", kCaller, [&promise](core::Result<generation::ImageOutcome> outcome) {
    promise.set_value(std::move(outcome));
  });
  auto outcome = promise.get_future().get();
  ASSERT_TRUE(outcome.ok());
  EXPECT_EQ(outcome->state, generation::CacheState::Hit);
  EXPECT_EQ(backend_.calls.load(), 1);
}

TEST_F(ImageServiceTest, WrongSizeIsRejected) {
  backend_.release();
  auto resolved = request("wrong size");
  resolved.spec.width = 128;  // the backend draws spec.width, so make it lie below
  resolved.key = generation::cache_key(resolved.spec);
  class Shrinking final : public backends::Backend {
   public:
    const std::string& name() const override { return name_; }
    std::string_view type() const override { return "shrinking"; }
    int adapter_version() const override { return 1; }
    const std::string& default_model() const override { return name_; }
    bool honours_seed() const override { return true; }
    bool supports_negative_prompt() const override { return false; }
    std::optional<double> list_price(const core::GenerationSpec&) const override { return std::nullopt; }
    core::Status validate(const core::GenerationSpec&) const override { return core::Ok{}; }
    core::Result<backends::GeneratedImage> generate(const core::GenerationSpec&,
                                                    const backends::GenerateContext&) override {
      imaging::PlaceholderRequest request;
      request.width = 64;
      request.height = 64;
      return backends::GeneratedImage{imaging::render_placeholder(request).value()};
    }
    std::string name_ = "shrinking";
  } shrinking;
  resolved.backend = &shrinking;
  auto outcome = start(resolved).get();
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.error().code, core::ErrorCode::BadGateway);
  auto stored = store_->find(resolved.key);
  ASSERT_TRUE(stored.ok());
  EXPECT_FALSE(stored->has_value());
}

TEST(WorkerPool, RejectsWhenQueueIsFull) {
  core::WorkerPool pool(1, 1);
  std::promise<void> gate;
  auto gate_future = gate.get_future().share();
  std::atomic<int> ran{0};
  ASSERT_TRUE(pool.try_submit([gate_future, &ran] { gate_future.wait(); ++ran; }));
  // Wait until the first task occupies the only worker.
  for (int i = 0; i < 200 && pool.busy() == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  EXPECT_TRUE(pool.try_submit([&ran] { ++ran; }));
  EXPECT_FALSE(pool.try_submit([&ran] { ++ran; }));
  gate.set_value();
  pool.stop();
  EXPECT_EQ(ran.load(), 2);
}

namespace {

// Wraps a real store and can make reads fail as an unreachable S3 would.
class FlakyStore final : public storage::ObjectStore {
 public:
  explicit FlakyStore(storage::ObjectStore& inner) : inner_(inner) {}
  core::Result<std::optional<storage::StoredObject>> find(const std::string& key) override {
    if (down) return core::Error::unavailable("S3 GET failed after 4 attempts", 5);
    return inner_.find(key);
  }
  core::Status put(const std::string& key, std::string_view data, std::string_view metadata) override {
    return inner_.put(key, data, metadata);
  }
  core::Result<std::optional<std::string>> find_metadata(const std::string& key) override {
    return inner_.find_metadata(key);
  }
  core::Status remove(const std::string& key) override { return inner_.remove(key); }
  core::Status list(const std::function<bool(const std::string&)>& visit) override { return inner_.list(visit); }
  core::Status check_writable() override { return inner_.check_writable(); }
  std::string describe() const override { return "flaky"; }

  std::atomic<bool> down{false};

 private:
  storage::ObjectStore& inner_;
};

// A lease table in memory with real expiry, shared by several services as
// Redis is shared by several replicas.
class MemoryLease final : public core::GenerationLease {
 public:
  core::Result<std::optional<core::LeaseHandle>> try_acquire(const std::string& key,
                                                             std::chrono::milliseconds ttl) override {
    std::lock_guard lock(mutex_);
    ++acquire_calls;
    if (down) return core::Error::unavailable("redis unreachable", 1);
    auto now = std::chrono::steady_clock::now();
    auto it = held_.find(key);
    if (it != held_.end() && it->second.expires > now) return std::optional<core::LeaseHandle>{};
    core::LeaseHandle handle{"token-" + std::to_string(++next_fence_), next_fence_};
    held_[key] = {handle, now + ttl};
    ++granted;
    return std::optional<core::LeaseHandle>{handle};
  }
  core::Result<bool> renew(const std::string& key, const core::LeaseHandle& handle,
                           std::chrono::milliseconds ttl) override {
    std::lock_guard lock(mutex_);
    auto it = held_.find(key);
    if (it == held_.end() || it->second.handle.token != handle.token) return false;
    it->second.expires = std::chrono::steady_clock::now() + ttl;
    ++renewals;
    return true;
  }
  void release(const std::string& key, const core::LeaseHandle& handle) noexcept override {
    std::lock_guard lock(mutex_);
    auto it = held_.find(key);
    if (it != held_.end() && it->second.handle.token == handle.token) held_.erase(it);
    ++releases;
  }
  bool held(const std::string& key) {
    std::lock_guard lock(mutex_);
    auto it = held_.find(key);
    return it != held_.end() && it->second.expires > std::chrono::steady_clock::now();
  }

  std::atomic<bool> down{false};
  int acquire_calls = 0;
  int granted = 0;
  int renewals = 0;
  int releases = 0;

 private:
  struct Entry {
    core::LeaseHandle handle;
    std::chrono::steady_clock::time_point expires;
  };
  std::mutex mutex_;
  std::map<std::string, Entry> held_;
  std::int64_t next_fence_ = 0;
};

}  // namespace

TEST_F(ImageServiceTest, StoreOutageFailsWithoutGenerating) {
  FlakyStore flaky(*store_);
  generation::ImageService service(flaky, hot_cache_, workers_, {});
  flaky.down = true;
  backend_.release();
  auto promise = std::make_shared<std::promise<core::Result<generation::ImageOutcome>>>();
  auto future = promise->get_future();
  service.fetch_or_generate(request("an unreachable bucket"), "test", kCaller,
                            [promise](auto outcome) { promise->set_value(std::move(outcome)); });
  auto outcome = future.get();
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.error().code, core::ErrorCode::Unavailable);
  EXPECT_EQ(backend_.calls.load(), 0);
  service.drain(std::chrono::seconds(5));
}

class LeaseTest : public ImageServiceTest {
 protected:
  generation::ImageServiceOptions lease_options() {
    generation::ImageServiceOptions options;
    options.lease = &lease_;
    options.lease_ttl = std::chrono::milliseconds(1000);
    options.lease_poll = std::chrono::milliseconds(10);
    return options;
  }

  static std::future<core::Result<generation::ImageOutcome>> start_on(generation::ImageService& service,
                                                                      const generation::ResolvedRequest& resolved) {
    auto promise = std::make_shared<std::promise<core::Result<generation::ImageOutcome>>>();
    auto future = promise->get_future();
    service.fetch_or_generate(resolved, "test", kCaller,
                              [promise](auto outcome) { promise->set_value(std::move(outcome)); });
    return future;
  }

  MemoryLease lease_;
};

TEST_F(LeaseTest, TwoReplicasMakeOneCall) {
  // Two services with their own hot caches and one store and lease: two replicas.
  storage::HotCache other_cache{64 * 1024 * 1024, 8 * 1024 * 1024};
  generation::ImageService first(*store_, hot_cache_, workers_, lease_options());
  generation::ImageService second(*store_, other_cache, workers_, lease_options());
  const auto resolved = request("a lighthouse shared by replicas");

  auto leader = start_on(first, resolved);
  wait_for_calls(1);
  auto waiter = start_on(second, resolved);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(backend_.calls.load(), 1);
  backend_.release();

  auto leader_outcome = leader.get();
  auto waiter_outcome = waiter.get();
  ASSERT_TRUE(leader_outcome.ok());
  ASSERT_TRUE(waiter_outcome.ok());
  EXPECT_EQ(backend_.calls.load(), 1);
  EXPECT_EQ(leader_outcome->state, generation::CacheState::Miss);
  EXPECT_EQ(waiter_outcome->state, generation::CacheState::Coalesced);
  EXPECT_EQ(*leader_outcome->image->bytes, *waiter_outcome->image->bytes);
  EXPECT_FALSE(lease_.held(resolved.key)) << "the lease must be given up after the generation";
  first.drain(std::chrono::seconds(5));
  second.drain(std::chrono::seconds(5));
}

TEST_F(LeaseTest, LongGenerationRenewsLease) {
  generation::ImageService service(*store_, hot_cache_, workers_, lease_options());
  const auto resolved = request("a slow generation");
  auto future = start_on(service, resolved);
  wait_for_calls(1);
  // Three lease lifetimes: without renewal the lease would have expired.
  std::this_thread::sleep_for(std::chrono::milliseconds(3000));
  EXPECT_TRUE(lease_.held(resolved.key));
  EXPECT_GE(lease_.renewals, 3);
  backend_.release();
  ASSERT_TRUE(future.get().ok());
  service.drain(std::chrono::seconds(5));
}

TEST_F(LeaseTest, ExpiredLeaseIsTakenOver) {
  generation::ImageService service(*store_, hot_cache_, workers_, lease_options());
  const auto resolved = request("an abandoned lease");
  // A replica that died after taking the lease: it is never renewed.
  auto dead = lease_.try_acquire(resolved.key, std::chrono::milliseconds(300));
  ASSERT_TRUE(dead.ok());
  ASSERT_TRUE(dead->has_value());

  backend_.release();
  const auto started = std::chrono::steady_clock::now();
  auto outcome = start_on(service, resolved).get();
  ASSERT_TRUE(outcome.ok());
  EXPECT_GE(std::chrono::steady_clock::now() - started, std::chrono::milliseconds(250));
  EXPECT_EQ(backend_.calls.load(), 1);
  EXPECT_EQ(lease_.granted, 2);
  service.drain(std::chrono::seconds(5));
}

TEST_F(LeaseTest, UnreachableLeaseRefusesGeneration) {
  generation::ImageService service(*store_, hot_cache_, workers_, lease_options());
  lease_.down = true;
  backend_.release();
  auto outcome = start_on(service, request("redis is down")).get();
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.error().code, core::ErrorCode::Unavailable);
  EXPECT_EQ(backend_.calls.load(), 0);
  service.drain(std::chrono::seconds(5));
}

TEST_F(LeaseTest, StoredImageNeedsNoLease) {
  generation::ImageService service(*store_, hot_cache_, workers_, lease_options());
  backend_.release();
  const auto resolved = request("stored before the outage");
  ASSERT_TRUE(start_on(service, resolved).get().ok());

  storage::HotCache cold_cache{64 * 1024 * 1024, 8 * 1024 * 1024};
  generation::ImageService other(*store_, cold_cache, workers_, lease_options());
  lease_.down = true;
  const int acquires = lease_.acquire_calls;
  auto outcome = start_on(other, resolved).get();
  ASSERT_TRUE(outcome.ok());
  EXPECT_EQ(outcome->state, generation::CacheState::Hit);
  EXPECT_EQ(lease_.acquire_calls, acquires);
  service.drain(std::chrono::seconds(5));
  other.drain(std::chrono::seconds(5));
}
