// Tests of the Redis-backed shared state against a real redis-server that
// each test starts on a free loopback port and stops at the end.
#include <gtest/gtest.h>

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "admission/budget.hpp"
#include "admission/gate.hpp"
#include "admission/rate_limiter.hpp"
#include "config/config.hpp"
#include "redis/redis_client.hpp"
#include "redis/redis_lease.hpp"
#include "redis/redis_rate_limiter.hpp"
#include "redis/redis_spend_counters.hpp"

extern char** environ;

using namespace pixelgate;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

using Clock = std::chrono::steady_clock;

std::string find_redis_server() {
  std::vector<std::string> directories;
  if (const char* path = std::getenv("PATH")) {
    std::stringstream stream(path);
    std::string directory;
    while (std::getline(stream, directory, ':')) directories.push_back(directory);
  }
  directories.insert(directories.end(), {"/usr/bin", "/usr/sbin", "/usr/local/bin"});
  for (const auto& directory : directories) {
    const std::string candidate = directory + "/redis-server";
    if (!directory.empty() && access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return {};
}

// Returns a TCP port on 127.0.0.1 that was free a moment ago.
int free_loopback_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return 0;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t size = sizeof(address);
  int port = 0;
  if (bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) == 0) {
    port = ntohs(address.sin_port);
  }
  close(fd);
  return port;
}

// A redis-server child process bound to 127.0.0.1, without persistence, in a
// temporary directory of its own.
class RedisServer {
 public:
  RedisServer(std::string binary, std::vector<std::string> extra_args)
      : binary_(std::move(binary)), extra_args_(std::move(extra_args)) {
    char pattern[] = "/tmp/pixelgate-redis-XXXXXX";
    if (mkdtemp(pattern) != nullptr) directory_ = pattern;
  }
  ~RedisServer() {
    stop();
    if (!directory_.empty()) fs::remove_all(directory_);
  }

  // Starts on a free port, trying three ports in case another process takes
  // the first between the check and the start.
  bool start_on_free_port() {
    for (int attempt = 0; attempt < 3; ++attempt) {
      if (start(free_loopback_port())) return true;
    }
    return false;
  }

  // Starts on `port` and waits up to 5 s for a reply to PING.
  bool start(int port) {
    if (port <= 0 || directory_.empty()) return false;
    port_ = port;
    std::vector<std::string> args = {binary_,       "--port",       std::to_string(port), "--bind",
                                     "127.0.0.1",   "--save",       "",                   "--appendonly",
                                     "no",          "--daemonize",  "no",                 "--dir",
                                     directory_,    "--logfile",    directory_ + "/redis.log"};
    args.insert(args.end(), extra_args_.begin(), extra_args_.end());
    std::vector<char*> argv;
    for (auto& arg : args) argv.push_back(arg.data());
    argv.push_back(nullptr);
    if (posix_spawn(&pid_, binary_.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
      pid_ = -1;
      return false;
    }

    const auto deadline = Clock::now() + 5s;
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return false;
      }
      if (answers_ping()) return true;
      std::this_thread::sleep_for(20ms);
    }
    stop();
    return false;
  }

  // Ends the process with SIGKILL, as a crash would, and waits for it.
  void kill_now() { signal_and_wait(SIGKILL); }

  // Asks the process to exit, then kills it after 5 s.
  void stop() {
    if (pid_ <= 0) return;
    kill(pid_, SIGCONT);
    if (!signal_and_wait(SIGTERM, 5s)) signal_and_wait(SIGKILL);
  }

  // Freezes the process, which keeps its sockets open but sends no replies.
  void pause() { kill(pid_, SIGSTOP); }
  void resume() { kill(pid_, SIGCONT); }

  int port() const { return port_; }

  std::string log_tail() const {
    std::ifstream file(directory_ + "/redis.log");
    std::stringstream text;
    text << file.rdbuf();
    const std::string all = text.str();
    return all.size() > 2000 ? all.substr(all.size() - 2000) : all;
  }

 private:
  bool answers_ping() const {
    const timeval timeout{0, 200'000};
    redisContext* context = redisConnectWithTimeout("127.0.0.1", port_, timeout);
    bool up = false;
    if (context != nullptr && context->err == 0) {
      redisSetTimeout(context, timeout);
      // Any reply counts, including NOAUTH from a server with a password.
      auto* reply = static_cast<redisReply*>(redisCommand(context, "PING"));
      up = reply != nullptr;
      if (reply != nullptr) freeReplyObject(reply);
    }
    if (context != nullptr) redisFree(context);
    return up;
  }

  bool signal_and_wait(int signal_number, std::chrono::milliseconds limit = 5s) {
    if (pid_ <= 0) return true;
    kill(pid_, signal_number);
    const auto deadline = Clock::now() + limit;
    while (Clock::now() < deadline) {
      int status = 0;
      if (waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return true;
      }
      std::this_thread::sleep_for(10ms);
    }
    return false;
  }

  std::string binary_;
  std::vector<std::string> extra_args_;
  std::string directory_;
  pid_t pid_ = -1;
  int port_ = 0;
};

