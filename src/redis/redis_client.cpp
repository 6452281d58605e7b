#include "redis/redis_client.hpp"

#include <hiredis/hiredis.h>
#include <openssl/evp.h>
#include <sys/time.h>

#include <array>
#include <cerrno>
#include <charconv>
#include <optional>
#include <stdexcept>

#include <spdlog/spdlog.h>

#include "core/hash.hpp"

namespace pixelgate::redis {
namespace {

// How long calls fail at once after a failed connect before the next call
// tries again. Short, so a restarted server is used again within a fraction
// of a second.
constexpr auto kReconnectBackoff = std::chrono::milliseconds(250);
// Retry-After, in seconds, of the errors returned while Redis is unreachable.
constexpr int kRetryAfterSeconds = 2;

// Error replies that mean the server is temporarily unable to serve, as
// opposed to a wrong command or script.
constexpr std::array<std::string_view, 6> kTransientErrors = {"LOADING", "BUSY",    "READONLY",
                                                              "MASTERDOWN", "NOAUTH", "TRYAGAIN"};

timeval to_timeval(std::chrono::milliseconds duration) {
  timeval value{};
  value.tv_sec = static_cast<time_t>(duration.count() / 1000);
  value.tv_usec = static_cast<suseconds_t>((duration.count() % 1000) * 1000);
  return value;
}

struct ReplyDeleter {
  void operator()(redisReply* reply) const noexcept { freeReplyObject(reply); }
};

Reply convert(const redisReply& raw) {
  Reply reply;
  switch (raw.type) {
    case REDIS_REPLY_STRING:
      reply.type = Reply::Type::String;
      reply.text.assign(raw.str, raw.len);
      break;
    case REDIS_REPLY_STATUS:
      reply.type = Reply::Type::Status;
      reply.text.assign(raw.str, raw.len);
      break;
    case REDIS_REPLY_INTEGER:
      reply.type = Reply::Type::Integer;
      reply.integer = raw.integer;
      break;
    case REDIS_REPLY_ARRAY:
      reply.type = Reply::Type::Array;
      reply.elements.reserve(raw.elements);
      for (std::size_t i = 0; i < raw.elements; ++i) reply.elements.push_back(convert(*raw.element[i]));
      break;
    default:
      reply.type = Reply::Type::Nil;
      break;
  }
  return reply;
}

bool is_transient(std::string_view error) {
  for (std::string_view prefix : kTransientErrors) {
    if (error.substr(0, prefix.size()) == prefix) return true;
  }
  return false;
}

std::optional<int> parse_number(std::string_view text, int min, int max) {
  int value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size() || value < min || value > max) return std::nullopt;
  return value;
}

core::Error invalid_url(const std::string& url, const std::string& reason) {
  return core::Error::invalid("redis.url \"" + url + "\" is invalid: " + reason, "redis.url");
}

core::Result<Endpoint> parse_tcp_url(const std::string& url, std::string_view rest) {
  Endpoint endpoint;
  const std::size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  const std::string_view path = slash == std::string_view::npos ? std::string_view{} : rest.substr(slash + 1);

  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return invalid_url(url, "an IPv6 address needs a closing ]");
    endpoint.host = std::string(authority.substr(1, close - 1));
    const std::string_view after = authority.substr(close + 1);
    if (!after.empty() && after.front() != ':') return invalid_url(url, "expected :PORT after the IPv6 address");
    if (!after.empty()) port_text = after.substr(1);
  } else {
    const std::size_t colon = authority.find(':');
    if (colon != std::string_view::npos && authority.find(':', colon + 1) != std::string_view::npos) {
      return invalid_url(url, "write an IPv6 address in brackets, e.g. redis://[::1]:6379/0");
    }
    endpoint.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (endpoint.host.empty()) return invalid_url(url, "the host is missing");
  if (!port_text.empty()) {
    auto port = parse_number(port_text, 1, 65535);
    if (!port) return invalid_url(url, "the port must be a number from 1 to 65535");
    endpoint.port = *port;
  }
  if (!path.empty()) {
    auto database = parse_number(path, 0, 1'000'000);
    if (!database) return invalid_url(url, "the path must be a database number, e.g. /0");
    endpoint.database = *database;
  }
  return endpoint;
}

core::Result<Endpoint> parse_unix_url(const std::string& url, std::string_view rest) {
  Endpoint endpoint;
  const std::size_t query = rest.find('?');
  endpoint.socket_path = std::string(rest.substr(0, query));
  if (endpoint.socket_path.empty() || endpoint.socket_path.front() != '/') {
    return invalid_url(url, "the socket path must be absolute, e.g. unix:///run/redis/redis.sock");
  }
  if (query != std::string_view::npos) {
    const std::string_view parameter = rest.substr(query + 1);
    constexpr std::string_view kDatabase = "db=";
    auto database = parameter.substr(0, kDatabase.size()) == kDatabase
                        ? parse_number(parameter.substr(kDatabase.size()), 0, 1'000'000)
                        : std::nullopt;
    if (!database) return invalid_url(url, "the only query parameter is db=NUMBER");
    endpoint.database = *database;
  }
  return endpoint;
}

}  // namespace

