#include <gtest/gtest.h>

#include <filesystem>

#include "admission/budget.hpp"
#include "admission/client_address.hpp"
#include "admission/gate.hpp"
#include "admission/rate_limiter.hpp"
#include "core/hash.hpp"

using namespace pixelgate;
namespace fs = std::filesystem;

TEST(TokenBucket, AllowsBurstThenRefills) {
  core::ManualClock clock;
  admission::InMemoryRateLimiter limiter(clock);
  const admission::RatePolicy policy{"requests", 2.0, 3.0};
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  auto third = limiter.consume("a", policy);
  EXPECT_TRUE(third.allowed);
  EXPECT_EQ(third.remaining, 0);
  auto fourth = limiter.consume("a", policy);
  EXPECT_FALSE(fourth.allowed);
  EXPECT_EQ(fourth.retry_after_seconds, 1);
  clock.advance(0.5);  // one token back at 2 per second
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  EXPECT_FALSE(limiter.consume("a", policy).allowed);
}

TEST(TokenBucket, BucketsAreIndependent) {
  core::ManualClock clock;
  admission::InMemoryRateLimiter limiter(clock);
  const admission::RatePolicy policy{"requests", 1.0, 1.0};
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  EXPECT_FALSE(limiter.consume("a", policy).allowed);
  EXPECT_TRUE(limiter.consume("b", policy).allowed);
}

TEST(TokenBucket, RefundReturnsToken) {
  core::ManualClock clock;
  admission::InMemoryRateLimiter limiter(clock);
  const admission::RatePolicy policy{"generations", 0.01, 1.0};
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  limiter.refund("a", policy);
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
}

TEST(TokenBucket, ZeroRateIsUnlimited) {
  core::ManualClock clock;
  admission::InMemoryRateLimiter limiter(clock);
  const admission::RatePolicy policy{"requests", 0, 0};
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(limiter.consume("a", policy).allowed);
}

TEST(TokenBucket, HeadersFollowDraftSyntax) {
  const admission::RatePolicy policy{"requests", 20.0, 40.0};
  admission::RateDecision decision;
  decision.remaining = 39;
  decision.reset_seconds = 1;
  EXPECT_EQ(admission::rate_limit_policy_header(policy), "\"requests\";q=40;w=2");
  EXPECT_EQ(admission::rate_limit_header(policy, decision), "\"requests\";r=39;t=1");
}

class LedgerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = fs::temp_directory_path() / ("pixelgate-ledger-" + std::to_string(core::random_u64()) + ".sqlite3");
  }
  void TearDown() override {
    for (const char* suffix : {"", "-wal", "-shm"}) fs::remove(path_.string() + suffix);
  }
  std::unique_ptr<admission::BudgetLedger> open() {
    auto ledger = admission::BudgetLedger::open(path_.string(), clock_);
    EXPECT_TRUE(ledger.ok());
    return std::move(ledger).value();
  }
  fs::path path_;
  core::ManualClock clock_{1'800'000'000};  // 2027-01-15T08:00:00Z
};

TEST_F(LedgerTest, ReserveUpToLimitThenReject) {
  auto ledger = open();
  const admission::SpendLimits limits{0.10, 0};
  for (int i = 0; i < 10; ++i) {
    EXPECT_TRUE(ledger->reserve("key:a", "openai", "m", "k", 0.01, limits, {}).ok()) << i;
  }
  auto over = ledger->reserve("key:a", "openai", "m", "k", 0.01, limits, {});
  ASSERT_FALSE(over.ok());
  EXPECT_EQ(over.error().code, core::ErrorCode::BudgetExhausted);
  EXPECT_NE(over.error().message.find("daily spend budget of $0.10"), std::string::npos);
  EXPECT_EQ(over.error().retry_after_seconds, 16 * 3600);  // until midnight UTC
}

TEST_F(LedgerTest, RefundFreesBudget) {
  auto ledger = open();
  const admission::SpendLimits limits{0.05, 0};
  auto first = ledger->reserve("key:a", "b", "m", "k", 0.05, limits, {});
  ASSERT_TRUE(first.ok());
  EXPECT_FALSE(ledger->reserve("key:a", "b", "m", "k", 0.05, limits, {}).ok());
  ledger->refund(*first);
  EXPECT_TRUE(ledger->reserve("key:a", "b", "m", "k", 0.05, limits, {}).ok());
}

