// A small pool of blocking hiredis connections to one Redis server, shared
// by the rate limiter, the spend counters and the generation lease. Every
// call is bounded by the configured connect and command timeouts and fails
// with Unavailable when Redis cannot be reached.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.hpp"
#include "core/error.hpp"
#include "redis/log_throttle.hpp"

struct redisContext;

namespace pixelgate::redis {

// A Redis reply other than an error (errors become core::Error).
struct Reply {
  enum class Type { Nil, String, Status, Integer, Array };
  Type type = Type::Nil;
  std::string text;             // String and Status replies
  long long integer = 0;        // Integer replies
  std::vector<Reply> elements;  // Array replies

  bool is_nil() const noexcept { return type == Type::Nil; }
};

// The server address, parsed from redis.url.
struct Endpoint {
  std::string host;         // empty for a Unix socket
  int port = 6379;
  std::string socket_path;  // set for unix:// URLs
  int database = 0;

  // Returns "host:port" or "unix:PATH", for log lines and error messages.
  std::string display() const;
};

// Parses "redis://HOST[:PORT][/DB]" (an IPv6 HOST goes in brackets) or
// "unix://PATH[?db=DB]". A user or password in the URL is rejected, because
// the password belongs in the variable named by redis.password_env.
core::Result<Endpoint> parse_redis_url(const std::string& url);

// Formats `value` with the fewest digits that parse back to the same double,
// as Lua's tonumber and INCRBYFLOAT read it.
std::string format_double(double value);

// Parses a number that Redis stored or returned, e.g. by INCRBYFLOAT.
std::optional<double> parse_double(std::string_view text);

// A Lua script sent with EVALSHA, and with EVAL when the server does not have
// it cached (NOSCRIPT, for example after a restart).
class Script {
 public:
  explicit Script(std::string source);
  const std::string& source() const noexcept { return source_; }
  const std::string& sha1() const noexcept { return sha1_; }

 private:
  std::string source_;
  std::string sha1_;  // lower-case hexadecimal, as SCRIPT LOAD returns it
};

// Thread-safety: all members may be called concurrently. Each call borrows
// one connection, and at most redis.pool_size are open. A call that finds
// all of them busy waits up to the command timeout for one.
// hiredis writes with write(2), so a write to a connection the server reset
// raises SIGPIPE: the process must ignore it, as main() does.
class RedisClient {
 public:
  // Validates the URL. Connections are opened on first use, so the server
  // may start while Redis is down.
  static core::Result<std::unique_ptr<RedisClient>> create(const config::RedisConfig& config);
  ~RedisClient();
  RedisClient(const RedisClient&) = delete;
  RedisClient& operator=(const RedisClient&) = delete;

  // Sends one command, for example {"GET", key}. Fails with Unavailable when
  // the server cannot be reached, times out or reports a transient state
  // (LOADING, BUSY, READONLY, MASTERDOWN, NOAUTH), and with Internal for any
  // other error reply.
  core::Result<Reply> command(const std::vector<std::string>& args);

  // Runs `script` with EVALSHA, falling back to EVAL on NOSCRIPT.
  core::Result<Reply> run_script(const Script& script, const std::vector<std::string>& keys,
                                 const std::vector<std::string>& args);

  // Sends PING, for readiness checks.
  core::Status ping();

  // Returns redis.key_prefix followed by `name`.
  std::string key(std::string_view name) const { return key_prefix_ + std::string(name); }

  const Endpoint& endpoint() const noexcept { return endpoint_; }

 private:
  struct ContextDeleter {
    void operator()(redisContext* context) const noexcept;
  };
  using Context = std::unique_ptr<redisContext, ContextDeleter>;
  struct RawReply;

  RedisClient(const config::RedisConfig& config, Endpoint endpoint);

  core::Result<Context> borrow();
  void give_back(Context context);
  void forget(Context context);
  core::Result<Context> connect();
  core::Status set_up(redisContext* context, const std::string& name);
  RawReply send(redisContext* context, const std::vector<std::string>& args);
  core::Error transport_error(const std::string& command, const std::string& reason);
  core::Result<Reply> finish(Context context, RawReply raw, const std::string& command);

  const Endpoint endpoint_;
  const std::string password_;
  const std::string key_prefix_;
  const std::chrono::milliseconds connect_timeout_;
  const std::chrono::milliseconds command_timeout_;
  const int pool_size_;

  std::mutex mutex_;
  std::condition_variable idle_available_;
  std::vector<Context> idle_;
  int open_ = 0;  // idle plus borrowed connections, and connects in progress
  // After a failed connect, further connects wait until this time and the
  // calls in between fail at once, so an outage costs each request
  // microseconds instead of a connect timeout.
  std::chrono::steady_clock::time_point connect_blocked_until_{};
  core::Error last_connect_error_;
  bool outage_ = false;  // a connect or command failed and no connect has succeeded since
  std::chrono::steady_clock::time_point outage_since_{};
  std::uint64_t connects_ = 0;

  LogThrottle error_log_{std::chrono::seconds(5)};
};

}  // namespace pixelgate::redis