// The reply to one command: either a hiredis reply or a transport failure,
// after which the connection cannot be used again.
struct RedisClient::RawReply {
  std::unique_ptr<redisReply, ReplyDeleter> reply;
  std::string transport_failure;  // hiredis's errstr when `reply` is null

  bool is_error() const { return reply && reply->type == REDIS_REPLY_ERROR; }
  std::string error_text() const { return is_error() ? std::string(reply->str, reply->len) : std::string(); }
};

std::string Endpoint::display() const {
  if (!socket_path.empty()) return "unix:" + socket_path;
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

core::Result<Endpoint> parse_redis_url(const std::string& url) {
  if (url.empty()) return core::Error::invalid("redis.url is empty; set it to redis://HOST:PORT/DB", "redis.url");
  constexpr std::string_view kTcp = "redis://";
  constexpr std::string_view kUnix = "unix://";
  const std::string_view text = url;
  if (text.find('@') != std::string_view::npos) {
    // The URL may contain the password, so it is not repeated in the message.
    return core::Error::invalid("redis.url must not contain a user or password; put the password in the "
                                "environment variable named by redis.password_env",
                                "redis.url");
  }
  if (text.substr(0, kTcp.size()) == kTcp) return parse_tcp_url(url, text.substr(kTcp.size()));
  if (text.substr(0, kUnix.size()) == kUnix) return parse_unix_url(url, text.substr(kUnix.size()));
  return invalid_url(url, "it must start with redis:// or unix://");
}

std::string format_double(double value) {
  char text[32];
  auto [end, ec] = std::to_chars(text, text + sizeof(text), value);
  return ec == std::errc{} ? std::string(text, end) : std::string("0");
}

std::optional<double> parse_double(std::string_view text) {
  double value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
  return value;
}

Script::Script(std::string source) : source_(std::move(source)) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int size = 0;
  if (EVP_Digest(source_.data(), source_.size(), digest, &size, EVP_sha1(), nullptr) != 1) {
    throw std::runtime_error("OpenSSL SHA-1 failed");
  }
  sha1_ = core::to_hex(digest, size);
}

void RedisClient::ContextDeleter::operator()(redisContext* context) const noexcept { redisFree(context); }

RedisClient::RedisClient(const config::RedisConfig& config, Endpoint endpoint)
    : endpoint_(std::move(endpoint)),
      password_(config.password.value),
      key_prefix_(config.key_prefix),
      connect_timeout_(config.connect_timeout_ms),
      command_timeout_(config.command_timeout_ms),
      pool_size_(std::max(1, config.pool_size)) {}

RedisClient::~RedisClient() = default;

core::Result<std::unique_ptr<RedisClient>> RedisClient::create(const config::RedisConfig& config) {
  auto endpoint = parse_redis_url(config.url);
  if (!endpoint) return std::move(endpoint).error();
  spdlog::info("redis: using {} (database {}, up to {} connections, key prefix \"{}\", password {})",
               endpoint->display(), endpoint->database, config.pool_size, config.key_prefix,
               config.password.empty() ? "none" : "set");
  return std::unique_ptr<RedisClient>(new RedisClient(config, std::move(endpoint).value()));
}