std::int64_t elapsed_ms(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

class RedisTest : public ::testing::Test {
 protected:
  static constexpr const char* kPassword = "correct-horse-battery";

  void SetUp() override {
    // As in main(): a write to a connection that a killed server reset must
    // fail with EPIPE instead of ending the test process.
    std::signal(SIGPIPE, SIG_IGN);
    const std::string binary = find_redis_server();
    ASSERT_FALSE(binary.empty()) << "redis-server is not installed; run scripts/install-deps.sh --test";
    std::vector<std::string> extra;
    if (with_password()) extra = {"--requirepass", kPassword};
    server_ = std::make_unique<RedisServer>(binary, extra);
    ASSERT_TRUE(server_->start_on_free_port()) << "redis-server did not start; its log:\n" << server_->log_tail();
  }

  virtual bool with_password() const { return false; }

  config::RedisConfig redis_config(int database = 0) const {
    config::RedisConfig config;
    config.url = "redis://127.0.0.1:" + std::to_string(server_->port()) + "/" + std::to_string(database);
    config.key_prefix = "test:";
    config.connect_timeout_ms = 300;
    config.command_timeout_ms = 300;
    config.pool_size = 4;
    if (with_password()) config.password.value = kPassword;
    return config;
  }

  std::unique_ptr<redis::RedisClient> make_client(const config::RedisConfig& config) const {
    auto client = redis::RedisClient::create(config);
    EXPECT_TRUE(client.ok()) << client.error().message;
    return client.ok() ? std::move(client).value() : nullptr;
  }

  std::unique_ptr<redis::RedisClient> make_client() const { return make_client(redis_config()); }

  // Restarts the killed server on the same port and waits until `client`
  // gets through again, for at most 5 s.
  bool restart_and_reconnect(redis::RedisClient& client) {
    if (!server_->start(server_->port())) return false;
    const auto deadline = Clock::now() + 5s;
    while (Clock::now() < deadline) {
      if (client.ping().ok()) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  std::unique_ptr<RedisServer> server_;
};

class RedisPasswordTest : public RedisTest {
 protected:
  bool with_password() const override { return true; }
};

}  // namespace

// --- URL parsing ----------------------------------------------------------

TEST(RedisUrl, ParsesTcpAndUnixForms) {
  auto full = redis::parse_redis_url("redis://127.0.0.1:6380/2");
  ASSERT_TRUE(full.ok()) << full.error().message;
  EXPECT_EQ(full->host, "127.0.0.1");
  EXPECT_EQ(full->port, 6380);
  EXPECT_EQ(full->database, 2);
  EXPECT_EQ(full->display(), "127.0.0.1:6380");

  auto defaults = redis::parse_redis_url("redis://localhost");
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->port, 6379);
  EXPECT_EQ(defaults->database, 0);

  auto ipv6 = redis::parse_redis_url("redis://[::1]:7000/1");
  ASSERT_TRUE(ipv6.ok()) << ipv6.error().message;
  EXPECT_EQ(ipv6->host, "::1");
  EXPECT_EQ(ipv6->port, 7000);
  EXPECT_EQ(ipv6->display(), "[::1]:7000");

  auto socket = redis::parse_redis_url("unix:///run/redis/redis.sock?db=3");
  ASSERT_TRUE(socket.ok()) << socket.error().message;
  EXPECT_EQ(socket->socket_path, "/run/redis/redis.sock");
  EXPECT_EQ(socket->database, 3);
  EXPECT_EQ(socket->display(), "unix:/run/redis/redis.sock");
}

TEST(RedisUrl, RejectsPasswordInUrl) {
  auto parsed = redis::parse_redis_url("redis://:hunter2@127.0.0.1:6379/0");
  ASSERT_FALSE(parsed.ok());
  EXPECT_EQ(parsed.error().code, core::ErrorCode::InvalidArgument);
  EXPECT_EQ(parsed.error().message.find("hunter2"), std::string::npos);
  EXPECT_NE(parsed.error().message.find("password_env"), std::string::npos);
}

TEST(RedisUrl, RejectsMalformedUrls) {
  for (const char* url : {"", "http://127.0.0.1:6379", "redis://", "redis://127.0.0.1:0", "redis://127.0.0.1:70000",
                          "redis://127.0.0.1:6379/x", "redis://::1:6379", "redis://[::1", "unix://relative.sock",
                          "unix:///run/redis.sock?database=1"}) {
    auto parsed = redis::parse_redis_url(url);
    EXPECT_FALSE(parsed.ok()) << url;
  }
}

// --- Client ---------------------------------------------------------------

TEST_F(RedisTest, ClientRunsCommandsWithPrefix) {
  auto client = make_client();
  ASSERT_TRUE(client);
  EXPECT_TRUE(client->ping().ok());
  EXPECT_EQ(client->key("a"), "test:a");

  auto set = client->command({"SET", client->key("a"), "value with spaces\r\n"});
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ(set->type, redis::Reply::Type::Status);
  auto get = client->command({"GET", "test:a"});
  ASSERT_TRUE(get.ok());
  EXPECT_EQ(get->type, redis::Reply::Type::String);
  EXPECT_EQ(get->text, "value with spaces\r\n");
  auto missing = client->command({"GET", "test:missing"});
  ASSERT_TRUE(missing.ok());
  EXPECT_TRUE(missing->is_nil());
}

TEST_F(RedisTest, ClientSelectsDatabase) {
  auto in_three = make_client(redis_config(3));
  auto in_zero = make_client(redis_config(0));
  ASSERT_TRUE(in_three);
  ASSERT_TRUE(in_zero);
  ASSERT_TRUE(in_three->command({"SET", "test:db", "three"}).ok());

  auto from_zero = in_zero->command({"GET", "test:db"});
  ASSERT_TRUE(from_zero.ok());
  EXPECT_TRUE(from_zero->is_nil());
  auto from_three = make_client(redis_config(3))->command({"GET", "test:db"});
  ASSERT_TRUE(from_three.ok());
  EXPECT_EQ(from_three->text, "three");
}

TEST_F(RedisTest, ErrorReplyIsInternal) {
  auto client = make_client();
  ASSERT_TRUE(client->command({"SET", "test:text", "abc"}).ok());
  auto incr = client->command({"INCR", "test:text"});
  ASSERT_FALSE(incr.ok());
  EXPECT_EQ(incr.error().code, core::ErrorCode::Internal);
  EXPECT_NE(incr.error().message.find("INCR"), std::string::npos);
  // The connection stays usable after an error reply.
  EXPECT_TRUE(client->ping().ok());
}

TEST_F(RedisTest, ScriptReloadsAfterFlush) {
  auto client = make_client();
  const redis::Script script("return tonumber(ARGV[1]) + 1");
  auto first = client->run_script(script, {}, {"41"});
  ASSERT_TRUE(first.ok()) << first.error().message;
  EXPECT_EQ(first->integer, 42);

  // Without the cached script EVALSHA fails with NOSCRIPT and EVAL runs it.
  ASSERT_TRUE(client->command({"SCRIPT", "FLUSH"}).ok());
  auto exists = client->command({"SCRIPT", "EXISTS", script.sha1()});
  ASSERT_TRUE(exists.ok());
  ASSERT_EQ(exists->elements.size(), 1u);
  EXPECT_EQ(exists->elements[0].integer, 0);
  auto second = client->run_script(script, {}, {"1"});
  ASSERT_TRUE(second.ok()) << second.error().message;
  EXPECT_EQ(second->integer, 2);
}

TEST_F(RedisTest, PoolBoundsConnections) {
  config::RedisConfig config = redis_config();
  config.pool_size = 2;
  auto client = make_client(config);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 50; ++i) {
        if (!client->command({"INCR", "test:count"}).ok()) ++failures;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(failures.load(), 0);

  auto count = client->command({"GET", "test:count"});
  ASSERT_TRUE(count.ok());
  EXPECT_EQ(count->text, "400");
  auto clients = client->command({"CLIENT", "LIST"});
  ASSERT_TRUE(clients.ok());
  const auto lines = std::count(clients->text.begin(), clients->text.end(), '\n');
  EXPECT_GE(lines, 1);
  EXPECT_LE(lines, 2);
}

TEST_F(RedisTest, FrozenServerTimesOut) {
  auto client = make_client();
  ASSERT_TRUE(client->ping().ok());
  server_->pause();
  const auto start = Clock::now();
  auto reply = client->command({"GET", "test:a"});
  const auto waited = elapsed_ms(start);
  server_->resume();

  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.error().code, core::ErrorCode::Unavailable);
  EXPECT_NE(reply.error().message.find("127.0.0.1:" + std::to_string(server_->port())), std::string::npos)
      << reply.error().message;
  EXPECT_NE(reply.error().message.find("timed out after 300 ms"), std::string::npos) << reply.error().message;
  EXPECT_GE(reply.error().retry_after_seconds, 1);
  EXPECT_LT(waited, 1500) << "command_timeout_ms is 300";

  // The timed-out connection is dropped and a new one works.
  bool recovered = false;
  for (int i = 0; i < 50 && !recovered; ++i) {
    recovered = client->ping().ok();
    if (!recovered) std::this_thread::sleep_for(50ms);
  }
  EXPECT_TRUE(recovered);
}