TEST_F(LedgerTest, SettleReplacesEstimate) {
  auto ledger = open();
  auto id = ledger->reserve("key:a", "b", "m", "k", 0.25, {}, {});
  ASSERT_TRUE(id.ok());
  EXPECT_DOUBLE_EQ(ledger->spent_today("key:a"), 0.25);
  ledger->settle(*id, 0.04);
  EXPECT_DOUBLE_EQ(ledger->spent_today("key:a"), 0.04);
  EXPECT_DOUBLE_EQ(ledger->spent_today(""), 0.04);
}

TEST_F(LedgerTest, GlobalLimitCoversEveryone) {
  auto ledger = open();
  const admission::SpendLimits global{0, 0.02};
  EXPECT_TRUE(ledger->reserve("key:a", "b", "m", "k", 0.01, {}, global).ok());
  EXPECT_TRUE(ledger->reserve("key:b", "b", "m", "k", 0.01, {}, global).ok());
  auto over = ledger->reserve("key:c", "b", "m", "k", 0.01, {}, global);
  ASSERT_FALSE(over.ok());
  EXPECT_NE(over.error().message.find("global monthly"), std::string::npos);
}

TEST_F(LedgerTest, TotalsSurviveReopen) {
  {
    auto ledger = open();
    auto settled = ledger->reserve("key:a", "b", "m", "k", 0.10, {}, {});
    ledger->settle(*settled, 0.07);
    auto refunded = ledger->reserve("key:a", "b", "m", "k", 0.50, {}, {});
    ledger->refund(*refunded);
    ASSERT_TRUE(ledger->reserve("key:a", "b", "m", "k", 0.03, {}, {}).ok());  // open at "crash"
  }
  auto reopened = open();
  EXPECT_NEAR(reopened->spent_today("key:a"), 0.10, 1e-9);
  EXPECT_NEAR(reopened->spent_this_month(""), 0.10, 1e-9);
}

TEST_F(LedgerTest, NewDayResetsDailyTotal) {
  auto ledger = open();
  const admission::SpendLimits limits{0.01, 0};
  ASSERT_TRUE(ledger->reserve("key:a", "b", "m", "k", 0.01, limits, {}).ok());
  EXPECT_FALSE(ledger->reserve("key:a", "b", "m", "k", 0.01, limits, {}).ok());
  clock_.advance(24 * 3600);
  EXPECT_TRUE(ledger->reserve("key:a", "b", "m", "k", 0.01, limits, {}).ok());
}

TEST_F(LedgerTest, ReportGroupsSettledSpend) {
  auto ledger = open();
  ledger->settle(*ledger->reserve("key:a", "openai", "gpt-image-2", "k", 0.1, {}, {}), 0.1);
  ledger->settle(*ledger->reserve("key:a", "openai", "gpt-image-2", "k", 0.2, {}, {}), 0.2);
  ledger->settle(*ledger->reserve("kid:k1", "openai", "gpt-image-2", "k", 0.3, {}, {}), 0.3);
  auto by_key = ledger->report("key");
  ASSERT_TRUE(by_key.ok());
  ASSERT_EQ(by_key->size(), 2u);
  EXPECT_EQ((*by_key)[0].group, "key:a");
  EXPECT_EQ((*by_key)[0].images, 2);
  EXPECT_NEAR((*by_key)[0].usd, 0.3, 1e-9);
  EXPECT_FALSE(ledger->report("colour").ok());
}

TEST(ClientAddress, PeerWithoutTrustedProxies) {
  EXPECT_EQ(admission::client_address("203.0.113.9", "198.51.100.1", "", {}), "203.0.113.9");
}

TEST(ClientAddress, ForwardedForBehindTrustedProxy) {
  const std::vector<admission::Network> trusted = {admission::parse_network("10.0.0.0/8").value(),
                                                   admission::parse_network("::1").value()};
  EXPECT_EQ(admission::client_address("10.1.2.3", "198.51.100.7, 10.0.0.5", "", trusted), "198.51.100.7");
  // A forged leftmost entry does not win over the real client.
  EXPECT_EQ(admission::client_address("10.1.2.3", "1.2.3.4, 198.51.100.7", "", trusted), "198.51.100.7");
  EXPECT_EQ(admission::client_address("::1", "", "for=\"[2001:db8::5]:4711\";proto=https", trusted), "2001:db8::5");
  EXPECT_EQ(admission::client_address("10.1.2.3", "", "for=192.0.2.60:8080", trusted), "192.0.2.60");
}