core::Status RedisClient::set_up(redisContext* context, const std::string& name) {
  if (redisSetTimeout(context, to_timeval(command_timeout_)) != REDIS_OK) {
    return core::Error::unavailable("setting the command timeout on the connection to Redis at " + name +
                                        " failed: " + context->errstr,
                                    kRetryAfterSeconds);
  }
  if (endpoint_.socket_path.empty()) redisEnableKeepAlive(context);

  std::vector<std::vector<std::string>> commands;
  if (!password_.empty()) commands.push_back({"AUTH", password_});
  if (endpoint_.database != 0) commands.push_back({"SELECT", std::to_string(endpoint_.database)});
  for (const auto& command : commands) {
    RawReply raw = send(context, command);
    if (!raw.reply) {
      return core::Error::unavailable("Redis at " + name + " failed " + command[0] + ": " + raw.transport_failure,
                                      kRetryAfterSeconds);
    }
    if (raw.is_error()) {
      // Redis's error text never repeats the password it was sent.
      return core::Error::unavailable("Redis at " + name + " rejected " + command[0] + ": " + raw.error_text() +
                                          (command[0] == "AUTH" ? "; check redis.password_env" : ""),
                                      kRetryAfterSeconds);
    }
  }
  return core::Ok{};
}

core::Result<RedisClient::Context> RedisClient::connect() {
  const std::string name = endpoint_.display();
  const timeval timeout = to_timeval(connect_timeout_);
  // NOTE: a host name is resolved by getaddrinfo inside hiredis, which the
  // connect timeout does not bound; an IP address avoids that wait.
  redisContext* raw = endpoint_.socket_path.empty()
                          ? redisConnectWithTimeout(endpoint_.host.c_str(), endpoint_.port, timeout)
                          : redisConnectUnixWithTimeout(endpoint_.socket_path.c_str(), timeout);
  if (raw == nullptr) return core::Error::internal("allocating a Redis connection to " + name + " failed");
  Context context(raw);
  if (context->err != 0) {
    return core::Error::unavailable("cannot connect to Redis at " + name + ": " + context->errstr, kRetryAfterSeconds);
  }
  if (auto status = set_up(context.get(), name); !status) return std::move(status).error();
  return context;
}

core::Result<RedisClient::Context> RedisClient::borrow() {
  std::unique_lock lock(mutex_);
  const auto deadline = std::chrono::steady_clock::now() + command_timeout_;
  while (idle_.empty() && open_ >= pool_size_) {
    if (idle_available_.wait_until(lock, deadline) == std::cv_status::timeout && idle_.empty() &&
        open_ >= pool_size_) {
      return transport_error("borrowing a connection",
                             "all " + std::to_string(pool_size_) + " connections (redis.pool_size) stayed busy for " +
                                 std::to_string(command_timeout_.count()) + " ms");
    }
  }
  if (!idle_.empty()) {
    Context context = std::move(idle_.back());
    idle_.pop_back();
    return context;
  }

  const auto now = std::chrono::steady_clock::now();
  if (now < connect_blocked_until_) return last_connect_error_;
  ++open_;
  lock.unlock();
  auto connected = connect();
  lock.lock();

  if (!connected) {
    --open_;
    idle_available_.notify_one();
    connect_blocked_until_ = std::chrono::steady_clock::now() + kReconnectBackoff;
    last_connect_error_ = connected.error();
    if (!outage_) {
      outage_ = true;
      outage_since_ = now;
    }
    if (auto suppressed = error_log_.allow()) {
      spdlog::error("redis: {}{}", connected.error().message, suppressed_note(*suppressed));
    }
    return std::move(connected).error();
  }

  ++connects_;
  if (outage_) {
    const auto down_ms = std::chrono::duration_cast<std::chrono::milliseconds>(now - outage_since_).count();
    spdlog::info("redis: reconnected to {} (database {}), {} ms after the first failure", endpoint_.display(),
                 endpoint_.database, down_ms);
    outage_ = false;
  } else if (connects_ == 1) {
    spdlog::info("redis: connected to {} (database {})", endpoint_.display(), endpoint_.database);
  } else {
    spdlog::debug("redis: opened connection {} of at most {} to {}", open_, pool_size_, endpoint_.display());
  }
  return std::move(connected).value();
}

void RedisClient::give_back(Context context) {
  std::lock_guard lock(mutex_);
  idle_.push_back(std::move(context));
  idle_available_.notify_one();
}

void RedisClient::forget(Context context) {
  std::vector<Context> closing;
  {
    std::lock_guard lock(mutex_);
    // The idle connections went to the same server and most likely failed
    // with it (a restart or a failover), so they are closed too rather than
    // failing one call each.
    closing.swap(idle_);
    open_ -= static_cast<int>(closing.size()) + 1;
    if (!outage_) {
      outage_ = true;
      outage_since_ = std::chrono::steady_clock::now();
    }
    idle_available_.notify_all();
  }
  context.reset();
}