TEST_F(RedisTest, ReconnectsAfterRestart) {
  auto client = make_client();
  ASSERT_TRUE(client->command({"SET", "test:a", "1"}).ok());
  server_->kill_now();

  for (int i = 0; i < 3; ++i) {
    const auto start = Clock::now();
    auto ping = client->ping();
    EXPECT_LT(elapsed_ms(start), 1000);
    ASSERT_FALSE(ping.ok());
    EXPECT_EQ(ping.error().code, core::ErrorCode::Unavailable);
  }
  ASSERT_TRUE(restart_and_reconnect(*client)) << server_->log_tail();
  auto set = client->command({"SET", "test:a", "2"});
  EXPECT_TRUE(set.ok());
}

TEST_F(RedisTest, UnreachableServerFailsFast) {
  config::RedisConfig config = redis_config();
  server_->kill_now();
  auto client = make_client(config);
  ASSERT_TRUE(client);  // creating a client does not need the server
  const auto start = Clock::now();
  for (int i = 0; i < 20; ++i) {
    auto reply = client->command({"GET", "test:a"});
    ASSERT_FALSE(reply.ok());
    EXPECT_EQ(reply.error().code, core::ErrorCode::Unavailable);
  }
  EXPECT_LT(elapsed_ms(start), 2000);
}

TEST_F(RedisPasswordTest, AuthenticatesWithPassword) {
  auto client = make_client();
  auto ping = client->ping();
  EXPECT_TRUE(ping.ok()) << ping.error().message;
}

