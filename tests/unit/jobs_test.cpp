// Asynchronous jobs: the SSRF address guard, Standard Webhooks signatures,
// the SQLite job store, the runner's queue, and the parsers of the Prefer
// and Idempotency-Key headers and of `pixelgate warm` lines.
#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <openssl/evp.h>

#include <condition_variable>
#include <filesystem>
#include <thread>

#include <nlohmann/json.hpp>

#include "api/jobs_route.hpp"
#include "backends/backend.hpp"
#include "cli/warm.hpp"
#include "config/config.hpp"
#include "core/hash.hpp"
#include "generation/cache_key.hpp"
#include "generation/image_service.hpp"
#include "held_backend.hpp"
#include "imaging/image.hpp"
#include "jobs/address_guard.hpp"
#include "jobs/job_runner.hpp"
#include "jobs/job_store.hpp"
#include "jobs/webhook_sender.hpp"
#include "storage/disk_store.hpp"
#include "storage/hot_cache.hpp"

using namespace pixelgate;
namespace fs = std::filesystem;

namespace {

struct AddressCase {
  const char* address;
  bool blocked;
  const char* reason_part;  // a word the reason must contain when blocked
};

// Edges of every blocked range, and public neighbours just outside them.
const AddressCase kAddressCases[] = {
    {"0.0.0.0", true, "unspecified"},
    {"0.255.255.255", true, "this network"},
    {"1.0.0.0", false, ""},
    {"8.8.8.8", false, ""},
    {"9.255.255.255", false, ""},
    {"10.0.0.0", true, "RFC 1918"},
    {"10.255.255.255", true, "RFC 1918"},
    {"11.0.0.0", false, ""},
    {"100.63.255.255", false, ""},
    {"100.64.0.0", true, "CGNAT"},
    {"100.127.255.255", true, "CGNAT"},
    {"100.128.0.0", false, ""},
    {"126.255.255.255", false, ""},
    {"127.0.0.1", true, "loopback"},
    {"127.255.255.254", true, "loopback"},
    {"128.0.0.0", false, ""},
    {"169.253.255.255", false, ""},
    {"169.254.169.254", true, "link-local"},
    {"169.255.0.0", false, ""},
    {"172.15.255.255", false, ""},
    {"172.16.0.0", true, "RFC 1918"},
    {"172.31.255.255", true, "RFC 1918"},
    {"172.32.0.0", false, ""},
    {"192.0.0.8", true, "IETF"},
    {"192.0.2.1", true, "documentation"},
    {"192.167.255.255", false, ""},
    {"192.168.0.1", true, "RFC 1918"},
    {"192.169.0.0", false, ""},
    {"198.18.0.1", true, "benchmarking"},
    {"198.19.255.255", true, "benchmarking"},
    {"198.20.0.0", false, ""},
    {"203.0.113.7", true, "documentation"},
    {"223.255.255.255", false, ""},
    {"224.0.0.1", true, "multicast"},
    {"239.255.255.255", true, "multicast"},
    {"240.0.0.1", true, "reserved"},
    {"255.255.255.255", true, "broadcast"},
    {"::", true, "unspecified"},
    {"::1", true, "loopback"},
    {"::2", true, "IPv4-compatible"},
    {"::ffff:127.0.0.1", true, "IPv4-mapped loopback"},
    {"::ffff:10.1.2.3", true, "IPv4-mapped private"},
    {"::ffff:169.254.169.254", true, "IPv4-mapped link-local"},
    {"::ffff:8.8.8.8", false, ""},
    {"64:ff9b::7f00:1", true, "NAT64"},
    {"64:ff9b::808:808", false, ""},
    {"64:ff9b:1::1", true, "local-use NAT64"},
    {"100::1", true, "discard"},
    {"2001::1", true, "Teredo"},
    {"2001:db8::1", true, "documentation"},
    {"2002:7f00:1::", true, "6to4"},
    {"2002:c0a8:101::1", true, "6to4"},
    {"2002:808:808::1", false, ""},
    {"2606:4700:4700::1111", false, ""},
    {"fbff:ffff::1", false, ""},
    {"fc00::1", true, "unique-local"},
    {"fdff:ffff::1", true, "unique-local"},
    {"fe80::1", true, "link-local"},
    {"febf:ffff::1", true, "link-local"},
    {"fec0::1", true, "site-local"},
    {"ff02::1", true, "multicast"},
};

TEST(AddressGuard, ClassifiesTable) {
  for (const auto& c : kAddressCases) {
    const std::string reason = jobs::blocked_address_reason(std::string_view(c.address));
    EXPECT_EQ(!reason.empty(), c.blocked) << c.address << " -> \"" << reason << "\"";
    if (c.blocked) {
      EXPECT_NE(reason.find(c.reason_part), std::string::npos) << c.address << " -> " << reason;
    }
  }
}

TEST(AddressGuard, SocketAddressFormAgrees) {
  for (const auto& c : kAddressCases) {
    sockaddr_storage storage{};
    if (std::string_view(c.address).find(':') != std::string_view::npos) {
      auto* v6 = reinterpret_cast<sockaddr_in6*>(&storage);
      v6->sin6_family = AF_INET6;
      ASSERT_EQ(inet_pton(AF_INET6, c.address, &v6->sin6_addr), 1) << c.address;
    } else {
      auto* v4 = reinterpret_cast<sockaddr_in*>(&storage);
      v4->sin_family = AF_INET;
      ASSERT_EQ(inet_pton(AF_INET, c.address, &v4->sin_addr), 1) << c.address;
    }
    const auto* address = reinterpret_cast<const sockaddr*>(&storage);
    EXPECT_EQ(jobs::blocked_address_reason(address), jobs::blocked_address_reason(std::string_view(c.address)));
  }
}

TEST(AddressGuard, RejectsNonAddresses) {
  EXPECT_EQ(jobs::blocked_address_reason(std::string_view("example.com")), "not an IP address");
  EXPECT_EQ(jobs::blocked_address_reason(std::string_view("")), "not an IP address");
}

TEST(AddressGuard, UrlChecksBeforeAnyLookup) {
  const auto timeout = std::chrono::milliseconds(2000);
  for (const char* url : {"ftp://127.0.0.1/x", "file:///etc/passwd", "http://user:pw@127.0.0.1/", "not a url", "",
                          "gopher://127.0.0.1/"}) {
    auto target = jobs::resolve_webhook_url(url, true, timeout);
    ASSERT_FALSE(target.ok()) << url;
    EXPECT_EQ(target.error().code, core::ErrorCode::InvalidArgument) << url;
    EXPECT_EQ(target.error().param, "webhook_url") << url;
  }
}

TEST(AddressGuard, LoopbackUrlsNeedTheSetting) {
  const auto timeout = std::chrono::milliseconds(2000);
  for (const char* url : {"http://127.0.0.1:9/hook", "http://[::1]:9/hook", "https://localhost/hook",
                          "http://[::ffff:127.0.0.1]/hook", "http://2130706433/hook"}) {
    auto blocked = jobs::resolve_webhook_url(url, false, timeout);
    ASSERT_FALSE(blocked.ok()) << url;
    EXPECT_EQ(blocked.error().code, core::ErrorCode::InvalidArgument) << url;
    EXPECT_NE(blocked.error().message.find("loopback"), std::string::npos) << blocked.error().message;
  }
  auto allowed = jobs::resolve_webhook_url("http://127.0.0.1:9/hook?token=x", true, timeout);
  ASSERT_TRUE(allowed.ok()) << allowed.error().message;
  EXPECT_EQ(allowed->host, "127.0.0.1");
  EXPECT_EQ(allowed->port, 9);
  EXPECT_TRUE(allowed->host_is_address);
  ASSERT_EQ(allowed->addresses.size(), 1u);
  EXPECT_EQ(allowed->addresses[0], "127.0.0.1");
  EXPECT_EQ(allowed->origin(), "http://127.0.0.1:9");
  auto v6 = jobs::resolve_webhook_url("http://[::1]/hook", true, timeout);
  ASSERT_TRUE(v6.ok()) << v6.error().message;
  EXPECT_EQ(v6->origin(), "http://[::1]:80");
}

// HMAC-SHA256 through OpenSSL's EVP_MAC interface, then base64 through
// EVP_EncodeBlock: a different code path from sign_webhook's HMAC() and
// core::base64_encode.
std::string reference_signature(const std::string& key, const std::string& content) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  std::size_t length = 0;
  EVP_Q_mac(nullptr, "HMAC", nullptr, "SHA256", nullptr, key.data(), key.size(),
            reinterpret_cast<const unsigned char*>(content.data()), content.size(), mac, sizeof(mac), &length);
  unsigned char encoded[2 * EVP_MAX_MD_SIZE];
  const int written = EVP_EncodeBlock(encoded, mac, static_cast<int>(length));
  return "v1," + std::string(reinterpret_cast<const char*>(encoded), static_cast<std::size_t>(written));
}