RedisClient::RawReply RedisClient::send(redisContext* context, const std::vector<std::string>& args) {
  std::vector<const char*> argv;
  std::vector<std::size_t> lengths;
  argv.reserve(args.size());
  lengths.reserve(args.size());
  for (const auto& arg : args) {
    argv.push_back(arg.data());
    lengths.push_back(arg.size());
  }
  RawReply raw;
  errno = 0;
  raw.reply.reset(
      static_cast<redisReply*>(redisCommandArgv(context, static_cast<int>(args.size()), argv.data(), lengths.data())));
  if (!raw.reply) {
    // With SO_RCVTIMEO or SO_SNDTIMEO set by redisSetTimeout, a timeout
    // surfaces as EAGAIN, which hiredis reports as "Resource temporarily
    // unavailable".
    const bool timed_out = context->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK);
    if (timed_out) {
      raw.transport_failure = "timed out after " + std::to_string(command_timeout_.count()) +
                              " ms (redis.command_timeout_ms)";
    } else {
      raw.transport_failure = context->errstr[0] != '\0' ? context->errstr : "no reply";
    }
  }
  return raw;
}

core::Error RedisClient::transport_error(const std::string& command, const std::string& reason) {
  const std::string message = "Redis at " + endpoint_.display() + " failed " + command + ": " + reason;
  if (auto suppressed = error_log_.allow()) {
    spdlog::error("redis: {}{}", message, suppressed_note(*suppressed));
  }
  return core::Error::unavailable(message + "; retry later", kRetryAfterSeconds);
}

core::Result<Reply> RedisClient::finish(Context context, RawReply raw, const std::string& command) {
  if (!raw.reply) {
    // A timed-out or broken connection may still deliver the old reply
    // later, so it is never used again.
    forget(std::move(context));
    return transport_error(command, raw.transport_failure);
  }
  if (raw.is_error()) {
    const std::string text = raw.error_text();
    if (is_transient(text)) {
      forget(std::move(context));
      return transport_error(command, text);
    }
    give_back(std::move(context));
    if (auto suppressed = error_log_.allow()) {
      spdlog::error("redis: {} on {} returned an error: {}{}", command,
                    endpoint_.display(), text, suppressed_note(*suppressed));
    }
    return core::Error::internal("Redis at " + endpoint_.display() + " rejected " + command + ": " + text);
  }
  Reply reply = convert(*raw.reply);
  give_back(std::move(context));
  return reply;
}

core::Result<Reply> RedisClient::command(const std::vector<std::string>& args) {
  if (args.empty()) return core::Error::internal("RedisClient::command needs at least the command name");
  auto context = borrow();
  if (!context) return std::move(context).error();
  RawReply raw = send(context->get(), args);
  return finish(std::move(context).value(), std::move(raw), args[0]);
}

core::Result<Reply> RedisClient::run_script(const Script& script, const std::vector<std::string>& keys,
                                            const std::vector<std::string>& args) {
  std::vector<std::string> command;
  command.reserve(3 + keys.size() + args.size());
  command.push_back("EVALSHA");
  command.push_back(script.sha1());
  command.push_back(std::to_string(keys.size()));
  command.insert(command.end(), keys.begin(), keys.end());
  command.insert(command.end(), args.begin(), args.end());

  auto context = borrow();
  if (!context) return std::move(context).error();
  RawReply raw = send(context->get(), command);
  if (raw.is_error() && raw.error_text().rfind("NOSCRIPT", 0) == 0) {
    // The server does not have the script cached; EVAL sends its source
    // and caches it for the next EVALSHA.
    spdlog::debug("redis: loading script {} into {}", script.sha1(), endpoint_.display());
    command[0] = "EVAL";
    command[1] = script.source();
    raw = send(context->get(), command);
  }
  return finish(std::move(context).value(), std::move(raw), "script " + script.sha1().substr(0, 12));
}

core::Status RedisClient::ping() {
  auto reply = command({"PING"});
  if (!reply) return std::move(reply).error();
  if (reply->text != "PONG") {
    return core::Error::unavailable("Redis at " + endpoint_.display() + " returned \"" + reply->text + "\" to PING instead of PONG",
                                    kRetryAfterSeconds);
  }
  return core::Ok{};
}

}  // namespace pixelgate::redis
