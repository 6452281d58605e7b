// Circuit breaker, per-backend concurrency limit, fallbacks and the refusal
// cache, with in-process backends whose behaviour each test scripts.
#include <gtest/gtest.h>

#include <filesystem>
#include <future>
#include <thread>

#include "backends/backend.hpp"
#include "backends/retry.hpp"
#include "core/hash.hpp"
#include "generation/backend_health.hpp"
#include "generation/cache_key.hpp"
#include "generation/image_service.hpp"
#include "generation/resolution_cache.hpp"
#include "imaging/image.hpp"
#include "storage/disk_store.hpp"

using namespace pixelgate;
namespace fs = std::filesystem;

TEST(CircuitBreaker, OpensAfterThresholdAndProbes) {
  core::ManualClock clock;
  generation::CircuitBreaker breaker("b", 3, 10'000, clock);
  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(breaker.allow());
    breaker.record_failure();
  }
  EXPECT_EQ(breaker.state(), generation::CircuitBreaker::State::Closed);
  ASSERT_TRUE(breaker.allow());
  breaker.record_failure();
  EXPECT_EQ(breaker.state(), generation::CircuitBreaker::State::Open);
  EXPECT_FALSE(breaker.allow());

  clock.advance(10.0);
  EXPECT_TRUE(breaker.allow());   // the probe
  EXPECT_FALSE(breaker.allow());  // only one probe at a time
  breaker.record_success();
  EXPECT_EQ(breaker.state(), generation::CircuitBreaker::State::Closed);
  EXPECT_TRUE(breaker.allow());
}