TEST_F(RedisPasswordTest, WrongPasswordIsUnavailableWithoutSecret) {
  config::RedisConfig config = redis_config();
  config.password.value = "wrong-password-value";
  auto client = make_client(config);
  auto ping = client->ping();
  ASSERT_FALSE(ping.ok());
  EXPECT_EQ(ping.error().code, core::ErrorCode::Unavailable);
  EXPECT_NE(ping.error().message.find("AUTH"), std::string::npos) << ping.error().message;
  EXPECT_EQ(ping.error().message.find("wrong-password-value"), std::string::npos);
  EXPECT_EQ(ping.error().message.find(kPassword), std::string::npos);
}

TEST_F(RedisPasswordTest, MissingPasswordIsUnavailable) {
  config::RedisConfig config = redis_config();
  config.password.value.clear();
  auto client = make_client(config);
  auto reply = client->command({"GET", "test:a"});
  ASSERT_FALSE(reply.ok());
  EXPECT_EQ(reply.error().code, core::ErrorCode::Unavailable);
  EXPECT_NE(reply.error().message.find("NOAUTH"), std::string::npos) << reply.error().message;
}

// --- Rate limiter -----------------------------------------------------------

TEST_F(RedisTest, RateLimiterMatchesInMemoryDecisions) {
  auto client = make_client();
  redis::RedisRateLimiter shared(*client);
  core::ManualClock clock;
  admission::InMemoryRateLimiter local(clock);
  // At 0.01 tokens per second the few milliseconds between Redis calls add
  // no whole token, so both limiters see a frozen clock.
  const admission::RatePolicy policy{"requests", 0.01, 3.0};
  for (int i = 0; i < 5; ++i) {
    const auto expected = local.consume("a", policy);
    const auto actual = shared.consume("a", policy);
    EXPECT_EQ(actual.allowed, expected.allowed) << "consume " << i;
    EXPECT_EQ(actual.remaining, expected.remaining) << "consume " << i;
    EXPECT_EQ(actual.reset_seconds, expected.reset_seconds) << "consume " << i;
    EXPECT_EQ(actual.retry_after_seconds, expected.retry_after_seconds) << "consume " << i;
    EXPECT_FALSE(actual.unavailable);
  }
}

TEST_F(RedisTest, RateLimiterRejectsWithRetryAfter) {
  auto client = make_client();
  redis::RedisRateLimiter limiter(*client);
  const admission::RatePolicy policy{"generations", 0.5, 1.0};
  auto first = limiter.consume("gen|a", policy);
  EXPECT_TRUE(first.allowed);
  EXPECT_EQ(first.remaining, 0);
  EXPECT_EQ(first.reset_seconds, 2);
  auto second = limiter.consume("gen|a", policy);
  EXPECT_FALSE(second.allowed);
  EXPECT_FALSE(second.unavailable);
  EXPECT_EQ(second.retry_after_seconds, 2);
  // Another bucket is independent.
  EXPECT_TRUE(limiter.consume("gen|b", policy).allowed);
}

TEST_F(RedisTest, RateLimiterRefillsOverTime) {
  auto client = make_client();
  redis::RedisRateLimiter limiter(*client);
  const admission::RatePolicy policy{"requests", 10.0, 2.0};
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  EXPECT_FALSE(limiter.consume("a", policy).allowed);

  std::this_thread::sleep_for(150ms);  // 1.5 tokens at 10 per second
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  // At most the bucket size can have come back, however late the sleep ended.
  int allowed = 0;
  for (int i = 0; i < 3; ++i) allowed += limiter.consume("a", policy).allowed ? 1 : 0;
  EXPECT_LE(allowed, 1);
}

TEST_F(RedisTest, RateLimiterRefundReturnsToken) {
  auto client = make_client();
  redis::RedisRateLimiter limiter(*client);
  const admission::RatePolicy policy{"generations", 0.01, 1.0};
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  EXPECT_FALSE(limiter.consume("a", policy).allowed);
  limiter.refund("a", policy);
  EXPECT_TRUE(limiter.consume("a", policy).allowed);
  EXPECT_FALSE(limiter.consume("a", policy).allowed);
}

TEST_F(RedisTest, RateLimiterBucketExpiresWhenFull) {
  auto client = make_client();
  redis::RedisRateLimiter limiter(*client);
  const admission::RatePolicy policy{"requests", 10.0, 2.0};
  ASSERT_TRUE(limiter.consume("a", policy).allowed);
  auto ttl = client->command({"PTTL", "test:rl:a"});
  ASSERT_TRUE(ttl.ok());
  // Full again 0.1 s later; the key lives one second longer.
  EXPECT_GT(ttl->integer, 0);
  EXPECT_LE(ttl->integer, 1100);
}

TEST_F(RedisTest, RateLimiterReplicasShareBucket) {
  auto client_a = make_client();
  auto client_b = make_client();
  redis::RedisRateLimiter replica_a(*client_a);
  redis::RedisRateLimiter replica_b(*client_b);
  const admission::RatePolicy policy{"requests", 0.001, 3.0};
  EXPECT_TRUE(replica_a.consume("shared", policy).allowed);
  EXPECT_TRUE(replica_b.consume("shared", policy).allowed);
  EXPECT_TRUE(replica_a.consume("shared", policy).allowed);
  EXPECT_FALSE(replica_b.consume("shared", policy).allowed);
  EXPECT_FALSE(replica_a.consume("shared", policy).allowed);
}