TEST(ClientAddress, UntrustedPeerHeadersIgnored) {
  const std::vector<admission::Network> trusted = {admission::parse_network("10.0.0.0/8").value()};
  EXPECT_EQ(admission::client_address("203.0.113.9", "198.51.100.7", "", trusted), "203.0.113.9");
}

TEST(ClientAddress, MalformedEntryStopsWalk) {
  const std::vector<admission::Network> trusted = {admission::parse_network("10.0.0.0/8").value()};
  EXPECT_EQ(admission::client_address("10.1.2.3", "198.51.100.7, garbage", "", trusted), "10.1.2.3");
}

TEST(Network, ParsesAndMatches) {
  auto v4 = admission::parse_network("192.168.0.0/16");
  ASSERT_TRUE(v4.ok());
  EXPECT_TRUE(admission::contains(*v4, "192.168.5.1"));
  EXPECT_FALSE(admission::contains(*v4, "192.169.0.1"));
  auto v6 = admission::parse_network("2001:db8::/32");
  ASSERT_TRUE(v6.ok());
  EXPECT_TRUE(admission::contains(*v6, "2001:db8:1::1"));
  EXPECT_FALSE(admission::contains(*v6, "2001:db9::1"));
  EXPECT_FALSE(admission::parse_network("10.0.0.0/33").ok());
  EXPECT_FALSE(admission::parse_network("not-an-ip").ok());
}

namespace {

class GateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = admission::generate_api_key();
    auto loaded = config::load_from_string(
        "[security]\nmode = \"signed\"\n[security.signing_keys.k1]\nsecret_env = \"SECRET\"\n"
        "[rate_limits]\nrequests_per_second = 1\nburst = 2\ngenerations_per_minute = 60\ngeneration_burst = 2\n"
        "[budgets]\ndaily_usd = 0.03\n[limits]\nmax_concurrent_generations = 2\n"
        "[api_keys.site]\nsha256 = \"" + key_.sha256 + "\"\nmax_concurrent_generations = 1\n"
        "[[costs]]\nmodel = \"placeholder-v1\"\nusd = 0.01\n",
        "gate.toml", {{"SECRET", "0123456789abcdef0123"}});
    ASSERT_TRUE(loaded.ok()) << loaded.error().message;
    config_ = std::move(loaded).value();
    ledger_ = std::move(admission::BudgetLedger::open(":memory:", clock_)).value();
    limiter_ = std::make_unique<admission::InMemoryRateLimiter>(clock_);
    gate_ = std::make_unique<admission::Gate>(config_, clock_, *limiter_, *ledger_);
  }

  admission::Admission admit(const std::string& query, const std::string& authorization = "",
                             const std::string& peer = "127.0.0.1") {
    admission::RequestInfo info;
    info.path = "/generate-image";
    info.query = query;
    info.authorization = authorization;
    info.remote_address = peer;
    return gate_->admit(info, admission::RouteKind::ImageUrl);
  }

  core::GenerationSpec spec() {
    core::GenerationSpec s;
    s.backend = "placeholder";
    s.model = "placeholder-v1";
    s.width = 64;
    s.height = 64;
    return s;
  }

  admission::NewApiKey key_;
  config::Config config_;
  core::ManualClock clock_;
  std::unique_ptr<admission::BudgetLedger> ledger_;
  std::unique_ptr<admission::InMemoryRateLimiter> limiter_;
  std::unique_ptr<admission::Gate> gate_;
};

}  // namespace

TEST_F(GateTest, SignedModeNeedsCredentials) {
  auto admission = admit("prompt=x");
  ASSERT_TRUE(admission.error);
  EXPECT_EQ(admission.error->code, core::ErrorCode::PermissionDenied);
}

TEST_F(GateTest, ApiKeyIsAccepted) {
  auto admission = admit("prompt=x", "Bearer " + key_.key);
  EXPECT_FALSE(admission.error);
  EXPECT_EQ(admission.caller.principal, "key:site");
}

TEST_F(GateTest, WrongApiKeyIsUnauthenticated) {
  auto admission = admit("prompt=x", "Bearer pg_wrong");
  ASSERT_TRUE(admission.error);
  EXPECT_EQ(admission.error->code, core::ErrorCode::Unauthenticated);
}