TEST(CircuitBreaker, FailedProbeReopens) {
  core::ManualClock clock;
  generation::CircuitBreaker breaker("b", 1, 5'000, clock);
  breaker.record_failure();
  clock.advance(5.0);
  ASSERT_TRUE(breaker.allow());
  breaker.record_failure();
  EXPECT_EQ(breaker.state(), generation::CircuitBreaker::State::Open);
  EXPECT_FALSE(breaker.allow());
}

TEST(CircuitBreaker, SuccessResetsFailureCount) {
  core::ManualClock clock;
  generation::CircuitBreaker breaker("b", 2, 5'000, clock);
  breaker.record_failure();
  breaker.record_success();
  breaker.record_failure();
  EXPECT_EQ(breaker.state(), generation::CircuitBreaker::State::Closed);
}

TEST(ConcurrencyLimiter, BoundsSlotsAndQueue) {
  generation::ConcurrencyLimiter limiter("b", 1, 1);
  const auto far = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  ASSERT_TRUE(limiter.acquire(far).ok());

  auto waiter = std::async(std::launch::async, [&] { return limiter.acquire(far).ok(); });
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  auto rejected = limiter.acquire(far);  // the one queue place is taken
  ASSERT_FALSE(rejected.ok());
  EXPECT_EQ(rejected.error().code, core::ErrorCode::Unavailable);

  limiter.release();
  EXPECT_TRUE(waiter.get());
  limiter.release();
}

TEST(ConcurrencyLimiter, WaitEndsAtDeadline) {
  generation::ConcurrencyLimiter limiter("b", 1, 4);
  ASSERT_TRUE(limiter.acquire(std::chrono::steady_clock::now() + std::chrono::seconds(5)).ok());
  auto timed_out = limiter.acquire(std::chrono::steady_clock::now() + std::chrono::milliseconds(30));
  ASSERT_FALSE(timed_out.ok());
  EXPECT_EQ(timed_out.error().code, core::ErrorCode::DeadlineExceeded);
  limiter.release();
}

namespace {

// A backend whose next results are scripted; it draws real images on success.
class ScriptedBackend final : public backends::Backend {
 public:
  explicit ScriptedBackend(std::string name) : name_(std::move(name)) {}
  const std::string& name() const override { return name_; }
  std::string_view type() const override { return "scripted"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return name_; }
  bool honours_seed() const override { return true; }
  bool supports_negative_prompt() const override { return false; }
  std::optional<double> list_price(const core::GenerationSpec&) const override { return 0.0; }
  core::Status validate(const core::GenerationSpec&) const override { return core::Ok{}; }

  core::Result<backends::GeneratedImage> generate(const core::GenerationSpec& spec,
                                                  const backends::GenerateContext&) override {
    calls.fetch_add(1);
    if (failure) return *failure;
    imaging::PlaceholderRequest request;
    request.prompt = spec.prompt + " from " + name_;
    request.width = spec.width;
    request.height = spec.height;
    return backends::GeneratedImage{imaging::render_placeholder(request).value()};
  }

  std::atomic<int> calls{0};
  std::optional<core::Error> failure;

 private:
  std::string name_;
};

class FallbackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(imaging::initialize().ok());
    root_ = fs::temp_directory_path() / ("pixelgate-fallback-" + std::to_string(core::random_u64()));
    store_ = std::move(storage::DiskStore::open(root_)).value();
    auto loaded = config::load_from_string(
        "[backends.primary]\ntype = \"placeholder\"\nfailure_threshold = 2\nopen_ms = 60000\n"
        "[backends.secondary]\ntype = \"placeholder\"\n",
        "t.toml", {});
    ASSERT_TRUE(loaded.ok()) << loaded.error().message;
    config_ = std::move(loaded).value();
    health_ = std::make_unique<generation::BackendHealth>(config_, clock_);
    generation::ImageServiceOptions options;
    options.health = health_.get();
    service_ = std::make_unique<generation::ImageService>(*store_, hot_cache_, workers_, options);
  }

  void TearDown() override {
    service_->drain(std::chrono::seconds(5));
    workers_.stop();
    fs::remove_all(root_);
  }

  generation::ResolvedRequest request(const std::string& prompt, bool with_fallback = true) {
    generation::ResolvedRequest resolved;
    auto spec_for = [&](const std::string& backend) {
      core::GenerationSpec spec;
      spec.backend = backend;
      spec.prompt = prompt;
      spec.width = 64;
      spec.height = 64;
      return spec;
    };
    resolved.spec = spec_for("primary");
    resolved.key = generation::cache_key(resolved.spec);
    resolved.backend = &primary_;
    if (with_fallback) {
      generation::Candidate fallback{spec_for("secondary"), {}, &secondary_};
      fallback.key = generation::cache_key(fallback.spec);
      resolved.fallbacks.push_back(fallback);
    }
    return resolved;
  }

  core::Result<generation::ImageOutcome> run(const generation::ResolvedRequest& resolved) {
    std::promise<core::Result<generation::ImageOutcome>> promise;
    service_->fetch_or_generate(resolved, "test", {"anonymous", "127.0.0.1"},
                                [&promise](core::Result<generation::ImageOutcome> outcome) {
                                  promise.set_value(std::move(outcome));
                                });
    return promise.get_future().get();
  }

  fs::path root_;
  core::ManualClock clock_;
  config::Config config_;
  ScriptedBackend primary_{"primary"};
  ScriptedBackend secondary_{"secondary"};
  std::unique_ptr<storage::DiskStore> store_;
  storage::HotCache hot_cache_{16 * 1024 * 1024, 4 * 1024 * 1024};
  core::WorkerPool workers_{2, 16};
  std::unique_ptr<generation::BackendHealth> health_;
  std::unique_ptr<generation::ImageService> service_;
};

}  // namespace

TEST_F(FallbackTest, UnavailablePrimaryFallsBack) {
  primary_.failure = core::Error::unavailable("down", 5);
  const auto resolved = request("a fox");
  auto outcome = run(resolved);
  ASSERT_TRUE(outcome.ok()) << outcome.error().message;
  EXPECT_EQ(outcome->fallback_backend, "secondary");
  EXPECT_EQ(outcome->image->key, resolved.fallbacks[0].key);
  EXPECT_EQ(primary_.calls.load(), 1);
  EXPECT_EQ(secondary_.calls.load(), 1);
  auto stored = store_->find(resolved.key);  // nothing under the primary key
  ASSERT_TRUE(stored.ok());
  EXPECT_FALSE(stored->has_value());
}