TEST_F(RedisTest, RateLimiterThreadsNeverExceedBurst) {
  auto client_a = make_client();
  auto client_b = make_client();
  redis::RedisRateLimiter replica_a(*client_a);
  redis::RedisRateLimiter replica_b(*client_b);
  // 0.001 tokens per second adds no whole token during the test.
  const admission::RatePolicy policy{"requests", 0.001, 50.0};
  std::atomic<int> allowed{0};
  std::atomic<int> unavailable{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      redis::RedisRateLimiter& limiter = t % 2 == 0 ? replica_a : replica_b;
      for (int i = 0; i < 25; ++i) {
        const auto decision = limiter.consume("busy", policy);
        if (decision.allowed) ++allowed;
        if (decision.unavailable) ++unavailable;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(unavailable.load(), 0);
  EXPECT_EQ(allowed.load(), 50);
}

TEST_F(RedisTest, RateLimiterUnavailableWhenDown) {
  auto client = make_client();
  redis::RedisRateLimiter limiter(*client);
  const admission::RatePolicy policy{"requests", 1.0, 5.0};
  ASSERT_TRUE(limiter.consume("a", policy).allowed);
  server_->kill_now();

  const auto start = Clock::now();
  const auto decision = limiter.consume("a", policy);
  EXPECT_LT(elapsed_ms(start), 1000);
  EXPECT_FALSE(decision.allowed);
  EXPECT_TRUE(decision.unavailable);
  EXPECT_GE(decision.retry_after_seconds, 1);
  limiter.refund("a", policy);  // logs, does not throw

  // An unlimited policy needs no Redis call.
  const auto unlimited = limiter.consume("a", {"requests", 0, 0});
  EXPECT_TRUE(unlimited.allowed);
  EXPECT_FALSE(unlimited.unavailable);

  ASSERT_TRUE(restart_and_reconnect(*client));
  const auto after = limiter.consume("a", policy);
  EXPECT_TRUE(after.allowed);
  EXPECT_FALSE(after.unavailable);
}

// --- Spend counters -----------------------------------------------------------

namespace {

constexpr const char* kDay = "2027-01-15";
constexpr const char* kMonth = "2027-01";

}  // namespace

TEST_F(RedisTest, SpendConcurrentReservesStopAtLimit) {
  auto client = make_client();
  core::ManualClock clock{1'800'000'000};
  redis::RedisSpendCounters counters(*client, clock);
  const admission::SpendLimits caller{1.00, 0};
  std::atomic<int> reserved{0};
  std::atomic<int> exhausted{0};
  std::atomic<int> other{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 25; ++i) {
        auto status = counters.reserve("key:site", kDay, kMonth, 0.04, caller, {});
        if (status.ok()) ++reserved;
        else if (status.error().code == core::ErrorCode::BudgetExhausted) ++exhausted;
        else ++other;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(reserved.load(), 25);
  EXPECT_EQ(exhausted.load(), 175);
  EXPECT_EQ(other.load(), 0);

  auto spent = counters.spent("key:site", kDay);
  ASSERT_TRUE(spent.ok());
  EXPECT_NEAR(*spent, 1.00, 1e-9);
  auto everyone = counters.spent("*", kMonth);
  ASSERT_TRUE(everyone.ok());
  EXPECT_NEAR(*everyone, 1.00, 1e-9);
}

TEST_F(RedisTest, SpendRejectionMatchesLedger) {
  auto client = make_client();
  core::ManualClock clock{1'800'000'000};  // 2027-01-15T08:00:00Z
  redis::RedisSpendCounters counters(*client, clock);
  auto ledger = std::move(admission::BudgetLedger::open(":memory:", clock)).value();

  const admission::SpendLimits caller{0.05, 0};
  ASSERT_TRUE(counters.reserve("kid:k1", kDay, kMonth, 0.04, caller, {}).ok());
  ASSERT_TRUE(ledger->reserve("kid:k1", "b", "m", "img", 0.04, caller, {}).ok());
  auto shared = counters.reserve("kid:k1", kDay, kMonth, 0.04, caller, {});
  auto local = ledger->reserve("kid:k1", "b", "m", "img", 0.04, caller, {});
  ASSERT_FALSE(shared.ok());
  ASSERT_FALSE(local.ok());
  EXPECT_EQ(shared.error().code, core::ErrorCode::BudgetExhausted);
  EXPECT_EQ(shared.error().message, local.error().message);
  EXPECT_EQ(shared.error().message, "this caller's daily spend budget of $0.05 is used up until the end of "
                                    "2027-01-15 UTC");
  EXPECT_EQ(shared.error().retry_after_seconds, local.error().retry_after_seconds);
  EXPECT_EQ(shared.error().retry_after_seconds, 16 * 3600);
}

TEST_F(RedisTest, SpendGlobalLimitCoversEveryone) {
  auto client = make_client();
  core::ManualClock clock;
  redis::RedisSpendCounters counters(*client, clock);
  const admission::SpendLimits global{0, 0.10};
  ASSERT_TRUE(counters.reserve("a", kDay, kMonth, 0.06, {}, global).ok());
  auto second = counters.reserve("b", kDay, kMonth, 0.06, {}, global);
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.error().message.find("global monthly"), std::string::npos) << second.error().message;
  EXPECT_NE(second.error().message.find("2027-01 UTC"), std::string::npos);
  // Nothing was added for the rejected reservation.
  auto b_spent = counters.spent("b", kMonth);
  ASSERT_TRUE(b_spent.ok());
  EXPECT_EQ(*b_spent, 0.0);
  EXPECT_TRUE(counters.reserve("b", kDay, kMonth, 0.04, {}, global).ok());
}

TEST_F(RedisTest, SpendAdjustMovesAllTotals) {
  auto client = make_client();
  core::ManualClock clock;
  redis::RedisSpendCounters counters(*client, clock);
  ASSERT_TRUE(counters.reserve("a", kDay, kMonth, 0.50, {}, {}).ok());
  counters.adjust("a", kDay, kMonth, -0.20);
  for (const auto& [principal, period] : std::vector<std::pair<std::string, std::string>>{
           {"a", kDay}, {"a", kMonth}, {"*", kDay}, {"*", kMonth}}) {
    auto spent = counters.spent(principal, period);
    ASSERT_TRUE(spent.ok());
    EXPECT_NEAR(*spent, 0.30, 1e-9) << principal << " " << period;
  }
  counters.adjust("a", kDay, kMonth, 0.05);
  auto spent = counters.spent("a", kDay);
  ASSERT_TRUE(spent.ok());
  EXPECT_NEAR(*spent, 0.35, 1e-9);
}

TEST_F(RedisTest, SpendTotalsExpire) {
  auto client = make_client();
  core::ManualClock clock;
  redis::RedisSpendCounters counters(*client, clock);
  ASSERT_TRUE(counters.reserve("a", kDay, kMonth, 0.01, {}, {}).ok());
  auto day_ttl = client->command({"PTTL", std::string("test:spend:a:") + kDay});
  auto month_ttl = client->command({"PTTL", std::string("test:spend:*:") + kMonth});
  ASSERT_TRUE(day_ttl.ok());
  ASSERT_TRUE(month_ttl.ok());
  constexpr long long kDayMs = 24LL * 3600 * 1000;
  EXPECT_GT(day_ttl->integer, 3 * kDayMs - 60'000);
  EXPECT_LE(day_ttl->integer, 3 * kDayMs);
  EXPECT_GT(month_ttl->integer, 40 * kDayMs - 60'000);
  EXPECT_LE(month_ttl->integer, 40 * kDayMs);
}

TEST_F(RedisTest, SpendUnavailableWhenDown) {
  auto client = make_client();
  core::ManualClock clock;
  redis::RedisSpendCounters counters(*client, clock);
  server_->kill_now();
  auto status = counters.reserve("a", kDay, kMonth, 0.01, {1.0, 0}, {});
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().code, core::ErrorCode::Unavailable);
  EXPECT_EQ(core::http_status(status.error().code), 503);
  counters.adjust("a", kDay, kMonth, -0.01);  // logs, does not throw
  auto spent = counters.spent("a", kDay);
  ASSERT_FALSE(spent.ok());
  EXPECT_EQ(spent.error().code, core::ErrorCode::Unavailable);
}

// --- Budget ledger with shared counters ------------------------------------------

TEST_F(RedisTest, LedgersShareLimitAcrossReplicas) {
  auto client_a = make_client();
  auto client_b = make_client();
  core::ManualClock clock{1'800'000'000};
  redis::RedisSpendCounters counters_a(*client_a, clock);
  redis::RedisSpendCounters counters_b(*client_b, clock);
  auto ledger_a = std::move(admission::BudgetLedger::open(":memory:", clock)).value();
  auto ledger_b = std::move(admission::BudgetLedger::open(":memory:", clock)).value();
  ledger_a->set_shared_counters(&counters_a);
  ledger_b->set_shared_counters(&counters_b);

  const admission::SpendLimits caller{0.10, 0};
  auto first = ledger_a->reserve("key:site", "b", "m", "img1", 0.04, caller, {});
  auto second = ledger_b->reserve("key:site", "b", "m", "img2", 0.04, caller, {});
  auto third = ledger_a->reserve("key:site", "b", "m", "img3", 0.04, caller, {});
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE(second.ok());
  ASSERT_FALSE(third.ok());
  EXPECT_EQ(third.error().code, core::ErrorCode::BudgetExhausted);
  EXPECT_NEAR(ledger_a->spent_today("key:site"), 0.08, 1e-9);
  EXPECT_NEAR(ledger_b->spent_today("key:site"), 0.08, 1e-9);
  EXPECT_NEAR(ledger_b->spent_this_month(""), 0.08, 1e-9);

  ledger_a->settle(*first, 0.01);  // 0.03 cheaper than reserved
  EXPECT_NEAR(ledger_b->spent_today("key:site"), 0.05, 1e-9);
  ledger_b->refund(*second);
  EXPECT_NEAR(ledger_a->spent_today("key:site"), 0.01, 1e-9);
  EXPECT_TRUE(ledger_b->reserve("key:site", "b", "m", "img4", 0.09, caller, {}).ok());

  // The SQLite rows are still written for reports.
  auto report = ledger_a->report("key");
  ASSERT_TRUE(report.ok());
  ASSERT_EQ(report->size(), 1u);
  EXPECT_EQ((*report)[0].images, 1);
  EXPECT_NEAR((*report)[0].usd, 0.01, 1e-9);
}

TEST_F(RedisTest, LedgerConcurrentReservesStopAtLimit) {
  auto client = make_client();
  core::ManualClock clock{1'800'000'000};
  redis::RedisSpendCounters counters(*client, clock);
  auto ledger = std::move(admission::BudgetLedger::open(":memory:", clock)).value();
  ledger->set_shared_counters(&counters);
  const admission::SpendLimits global{1.00, 0};
  std::atomic<int> reserved{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 25; ++i) {
        const std::string principal = "kid:k" + std::to_string(t);
        if (ledger->reserve(principal, "b", "m", "img", 0.04, {}, global).ok()) ++reserved;
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(reserved.load(), 25);
  EXPECT_NEAR(ledger->spent_today(""), 1.00, 1e-9);
}

TEST_F(RedisTest, LedgerFailsClosedWhenDown) {
  auto client = make_client();
  core::ManualClock clock{1'800'000'000};
  redis::RedisSpendCounters counters(*client, clock);
  auto ledger = std::move(admission::BudgetLedger::open(":memory:", clock)).value();
  ledger->set_shared_counters(&counters);
  auto held = ledger->reserve("a", "b", "m", "img", 0.02, {}, {});
  ASSERT_TRUE(held.ok());
  // Another replica's spend shows in the shared total.
  ASSERT_TRUE(counters.reserve("a", kDay, kMonth, 0.03, {}, {}).ok());
  EXPECT_NEAR(ledger->spent_today("a"), 0.05, 1e-9);
  server_->kill_now();

  auto reservation = ledger->reserve("a", "b", "m", "img", 0.01, {}, {});
  ASSERT_FALSE(reservation.ok());
  EXPECT_EQ(reservation.error().code, core::ErrorCode::Unavailable);
  EXPECT_GE(reservation.error().retry_after_seconds, 1);
  // The client-facing message does not reveal the Redis address.
  EXPECT_EQ(reservation.error().message.find("127.0.0.1"), std::string::npos) << reservation.error().message;
  // With the shared total unreadable, this replica's own total is shown.
  EXPECT_NEAR(ledger->spent_today("a"), 0.02, 1e-9);
  ledger->refund(*held);  // the Redis adjustment fails and is logged
  EXPECT_NEAR(ledger->spent_today("a"), 0.0, 1e-9);
}

// --- Lease ----------------------------------------------------------------------

TEST_F(RedisTest, LeaseOnlyOneAcquirerWins) {
  auto client_a = make_client();
  auto client_b = make_client();
  redis::RedisLease replica_a(*client_a);
  redis::RedisLease replica_b(*client_b);
  std::atomic<int> winners{0};
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      redis::RedisLease& lease = t % 2 == 0 ? replica_a : replica_b;
      auto handle = lease.try_acquire("img", 10s);
      if (!handle.ok()) ++errors;
      else if (handle->has_value()) ++winners;
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_EQ(winners.load(), 1);
}

TEST_F(RedisTest, LeaseRefusedAcquireUsesNoFence) {
  auto client = make_client();
  redis::RedisLease lease(*client);
  auto first = lease.try_acquire("img", 10s);
  ASSERT_TRUE(first.ok()) << first.error().message;
  ASSERT_TRUE(first->has_value());
  EXPECT_EQ((*first)->token.size(), 32u);  // 128 random bits in hexadecimal
  for (int i = 0; i < 3; ++i) {
    auto refused = lease.try_acquire("img", 10s);
    ASSERT_TRUE(refused.ok());
    EXPECT_FALSE(refused->has_value());
  }
  lease.release("img", **first);
  auto second = lease.try_acquire("img", 10s);
  ASSERT_TRUE(second.ok()) << second.error().message;
  ASSERT_TRUE(second->has_value());
  EXPECT_EQ((*second)->fence, (*first)->fence + 1);
  EXPECT_NE((*second)->token, (*first)->token);
}

TEST_F(RedisTest, LeaseRenewExtends) {
  auto client = make_client();
  redis::RedisLease lease(*client);
  auto handle = lease.try_acquire("img", 300ms);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  ASSERT_TRUE(handle->has_value());
  auto renewed = lease.renew("img", **handle, 10s);
  ASSERT_TRUE(renewed.ok());
  EXPECT_TRUE(*renewed);
  auto ttl = client->command({"PTTL", "test:lease:img"});
  ASSERT_TRUE(ttl.ok());
  EXPECT_GT(ttl->integer, 5000);
  std::this_thread::sleep_for(400ms);  // past the first lease time
  auto other = lease.try_acquire("img", 10s);
  ASSERT_TRUE(other.ok());
  EXPECT_FALSE(other->has_value());
}

TEST_F(RedisTest, LeaseStaleHandleChangesNothing) {
  auto client = make_client();
  redis::RedisLease lease(*client);
  auto handle = lease.try_acquire("img", 10s);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  ASSERT_TRUE(handle->has_value());

  core::LeaseHandle wrong_token = **handle;
  wrong_token.token = std::string(32, '0');
  core::LeaseHandle wrong_fence = **handle;
  wrong_fence.fence += 1;
  for (const auto& stale : {wrong_token, wrong_fence}) {
    auto renewed = lease.renew("img", stale, 10s);
    ASSERT_TRUE(renewed.ok());
    EXPECT_FALSE(*renewed);
    lease.release("img", stale);
    auto other = lease.try_acquire("img", 10s);
    ASSERT_TRUE(other.ok());
    EXPECT_FALSE(other->has_value()) << "a stale handle released the lease";
  }
}

TEST_F(RedisTest, LeaseExpiryLetsAnotherAcquire) {
  auto client_a = make_client();
  auto client_b = make_client();
  redis::RedisLease replica_a(*client_a);
  redis::RedisLease replica_b(*client_b);
  auto first = replica_a.try_acquire("img", 100ms);
  ASSERT_TRUE(first.ok()) << first.error().message;
  ASSERT_TRUE(first->has_value());

  std::optional<core::LeaseHandle> second;
  const auto deadline = Clock::now() + 3s;
  while (!second && Clock::now() < deadline) {
    auto attempt = replica_b.try_acquire("img", 10s);
    ASSERT_TRUE(attempt.ok());
    second = *attempt;
    if (!second) std::this_thread::sleep_for(20ms);
  }
  ASSERT_TRUE(second.has_value()) << "the lease did not expire within 3 s";
  EXPECT_GT(second->fence, (*first)->fence);

  // The first holder has lost the lease and cannot disturb the new one.
  auto renewed = replica_a.renew("img", **first, 10s);
  ASSERT_TRUE(renewed.ok());
  EXPECT_FALSE(*renewed);
  replica_a.release("img", **first);
  auto held = replica_b.renew("img", *second, 10s);
  ASSERT_TRUE(held.ok());
  EXPECT_TRUE(*held);
}

TEST_F(RedisTest, LeaseUnavailableWhenDown) {
  auto client = make_client();
  redis::RedisLease lease(*client);
  auto handle = lease.try_acquire("img", 10s);
  ASSERT_TRUE(handle.ok()) << handle.error().message;
  ASSERT_TRUE(handle->has_value());
  server_->kill_now();

  auto acquire = lease.try_acquire("other", 10s);
  ASSERT_FALSE(acquire.ok());
  EXPECT_EQ(acquire.error().code, core::ErrorCode::Unavailable);
  auto renew = lease.renew("img", **handle, 10s);
  ASSERT_FALSE(renew.ok());
  EXPECT_EQ(renew.error().code, core::ErrorCode::Unavailable);
  lease.release("img", **handle);  // logs, does not throw
}

// --- Gate with the Redis rate limiter ------------------------------------------

TEST_F(RedisTest, GateOpenForRequestsClosedForGenerations) {
  auto loaded = config::load_from_string(
      "[security]\nmode = \"open\"\n"
      "[rate_limits]\nrequests_per_second = 1\nburst = 2\ngenerations_per_minute = 60\ngeneration_burst = 2\n"
      "[[costs]]\nmodel = \"placeholder-v1\"\nusd = 0.01\n",
      "gate.toml", {});
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  const config::Config config = std::move(loaded).value();
  core::ManualClock clock;
  auto client = make_client();
  redis::RedisRateLimiter limiter(*client);
  auto ledger = std::move(admission::BudgetLedger::open(":memory:", clock)).value();
  admission::Gate gate(config, clock, limiter, *ledger);

  admission::RequestInfo request;
  request.path = "/generate-image";
  request.query = "prompt=x";
  request.remote_address = "192.0.2.1";
  core::GenerationSpec spec;
  spec.backend = "placeholder";
  spec.model = "placeholder-v1";
  spec.width = 64;
  spec.height = 64;
  const core::GenerationCaller caller{"anonymous", "192.0.2.1"};

  // With Redis up, the shared buckets apply.
  EXPECT_FALSE(gate.admit(request, admission::RouteKind::ImageUrl).error);
  EXPECT_FALSE(gate.admit(request, admission::RouteKind::ImageUrl).error);
  auto limited = gate.admit(request, admission::RouteKind::ImageUrl);
  ASSERT_TRUE(limited.error);
  EXPECT_EQ(limited.error->code, core::ErrorCode::ResourceExhausted);
  auto permit = gate.acquire(spec, "img1", caller, std::nullopt);
  ASSERT_TRUE(permit.ok()) << permit.error().message;
  gate.release(*permit, true, 0);

  server_->kill_now();
  for (int i = 0; i < 3; ++i) {
    auto admitted = gate.admit(request, admission::RouteKind::ImageUrl);
    EXPECT_FALSE(admitted.error) << "request " << i << " was rejected while Redis is down";
    EXPECT_TRUE(admitted.headers.empty());
  }
  auto refused = gate.acquire(spec, "img2", caller, std::nullopt);
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.error().code, core::ErrorCode::Unavailable);
  EXPECT_EQ(core::http_status(refused.error().code), 503);
  EXPECT_NE(refused.error().message.find("shared state (Redis) is unreachable"), std::string::npos);
  EXPECT_GE(refused.error().retry_after_seconds, 1);
  EXPECT_EQ(gate.generations_in_flight(), 0);
}