TEST(WebhookSignature, MatchesStandardWebhooksVector) {
  // The signing example of the Standard Webhooks reference library's tests
  // (libraries/javascript/src/webhook.test.ts, "sign function works"); the
  // expected value was also checked with `openssl dgst -sha256 -mac HMAC`.
  const auto key = jobs::decode_webhook_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
  ASSERT_TRUE(key.has_value());
  EXPECT_EQ(key->size(), 24u);
  EXPECT_EQ(jobs::sign_webhook(*key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, R"({"test": 2432232314})"),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
}

TEST(WebhookSignature, MatchesIndependentHmac) {
  const std::string key = "0123456789abcdef0123456789abcdef";
  const std::string body = R"({"type":"image.succeeded","data":{"id":"job_x"}})";
  EXPECT_EQ(jobs::sign_webhook(key, "msg_job_x", 1800000000, body),
            reference_signature(key, "msg_job_x.1800000000." + body));
  EXPECT_NE(jobs::sign_webhook(key, "msg_job_x", 1800000001, body),
            reference_signature(key, "msg_job_x.1800000000." + body));
}

TEST(WebhookSignature, DecodesOnlyPrefixedBase64) {
  EXPECT_FALSE(jobs::decode_webhook_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").has_value());
  EXPECT_FALSE(jobs::decode_webhook_secret("whsec_").has_value());
  EXPECT_FALSE(jobs::decode_webhook_secret("whsec_not base64!").has_value());
  EXPECT_EQ(jobs::decode_webhook_secret("whsec_aGVsbG8="), std::optional<std::string>("hello"));
}

TEST(WebhookEvent, SucceededAndFailedBodies) {
  jobs::Job job;
  job.id = "job_abc";
  job.status = jobs::JobStatus::Succeeded;
  job.base_url = "http://127.0.0.1:8080";
  job.updated_unix = 1800000000;
  job.images = {{std::string(64, 'a'), "image/png"}};
  const auto succeeded = nlohmann::json::parse(jobs::webhook_event_body(job));
  EXPECT_EQ(succeeded["type"], "image.succeeded");
  EXPECT_EQ(succeeded["timestamp"], "2027-01-15T08:00:00Z");
  EXPECT_EQ(succeeded["data"]["id"], "job_abc");
  EXPECT_EQ(succeeded["data"]["images"][0]["url"], "http://127.0.0.1:8080/images/" + std::string(64, 'a') + ".png");
  EXPECT_EQ(jobs::webhook_id_for(job), "msg_job_abc");
  EXPECT_EQ(jobs::webhook_event_body(job), jobs::webhook_event_body(job));

  job.status = jobs::JobStatus::Failed;
  job.images.clear();
  job.error_json = jobs::error_json(core::Error::bad_gateway("the backend failed"));
  const auto failed = nlohmann::json::parse(jobs::webhook_event_body(job));
  EXPECT_EQ(failed["type"], "image.failed");
  EXPECT_EQ(failed["data"]["error"]["code"], "backend_failed");
  EXPECT_EQ(failed["data"]["error"]["message"], "the backend failed");
  EXPECT_TRUE(failed["data"]["error"]["param"].is_null());
}

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("pixelgate-jobs-test-" + std::to_string(core::random_u64()));
    fs::create_directories(dir_);
    path_ = (dir_ / "jobs.sqlite3").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<jobs::JobStore> open() {
    auto store = jobs::JobStore::open(path_, clock_);
    EXPECT_TRUE(store.ok()) << store.error().message;
    return std::move(store).value();
  }

  static jobs::NewJob request(const std::string& principal, const std::string& body, const std::string& key = {}) {
    jobs::NewJob job;
    job.principal = principal;
    job.client_address = "127.0.0.1";
    job.idempotency_key = key;
    job.request_json = body;
    job.base_url = "http://127.0.0.1:8080";
    return job;
  }

  core::ManualClock clock_{1'800'000'000};
  fs::path dir_;
  std::string path_;
};

TEST_F(JobStoreTest, PersistsAcrossReopen) {
  std::string id;
  {
    auto store = open();
    auto created = store->create(request("key:a", R"({"prompt":"x"})"), 10);
    ASSERT_TRUE(created.ok()) << created.error().message;
    EXPECT_FALSE(created->replayed);
    id = created->job.id;
    EXPECT_EQ(id.rfind("job_", 0), 0u);
    EXPECT_EQ(id.size(), 4u + 22u);
  }
  auto store = open();
  auto found = store->find(id);
  ASSERT_TRUE(found.ok());
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->status, jobs::JobStatus::Queued);
  EXPECT_EQ((*found)->principal, "key:a");
  EXPECT_EQ((*found)->request_json, R"({"prompt":"x"})");
  EXPECT_EQ((*found)->created_unix, 1'800'000'000);
}

TEST_F(JobStoreTest, IdempotencyKeyReplaysOrRejects) {
  auto store = open();
  auto first = store->create(request("key:a", R"({"prompt":"x"})", "k1"), 10);
  ASSERT_TRUE(first.ok());
  auto again = store->create(request("key:a", R"({"prompt":"x"})", "k1"), 10);
  ASSERT_TRUE(again.ok());
  EXPECT_TRUE(again->replayed);
  EXPECT_EQ(again->job.id, first->job.id);

  auto different = store->create(request("key:a", R"({"prompt":"y"})", "k1"), 10);
  ASSERT_FALSE(different.ok());
  EXPECT_EQ(different.error().code, core::ErrorCode::IdempotencyKeyReused);
  EXPECT_EQ(core::http_status(different.error().code), 422);
  EXPECT_NE(different.error().message.find(first->job.id), std::string::npos);

  auto other_webhook = request("key:a", R"({"prompt":"x"})", "k1");
  other_webhook.webhook_url = "https://example.com/hook";
  EXPECT_FALSE(store->create(other_webhook, 10).ok());

  auto other_principal = store->create(request("key:b", R"({"prompt":"y"})", "k1"), 10);
  ASSERT_TRUE(other_principal.ok());
  EXPECT_FALSE(other_principal->replayed);
  EXPECT_NE(other_principal->job.id, first->job.id);
  EXPECT_EQ(*store->count(jobs::JobStatus::Queued), 2);
}

TEST_F(JobStoreTest, BoundsTheQueue) {
  auto store = open();
  ASSERT_TRUE(store->create(request("a", "{}"), 2).ok());
  ASSERT_TRUE(store->create(request("a", "{}"), 2).ok());
  auto full = store->create(request("a", "{}"), 2);
  ASSERT_FALSE(full.ok());
  EXPECT_EQ(full.error().code, core::ErrorCode::Unavailable);
  EXPECT_GT(full.error().retry_after_seconds, 0);

  // A job attached to a running generation takes no place in the queue.
  auto running = request("a", "{}");
  running.initial_status = jobs::JobStatus::Running;
  EXPECT_TRUE(store->create(running, 2).ok());
}

TEST_F(JobStoreTest, ClaimsInOrderAndReportsPositions) {
  auto store = open();
  auto a = store->create(request("a", "1"), 10);
  auto b = store->create(request("a", "2"), 10);
  auto c = store->create(request("a", "3"), 10);
  EXPECT_EQ(*store->queue_position(b->job), 2);
  EXPECT_EQ(*store->queue_position(c->job), 3);

  auto claimed = store->claim_next();
  ASSERT_TRUE(claimed.ok());
  ASSERT_TRUE(claimed->has_value());
  EXPECT_EQ((*claimed)->id, a->job.id);
  EXPECT_EQ((*claimed)->status, jobs::JobStatus::Running);
  EXPECT_EQ((*claimed)->attempts, 1);
  EXPECT_EQ(*store->queue_position(b->job), 1);
  EXPECT_EQ(*store->queue_position(c->job), 2);
}

TEST_F(JobStoreTest, FinishMarksWebhookPending) {
  auto store = open();
  auto with_hook = request("a", "{}");
  with_hook.webhook_url = "https://example.com/hook";
  auto created = store->create(with_hook, 10);
  ASSERT_TRUE(store->claim_next().ok());
  clock_.advance(5);
  auto finished = store->finish(created->job.id, {{std::string(64, 'b'), "image/png"}});
  ASSERT_TRUE(finished.ok());
  ASSERT_TRUE(finished->has_value());
  EXPECT_EQ((*finished)->status, jobs::JobStatus::Succeeded);
  EXPECT_EQ((*finished)->webhook_state, jobs::WebhookState::Pending);
  ASSERT_EQ((*finished)->images.size(), 1u);
  EXPECT_EQ((*finished)->images[0].content_type, "image/png");
  EXPECT_EQ((*finished)->updated_unix, 1'800'000'005);

  // A second outcome for a finished job changes nothing.
  auto again = store->fail(created->job.id, "{}");
  ASSERT_TRUE(again.ok());
  EXPECT_FALSE(again->has_value());

  auto pending = store->pending_webhooks(10);
  ASSERT_EQ(pending->size(), 1u);
  ASSERT_TRUE(store->set_webhook_state(created->job.id, jobs::WebhookState::Delivered, 2).ok());
  EXPECT_TRUE(store->pending_webhooks(10)->empty());
  EXPECT_EQ((*store->find(created->job.id))->webhook_attempts, 2);
}

TEST_F(JobStoreTest, RequeuesInterruptedJobsAfterRestart) {
  std::string first;
  std::string second;
  std::string worn_out;
  {
    auto store = open();
    worn_out = store->create(request("a", "0"), 10)->job.id;
    first = store->create(request("a", "1"), 10)->job.id;
    second = store->create(request("a", "2"), 10)->job.id;
    // The first job has been started (and interrupted) twice before.
    for (int i = 0; i < jobs::kMaxJobAttempts; ++i) {
      ASSERT_EQ((*store->claim_next())->id, worn_out);
      if (i + 1 < jobs::kMaxJobAttempts) {
        ASSERT_EQ(*store->requeue_interrupted(jobs::kMaxJobAttempts), 1);
      }
    }
    ASSERT_EQ((*store->claim_next())->id, first);
  }
  auto store = open();
  EXPECT_EQ(*store->requeue_interrupted(jobs::kMaxJobAttempts), 1);
  auto gave_up = *store->find(worn_out);
  EXPECT_EQ(gave_up->status, jobs::JobStatus::Failed);
  EXPECT_NE(gave_up->error_json.find("interrupted"), std::string::npos);
  // The requeued job keeps its place ahead of the one queued after it.
  EXPECT_EQ((*store->claim_next())->id, first);
  EXPECT_EQ((*store->find(first))->attempts, 2);
  EXPECT_EQ((*store->claim_next())->id, second);
}

TEST_F(JobStoreTest, DeferredJobWaitsForItsTime) {
  auto store = open();
  auto first = store->create(request("a", "1"), 10)->job.id;
  auto second = store->create(request("a", "2"), 10)->job.id;
  ASSERT_EQ((*store->claim_next())->id, first);
  ASSERT_TRUE(*store->defer(first, 10));
  EXPECT_FALSE(*store->defer(first, 10));  // no longer running

  auto waiting = *store->find(first);
  EXPECT_EQ(waiting->status, jobs::JobStatus::Queued);
  EXPECT_EQ(waiting->attempts, 0);
  EXPECT_EQ(waiting->deferrals, 1);
  // The later job may start meanwhile; the deferred one only once its time has come.
  ASSERT_EQ((*store->claim_next())->id, second);
  EXPECT_FALSE(store->claim_next()->has_value());
  clock_.advance(10);
  ASSERT_EQ((*store->claim_next())->id, first);
}

TEST_F(JobStoreTest, ExpiresOldFinishedJobsOnly) {
  auto store = open();
  auto old_done = store->create(request("a", "1"), 10)->job.id;
  auto old_hook = request("a", "2");
  old_hook.webhook_url = "https://example.com/hook";
  auto old_pending = store->create(old_hook, 10)->job.id;
  auto still_queued = store->create(request("a", "3"), 10)->job.id;
  store->claim_next();
  store->claim_next();
  store->finish(old_done, {});
  store->fail(old_pending, "{}");
  clock_.advance(7200);
  auto recent = store->create(request("a", "4"), 10)->job.id;

  EXPECT_EQ(*store->expire(clock_.unix_seconds() - 3600), 1);
  EXPECT_FALSE(store->find(old_done)->has_value());
  EXPECT_TRUE(store->find(old_pending)->has_value());  // its webhook is still to be sent
  EXPECT_TRUE(store->find(still_queued)->has_value());
  EXPECT_TRUE(store->find(recent)->has_value());
}

using pixelgate::test_support::HeldBackend;

generation::ResolvedRequest resolved_for(HeldBackend& backend, const std::string& prompt) {
  generation::ResolvedRequest resolved;
  resolved.spec.backend = "held";
  resolved.spec.backend_type = "held";
  resolved.spec.adapter_version = 1;
  resolved.spec.model = "held";
  resolved.spec.prompt = prompt;
  resolved.spec.width = 64;
  resolved.spec.height = 64;
  resolved.spec.seed = 1;
  resolved.spec.template_name = "default";
  resolved.spec.template_version = "1";
  resolved.key = generation::cache_key(resolved.spec);
  resolved.backend = &backend;
  return resolved;
}

TEST_F(JobStoreTest, RunnerKeepsOneSlotAndQueuesTheRest) {
  ASSERT_TRUE(imaging::initialize().ok());
  auto store = open();
  auto disk = storage::DiskStore::open((dir_ / "images").string());
  ASSERT_TRUE(disk.ok());
  storage::HotCache hot(1 << 20, 1 << 20);
  core::WorkerPool workers(2, 16);
  generation::ImageService images(**disk, hot, workers, {});
  HeldBackend backend;
  config::JobsConfig config;
  config.max_running = 1;
  jobs::JobRunner runner(config, *store, images, nullptr, [&backend](const jobs::Job& job) {
    return core::Result<std::vector<generation::ResolvedRequest>>(
        std::vector<generation::ResolvedRequest>{resolved_for(backend, job.request_json)});
  });
  ASSERT_TRUE(runner.start().ok());

  auto first = runner.submit(request("a", "first"));
  auto second = runner.submit(request("a", "second"));
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(second.ok());
  for (int i = 0; i < 200 && backend.calls.load() < 1; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  EXPECT_EQ(backend.calls.load(), 1);
  EXPECT_EQ((*store->find(first->job.id))->status, jobs::JobStatus::Running);
  auto waiting = *store->find(second->job.id);
  EXPECT_EQ(waiting->status, jobs::JobStatus::Queued);
  EXPECT_EQ(*store->queue_position(*waiting), 1);

  backend.release();
  for (int i = 0; i < 500; ++i) {
    if ((*store->find(second->job.id))->status == jobs::JobStatus::Succeeded) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ((*store->find(first->job.id))->status, jobs::JobStatus::Succeeded);
  auto done = *store->find(second->job.id);
  EXPECT_EQ(done->status, jobs::JobStatus::Succeeded);
  ASSERT_EQ(done->images.size(), 1u);
  EXPECT_EQ(done->images[0].key, resolved_for(backend, "second").key);
  EXPECT_EQ(backend.calls.load(), 2);
  runner.stop();
  images.drain(std::chrono::seconds(5));
  workers.stop();
}

// Rejects the first generation with a rate limit, then admits all.
class RateLimitOnceGuard final : public core::GenerationGuard {
 public:
  core::Result<std::int64_t> acquire(const core::GenerationSpec&, const std::string&, const core::GenerationCaller&,
                                     std::optional<double>) override {
    if (!rejected_.exchange(true)) {
      return core::Error{core::ErrorCode::ResourceExhausted, "too many new images requested", {}, 1};
    }
    return ++permits_;
  }
  double release(std::int64_t, bool, double) override { return 0; }

 private:
  std::atomic<bool> rejected_{false};
  std::atomic<std::int64_t> permits_{0};
};

TEST_F(JobStoreTest, RunnerDefersRateLimitedJob) {
  ASSERT_TRUE(imaging::initialize().ok());
  auto store = open();
  auto disk = storage::DiskStore::open((dir_ / "images").string());
  ASSERT_TRUE(disk.ok());
  storage::HotCache hot(1 << 20, 1 << 20);
  core::WorkerPool workers(2, 16);
  RateLimitOnceGuard guard;
  generation::ImageServiceOptions options;
  options.guard = &guard;
  generation::ImageService images(**disk, hot, workers, options);
  HeldBackend backend;
  backend.release();
  config::JobsConfig config;
  jobs::JobRunner runner(config, *store, images, nullptr, [&backend](const jobs::Job& job) {
    return core::Result<std::vector<generation::ResolvedRequest>>(
        std::vector<generation::ResolvedRequest>{resolved_for(backend, job.request_json)});
  });
  ASSERT_TRUE(runner.start().ok());

  auto created = runner.submit(request("a", "limited"));
  ASSERT_TRUE(created.ok());
  std::optional<jobs::Job> job;
  for (int i = 0; i < 300; ++i) {
    job = *store->find(created->job.id);
    if (job->deferrals > 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(job->status, jobs::JobStatus::Queued);
  EXPECT_EQ(job->deferrals, 1);
  EXPECT_EQ(job->not_before_unix, clock_.unix_seconds() + 1);
  EXPECT_EQ(backend.calls.load(), 0);

  clock_.advance(1);
  for (int i = 0; i < 500; ++i) {
    job = *store->find(created->job.id);
    if (job->status == jobs::JobStatus::Succeeded) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(job->status, jobs::JobStatus::Succeeded);
  EXPECT_EQ(job->attempts, 1);
  EXPECT_EQ(backend.calls.load(), 1);
  runner.stop();
  images.drain(std::chrono::seconds(5));
  workers.stop();
}

TEST(PreferHeader, ParsesWait) {
  EXPECT_EQ(api::parse_prefer_wait("wait=5"), 5);
  EXPECT_EQ(api::parse_prefer_wait("respond-async, wait=10"), 10);
  EXPECT_EQ(api::parse_prefer_wait("Wait = 3 ; foo=bar"), 3);
  EXPECT_EQ(api::parse_prefer_wait("wait=\"7\""), 7);
  EXPECT_EQ(api::parse_prefer_wait("wait=0"), 0);
  EXPECT_EQ(api::parse_prefer_wait("return=minimal"), std::nullopt);
  EXPECT_EQ(api::parse_prefer_wait("wait=-1"), std::nullopt);
  EXPECT_EQ(api::parse_prefer_wait("wait=1.5"), std::nullopt);
  EXPECT_EQ(api::parse_prefer_wait("wait=9999999999"), std::nullopt);
  EXPECT_EQ(api::parse_prefer_wait("waiting=4"), std::nullopt);
}

TEST(IdempotencyKeyHeader, AcceptsStringsAndTokens) {
  EXPECT_EQ(*api::parse_idempotency_key("\"8e03978e-40d5-43e8-bc93-6894a57f9324\""),
            "8e03978e-40d5-43e8-bc93-6894a57f9324");
  EXPECT_EQ(*api::parse_idempotency_key(" abc-1 "), "abc-1");
  EXPECT_EQ(*api::parse_idempotency_key(R"("a\"b")"), "a\"b");
  EXPECT_FALSE(api::parse_idempotency_key("").ok());
  EXPECT_FALSE(api::parse_idempotency_key("\"\"").ok());
  EXPECT_FALSE(api::parse_idempotency_key("\"open").ok());
  EXPECT_FALSE(api::parse_idempotency_key(std::string(256, 'k')).ok());
  EXPECT_FALSE(api::parse_idempotency_key("caf\xc3\xa9").ok());
  EXPECT_EQ(api::parse_idempotency_key("").error().param, "Idempotency-Key");
}

TEST(WarmLine, ParsesPathsAndJson) {
  auto path = cli::parse_warm_line("/generate-image?prompt=a+dog&size=512x256&seed=3");
  ASSERT_TRUE(path.ok()) << path.error().message;
  EXPECT_EQ(path->prompt, "a dog");
  EXPECT_EQ(path->width, 512);
  EXPECT_EQ(path->height, 256);
  EXPECT_EQ(path->seed, 3u);

  auto tmpl = cli::parse_warm_line("/v1/images/hero?prompt=hills&mood=calm");
  ASSERT_TRUE(tmpl.ok()) << tmpl.error().message;
  EXPECT_EQ(tmpl->template_name, "hero");
  EXPECT_EQ(tmpl->variables.at("mood"), "calm");

  auto url = cli::parse_warm_line("http://127.0.0.1:8080/generate-image?prompt=x");
  ASSERT_TRUE(url.ok());
  EXPECT_EQ(url->prompt, "x");

  auto json = cli::parse_warm_line(
      R"({"template": "hero", "prompt": "hills", "width": 640, "height": 320, "seed": 9, "variables": {"mood": "calm", "count": 2}})");
  ASSERT_TRUE(json.ok()) << json.error().message;
  EXPECT_EQ(json->template_name, "hero");
  EXPECT_EQ(json->width, 640);
  EXPECT_EQ(json->seed, 9u);
  EXPECT_EQ(json->variables.at("count"), "2");

  EXPECT_FALSE(cli::parse_warm_line("/other?prompt=x").ok());
  EXPECT_FALSE(cli::parse_warm_line("/generate-image?prompt=x&prompt=y").ok());
  EXPECT_FALSE(cli::parse_warm_line(R"({"prompt": 5})").ok());
  EXPECT_FALSE(cli::parse_warm_line(R"({"prompt": "x", "colour": "red"})").ok());
  EXPECT_FALSE(cli::parse_warm_line(R"({"prompt": "x", "seed": -1})").ok());
  EXPECT_FALSE(cli::parse_warm_line("{not json").ok());
}

TEST(JobsConfig, ReadsAndValidates) {
  auto config = config::load_from_string(
      "[jobs]\nmax_running = 2\nmax_wait_seconds = 5\n[webhooks]\nsecret_env = \"HOOK_SECRET\"\nbase_delay_ms = 20\n"
      "allow_private_addresses = true\n",
      "test.toml", {{"HOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_TRUE(config->jobs.enabled);
  EXPECT_EQ(config->jobs.max_running, 2);
  EXPECT_EQ(config->jobs.max_wait_seconds, 5);
  EXPECT_EQ(config->webhooks.base_delay_ms, 20);
  EXPECT_TRUE(config->webhooks.allow_private_addresses);
  EXPECT_EQ(config->webhooks.secret.value, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");

  auto defaults = config::load_from_string("", "test.toml", {});
  ASSERT_TRUE(defaults.ok());
  EXPECT_FALSE(defaults->webhooks.allow_private_addresses);
  EXPECT_TRUE(defaults->webhooks.secret.empty());

  auto error_of = [](const std::string& toml, const config::Environment& env) {
    auto result = config::load_from_string(toml, "test.toml", env);
    return result.ok() ? std::string{} : result.error().message;
  };
  EXPECT_NE(error_of("[jobs]\nmax_running = 0\n", {}).find("jobs.max_running: must be between 1"), std::string::npos);
  EXPECT_NE(error_of("[jobs]\nspeed = 1\n", {}).find("jobs.speed: unknown key"), std::string::npos);
  EXPECT_NE(error_of("[webhooks]\nsecret_env = \"HOOK\"\n", {}).find("webhooks.secret_env: the environment variable HOOK is unset"),
            std::string::npos);
  EXPECT_NE(error_of("[webhooks]\nsecret_env = \"HOOK\"\n", {{"HOOK", "plain-secret"}}).find("\"whsec_\""),
            std::string::npos);
  EXPECT_NE(error_of("[webhooks]\nsecret_env = \"HOOK\"\n", {{"HOOK", "whsec_aGVsbG8="}}).find("decodes to 5 bytes"),
            std::string::npos);
}

}  // namespace