TEST_F(FallbackTest, InvalidRequestDoesNotFallBack) {
  primary_.failure = core::Error::invalid("bad prompt", "prompt");
  auto outcome = run(request("a fox"));
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.error().code, core::ErrorCode::InvalidArgument);
  EXPECT_EQ(secondary_.calls.load(), 0);
}

TEST_F(FallbackTest, OpenCircuitSkipsPrimary) {
  primary_.failure = core::Error::bad_gateway("broken");
  ASSERT_TRUE(run(request("one")).ok());
  ASSERT_TRUE(run(request("two")).ok());
  EXPECT_EQ(primary_.calls.load(), 2);  // the threshold of 2 opens the circuit
  ASSERT_TRUE(run(request("three")).ok());
  EXPECT_EQ(primary_.calls.load(), 2);  // skipped while open
  EXPECT_EQ(secondary_.calls.load(), 3);

  primary_.failure.reset();
  clock_.advance(60.0);
  auto recovered = run(request("four"));
  ASSERT_TRUE(recovered.ok());
  EXPECT_TRUE(recovered->fallback_backend.empty());
  EXPECT_EQ(primary_.calls.load(), 3);
}

TEST_F(FallbackTest, WithoutFallbackErrorReachesCaller) {
  primary_.failure = core::Error::unavailable("down", 7);
  auto outcome = run(request("alone", false));
  ASSERT_FALSE(outcome.ok());
  EXPECT_EQ(outcome.error().code, core::ErrorCode::Unavailable);
  EXPECT_EQ(outcome.error().retry_after_seconds, 7);
}

TEST_F(FallbackTest, RefusalIsRememberedPerKey) {
  primary_.failure = core::Error{core::ErrorCode::ContentRefused, "refused", "prompt", 0};
  const auto resolved = request("forbidden");
  ASSERT_FALSE(run(resolved).ok());
  auto again = run(resolved);
  ASSERT_FALSE(again.ok());
  EXPECT_EQ(again.error().code, core::ErrorCode::ContentRefused);
  EXPECT_EQ(primary_.calls.load(), 1);  // the second error came from the refusal cache
  EXPECT_EQ(secondary_.calls.load(), 0);
}

TEST(RetryBudget, LimitsRetriesToRatioOfCalls) {
  backends::RetryBudget budget(0.5, 2.0);
  EXPECT_TRUE(budget.try_spend());  // starts full: a burst of 2
  EXPECT_TRUE(budget.try_spend());
  EXPECT_FALSE(budget.try_spend());
  budget.record_call();
  EXPECT_FALSE(budget.try_spend());  // half a token
  budget.record_call();
  EXPECT_TRUE(budget.try_spend());
}

TEST(RetryBudget, ContextWithoutBudgetAllows) {
  backends::GenerateContext context;
  EXPECT_TRUE(context.allow_retry());
  backends::RetryBudget empty(0.1, 1.0);
  ASSERT_TRUE(empty.try_spend());
  context.retry_budget = &empty;
  EXPECT_FALSE(context.allow_retry());
}

TEST(ResolutionCache, EvictsLeastRecentlyUsed) {
  generation::ResolutionCache cache(2);
  auto entry = [](const std::string& key) {
    auto resolved = std::make_shared<generation::ResolvedRequest>();
    resolved->key = key;
    return std::shared_ptr<const generation::ResolvedRequest>(resolved);
  };
  cache.insert("?prompt=a", entry("a"));
  cache.insert("?prompt=b", entry("b"));
  ASSERT_TRUE(cache.find("?prompt=a"));  // a is now the most recent
  cache.insert("?prompt=c", entry("c"));
  EXPECT_TRUE(cache.find("?prompt=a"));
  EXPECT_FALSE(cache.find("?prompt=b"));
  ASSERT_TRUE(cache.find("?prompt=c"));
  EXPECT_EQ(cache.find("?prompt=c")->key, "c");
}