TEST_F(GateTest, RequestRateLimitPerAddress) {
  EXPECT_FALSE(admit("prompt=x", "Bearer " + key_.key, "192.0.2.1").error);
  EXPECT_FALSE(admit("prompt=x", "Bearer " + key_.key, "192.0.2.1").error);
  auto limited = admit("prompt=x", "Bearer " + key_.key, "192.0.2.1");
  ASSERT_TRUE(limited.error);
  EXPECT_EQ(limited.error->code, core::ErrorCode::ResourceExhausted);
  EXPECT_EQ(limited.error->retry_after_seconds, 1);
  bool has_policy = false;
  for (const auto& [name, value] : limited.headers) has_policy = has_policy || name == "RateLimit-Policy";
  EXPECT_TRUE(has_policy);
}

TEST_F(GateTest, CostTableSetsReservation) {
  EXPECT_DOUBLE_EQ(gate_->estimate_cost(spec(), std::nullopt), 0.01);
  core::GenerationSpec other = spec();
  other.model = "unknown-model";
  EXPECT_DOUBLE_EQ(gate_->estimate_cost(other, 0.07), 0.07);
  EXPECT_DOUBLE_EQ(gate_->estimate_cost(other, std::nullopt), 0.25);
}

TEST_F(GateTest, ConcurrencyCapPerKey) {
  const core::GenerationCaller caller{"key:site", "192.0.2.1"};
  auto first = gate_->acquire(spec(), "k1", caller, std::nullopt);
  ASSERT_TRUE(first.ok());
  auto second = gate_->acquire(spec(), "k2", caller, std::nullopt);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, core::ErrorCode::Unavailable);
  EXPECT_DOUBLE_EQ(gate_->release(*first, true, 0), 0.01);
  EXPECT_TRUE(gate_->acquire(spec(), "k3", caller, std::nullopt).ok());
}

TEST_F(GateTest, BudgetBoundsGenerations) {
  int admitted = 0;
  for (int i = 0; i < 10; ++i) {
    clock_.advance(10);  // keep the generation bucket full
    // Appended, because GCC 12 warns falsely about "k" + std::to_string(i).
    std::string key = "k";
    key += std::to_string(i);
    std::string address = "192.0.2.";
    address += std::to_string(i);
    auto permit = gate_->acquire(spec(), key, {"kid:k1", address}, std::nullopt);
    if (permit.ok()) {
      ++admitted;
      gate_->release(*permit, true, 0);
    } else {
      EXPECT_EQ(permit.error().code, core::ErrorCode::BudgetExhausted);
    }
  }
  EXPECT_EQ(admitted, 3);  // $0.03 daily budget at $0.01 each
}

TEST_F(GateTest, FailedGenerationIsRefunded) {
  for (int i = 0; i < 6; ++i) {
    clock_.advance(10);
    auto permit = gate_->acquire(spec(), "k", {"anonymous", "192.0.2.1"}, std::nullopt);
    ASSERT_TRUE(permit.ok()) << i;
    EXPECT_DOUBLE_EQ(gate_->release(*permit, false, 0), 0.0);
  }
  EXPECT_DOUBLE_EQ(ledger_->spent_today(""), 0.0);
}

// A signed URL is verified in full once and then found in the gate's cache.
// The cache must not outlive the URL's expiry or accept a changed URL.
TEST_F(GateTest, CachedSignedUrlStillExpires) {
  clock_.set_unix_seconds(1'800'000'000);
  const admission::SigningKey key{"k1", "0123456789abcdef0123"};
  auto url = admission::sign_url("/generate-image?prompt=cached", key, 1'800'000'060);
  ASSERT_TRUE(url.ok()) << url.error().message;
  const std::string query = url->substr(url->find('?') + 1);

  for (int i = 0; i < 2; ++i) {
    auto admission = admit(query);
    ASSERT_FALSE(admission.error) << admission.error->message;
    EXPECT_EQ(admission.caller.principal, "kid:k1");
    ASSERT_TRUE(admission::load_params(admission, query).ok());
    ASSERT_EQ(admission.params.size(), 1u);
    EXPECT_EQ(admission.params[0].first, "prompt");
    EXPECT_EQ(admission.params[0].second, "cached");
    clock_.advance(1);  // refills the request bucket (1 per second)
  }

  auto changed = admit(query + "x");
  ASSERT_TRUE(changed.error);
  EXPECT_EQ(changed.error->code, core::ErrorCode::PermissionDenied);

  clock_.set_unix_seconds(1'800'000'061);
  auto expired = admit(query);
  ASSERT_TRUE(expired.error);
  EXPECT_EQ(expired.error->code, core::ErrorCode::PermissionDenied);
  EXPECT_NE(expired.error->message.find("expired at"), std::string::npos) << expired.error->message;
}
