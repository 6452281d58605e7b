#include "config/config.hpp"

#include <cerrno>
#include <charconv>
#include <cstring>
#include <functional>
#include <regex>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include <toml++/toml.h>

#include "core/hash.hpp"
#include "core/text.hpp"

extern char** environ;

namespace pixelgate::config {
namespace {

constexpr std::string_view kEnvPrefix = "PIXELGATE_";
// Query parameters with a fixed meaning, which template variables cannot use.
const std::set<std::string> kReservedParameters = {"prompt", "width",    "height", "size", "seed",
                                                   "template", "style", "sig",   "kid",  "exp"};
// Sections whose scalar keys can be set from the environment.
const std::vector<std::string> kEnvSections = {"rate_limits", "security", "budgets", "server", "storage", "redis", "limits",
                                                "logging", "jobs", "webhooks"};

std::string env_name_for(const std::string& section, const std::string& key) {
  std::string name(kEnvPrefix);
  for (char c : section + "_" + key) name.push_back(static_cast<char>(std::toupper(static_cast<unsigned char>(c))));
  return name;
}

// Reads the keys of one TOML table into typed fields, records every problem
// with its full key path, and reports keys that no read_* call asked for as unknown.
class TableReader {
 public:
  TableReader(const toml::table* table, std::string path, std::vector<std::string>& errors,
              const Environment* env_overrides = nullptr, std::set<std::string>* used_env = nullptr)
      : table_(table), path_(std::move(path)), errors_(errors), env_(env_overrides), used_env_(used_env) {}

  void read_int(const std::string& key, int& out, std::int64_t min, std::int64_t max) {
    std::int64_t wide = out;
    read_int64(key, wide, min, max);
    out = static_cast<int>(wide);
  }

  void read_int64(const std::string& key, std::int64_t& out, std::int64_t min, std::int64_t max) {
    std::int64_t value = out;
    if (auto text = env_value(key)) {
      const auto* end = text->data() + text->size();
      auto [ptr, ec] = std::from_chars(text->data(), end, value);
      if (ec != std::errc{} || ptr != end) {
        error(key, "must be an integer, got \"" + *text + "\" from " + env_name(key));
        return;
      }
    } else if (const toml::node* node = find(key)) {
      if (!node->is_integer()) {
        error(key, std::string("must be an integer, got ") + type_name(*node));
        return;
      }
      value = node->as_integer()->get();
    } else {
      return;
    }
    if (value < min || value > max) {
      error(key, "must be between " + std::to_string(min) + " and " + std::to_string(max) + ", got " +
                     std::to_string(value) + from_env(key));
      return;
    }
    out = value;
  }

  void read_double(const std::string& key, double& out, double min, double max) {
    double value = out;
    if (auto text = env_value(key)) {
      try {
        std::size_t used = 0;
        value = std::stod(*text, &used);
        if (used != text->size()) throw std::invalid_argument(*text);
      } catch (const std::exception&) {
        error(key, "must be a number, got \"" + *text + "\" from " + env_name(key));
        return;
      }
    } else if (const toml::node* node = find(key)) {
      if (node->is_integer()) {
        value = static_cast<double>(node->as_integer()->get());
      } else if (node->is_floating_point()) {
        value = node->as_floating_point()->get();
      } else {
        error(key, std::string("must be a number, got ") + type_name(*node));
        return;
      }
    } else {
      return;
    }
    if (!(value >= min && value <= max)) {
      std::ostringstream message;
      message << "must be between " << min << " and " << max << ", got " << value << from_env(key);
      error(key, message.str());
      return;
    }
    out = value;
  }

  void read_bool(const std::string& key, bool& out) {
    if (auto text = env_value(key)) {
      if (*text == "true" || *text == "1") {
        out = true;
      } else if (*text == "false" || *text == "0") {
        out = false;
      } else {
        error(key, "must be true or false, got \"" + *text + "\" from " + env_name(key));
      }
    } else if (const toml::node* node = find(key)) {
      if (!node->is_boolean()) {
        error(key, std::string("must be true or false, got ") + type_name(*node));
        return;
      }
      out = node->as_boolean()->get();
    }
  }

  void read_string(const std::string& key, std::string& out, const std::set<std::string>& allowed = {}) {
    std::string value = out;
    if (auto text = env_value(key)) {
      value = *text;
    } else if (const toml::node* node = find(key)) {
      if (!node->is_string()) {
        error(key, std::string("must be a string, got ") + type_name(*node));
        return;
      }
      value = node->as_string()->get();
    } else {
      return;
    }
    if (!allowed.empty() && !allowed.count(value)) {
      std::string choices;
      for (const auto& choice : allowed) choices += (choices.empty() ? "" : ", ") + ("\"" + choice + "\"");
      error(key, "must be one of " + choices + ", got \"" + value + "\"" + from_env(key));
      return;
    }
    out = value;
  }

  void read_string_array(const std::string& key, std::vector<std::string>& out) {
    if (auto text = env_value(key)) {
      // From the environment: a comma-separated list.
      out.clear();
      std::string_view rest(*text);
      while (!rest.empty()) {
        const std::size_t comma = rest.find(',');
        std::string item(rest.substr(0, comma));
        item.erase(0, item.find_first_not_of(' '));
        item.erase(item.find_last_not_of(' ') + 1);
        if (!item.empty()) out.push_back(item);
        rest = comma == std::string_view::npos ? std::string_view{} : rest.substr(comma + 1);
      }
      return;
    }
    const toml::node* node = find(key);
    if (!node) return;
    const toml::array* array = node->as_array();
    if (!array) {
      error(key, std::string("must be an array of strings, got ") + type_name(*node));
      return;
    }
    std::vector<std::string> values;
    for (const auto& item : *array) {
      if (!item.is_string()) {
        error(key, "must be an array of strings");
        return;
      }
      values.push_back(item.as_string()->get());
    }
    out = std::move(values);
  }

  // Reads the name of an environment variable and its value into `secret`.
  void read_secret_env(const std::string& key, Secret& secret, const Environment& process_env) {
    std::string name = secret.env_name;
    read_string(key, name);
    if (name.empty()) return;
    secret.env_name = name;
    auto it = process_env.find(name);
    secret.value = it == process_env.end() ? std::string{} : it->second;
  }

  // Returns the node under `key` without marking it as read.
  const toml::node* peek(const std::string& key) const { return table_ ? table_->get(key) : nullptr; }

  // Accepts `key` without reading it, for sub-tables read elsewhere.
  void mark_known(const std::string& key) { read_keys_.insert(key); }

  // Reports every key of the table that no read_* call asked for.
  void finish() {
    if (!table_) return;
    for (const auto& [key, node] : *table_) {
      const std::string name(key.str());
      if (!read_keys_.count(name)) {
        errors_.push_back(path_ + "." + name + ": unknown key" + source_of(node));
      }
    }
  }

  void error(const std::string& key, const std::string& reason) {
    std::string where;
    if (const toml::node* node = table_ ? table_->get(key) : nullptr) where = source_of(*node);
    errors_.push_back(path_ + "." + key + ": " + reason + where);
  }

 private:
  const toml::node* find(const std::string& key) {
    read_keys_.insert(key);
    return table_ ? table_->get(key) : nullptr;
  }

  std::string env_name(const std::string& key) const {
    return env_name_for(path_, key);
  }

  // Returns " (from VARIABLE)" when the value of `key` came from the environment.
  std::string from_env(const std::string& key) const {
    if (!env_ || !env_->count(env_name(key))) return {};
    return " (from " + env_name(key) + ")";
  }

  std::optional<std::string> env_value(const std::string& key) {
    read_keys_.insert(key);
    if (!env_) return std::nullopt;
    auto it = env_->find(env_name(key));
    if (it == env_->end()) return std::nullopt;
    if (used_env_) used_env_->insert(it->first);
    return it->second;
  }

  static std::string type_name(const toml::node& node) {
    switch (node.type()) {
      case toml::node_type::string: return "a string";
      case toml::node_type::integer: return "an integer";
      case toml::node_type::floating_point: return "a number";
      case toml::node_type::boolean: return "a boolean";
      case toml::node_type::table: return "a table";
      case toml::node_type::array: return "an array";
      default: return "a date or time";
    }
  }

  static std::string source_of(const toml::node& node) {
    const auto& source = node.source();
    if (!source.begin) return {};
    return " (line " + std::to_string(source.begin.line) + ")";
  }

  const toml::table* table_;
  std::string path_;
  std::vector<std::string>& errors_;
  const Environment* env_;
  std::set<std::string>* used_env_;
  std::set<std::string> read_keys_;
};

const toml::table* sub_table(const toml::table& root, const std::string& key, std::vector<std::string>& errors) {
  const toml::node* node = root.get(key);
  if (!node) return nullptr;
  if (!node->is_table()) {
    errors.push_back(key + ": must be a table");
    return nullptr;
  }
  return node->as_table();
}

bool is_http_url(const std::string& url) {
  return url.rfind("http://", 0) == 0 || url.rfind("https://", 0) == 0;
}

// Returns what is wrong with an http(s) URL of a configured service, or
// nullopt: the scheme, an empty host, or a port that is empty, not a number
// or out of range (libcurl would quietly use the default port for "host:").
std::optional<std::string> http_url_problem(const std::string& url) {
  if (!is_http_url(url)) return "must start with http:// or https://, got \"" + url + "\"";
  const std::size_t host_start = url.find("//") + 2;
  std::string_view authority(url);
  authority = authority.substr(host_start, authority.find_first_of("/?#", host_start) - host_start);
  if (authority.find('@') != std::string_view::npos) return "must not contain user information, got \"" + url + "\"";
  std::size_t port_colon = std::string_view::npos;
  if (!authority.empty() && authority.front() == '[') {
    const std::size_t close = authority.find(']');
    if (close == std::string_view::npos) return "has an unterminated IPv6 address, got \"" + url + "\"";
    if (close + 1 < authority.size()) {
      if (authority[close + 1] != ':') return "has characters after the IPv6 address, got \"" + url + "\"";
      port_colon = close + 1;
    }
  } else {
    port_colon = authority.find(':');
  }
  const std::string_view host = authority.substr(0, port_colon);
  if (host.empty() || host == "[]") return "has no host, got \"" + url + "\"";
  if (port_colon != std::string_view::npos) {
    const std::string_view port = authority.substr(port_colon + 1);
    int value = 0;
    const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), value);
    if (port.empty() || ec != std::errc{} || end != port.data() + port.size() || value < 1 || value > 65535) {
      return "has an invalid port \"" + std::string(port) + "\" (1 to 65535), got \"" + url + "\"";
    }
  }
  return std::nullopt;
}

void read_server(TableReader& reader, ServerConfig& server) {
  reader.read_string("host", server.host);
  reader.read_int("port", server.port, 0, 65535);
  reader.read_int("threads", server.threads, 0, 256);
  reader.read_int("max_connections", server.max_connections, 1, 1'000'000);
  reader.read_int64("header_limit_bytes", server.header_limit_bytes, 1024, 1024 * 1024);
  reader.read_int64("body_limit_bytes", server.body_limit_bytes, 0, 64LL * 1024 * 1024);
  reader.read_int("header_timeout_ms", server.header_timeout_ms, 100, 600'000);
  reader.read_int("idle_timeout_ms", server.idle_timeout_ms, 100, 3'600'000);
  reader.read_int("write_timeout_ms", server.write_timeout_ms, 100, 3'600'000);
  reader.read_int("shutdown_grace_ms", server.shutdown_grace_ms, 0, 3'600'000);
  reader.read_string("public_base_url", server.public_base_url);
  if (!server.public_base_url.empty()) {
    const auto& url = server.public_base_url;
    if (auto problem = http_url_problem(url)) reader.error("public_base_url", *problem);
    while (!server.public_base_url.empty() && server.public_base_url.back() == '/') server.public_base_url.pop_back();
  }
}

void read_s3(TableReader& reader, S3Config& s3, const Environment& env) {
  for (const char* name : {"AWS_REGION", "AWS_DEFAULT_REGION"}) {
    auto it = env.find(name);
    if (it != env.end() && !it->second.empty()) {
      s3.region = it->second;
      break;
    }
  }

  reader.read_string("endpoint", s3.endpoint);
  reader.read_string("bucket", s3.bucket);
  reader.read_string("region", s3.region);
  reader.read_string("addressing", s3.addressing, {"path", "virtual"});
  reader.read_string("prefix", s3.prefix);
  reader.read_secret_env("access_key_env", s3.access_key, env);
  reader.read_secret_env("secret_key_env", s3.secret_key, env);
  reader.read_secret_env("session_token_env", s3.session_token, env);
  reader.read_bool("create_only", s3.create_only);
  reader.read_int("connect_timeout_ms", s3.connect_timeout_ms, 1, 600'000);
  reader.read_int("timeout_ms", s3.timeout_ms, 1, 3'600'000);
  reader.read_int("max_attempts", s3.max_attempts, 1, 20);

  while (!s3.endpoint.empty() && s3.endpoint.back() == '/') s3.endpoint.pop_back();
  if (s3.endpoint.empty()) {
    reader.error("endpoint", "missing; name the S3 service, e.g. \"https://s3.us-east-1.amazonaws.com\"");
  } else if (auto problem = http_url_problem(s3.endpoint)) {
    reader.error("endpoint", *problem);
  }
  if (s3.bucket.empty()) reader.error("bucket", "missing; name the bucket that holds the images");
  if (s3.region.empty()) reader.error("region", "must not be empty");
  if (s3.access_key.empty() || s3.secret_key.empty()) {
    reader.error("access_key_env", "the environment variables " + s3.access_key.env_name + " and " +
                                       s3.secret_key.env_name + " must both be set");
  }
}

void read_storage(TableReader& reader, StorageConfig& storage, const toml::table* table,
                  std::vector<std::string>& errors, const Environment& env) {
  reader.read_string("kind", storage.kind, {"disk", "s3"});
  reader.read_string("path", storage.path);
  if (storage.path.empty()) reader.error("path", "must not be empty");
  reader.read_int64("hot_cache_bytes", storage.hot_cache_bytes, 0, 1LL << 40);
  reader.read_int64("hot_cache_max_object_bytes", storage.hot_cache_max_object_bytes, 0, 1LL << 32);
  reader.read_int("open_files", storage.open_files, 0, 1'000'000);
  reader.read_string("delivery", storage.delivery, {"proxy", "redirect"});
  reader.read_string("redirect_base_url", storage.redirect_base_url);
  reader.read_int("presign_seconds", storage.presign_seconds, 1, 7 * 24 * 3600);
  while (!storage.redirect_base_url.empty() && storage.redirect_base_url.back() == '/') {
    storage.redirect_base_url.pop_back();
  }
  if (!storage.redirect_base_url.empty()) {
    if (auto problem = http_url_problem(storage.redirect_base_url)) reader.error("redirect_base_url", *problem);
  }
  if (storage.delivery == "redirect" && storage.redirect_base_url.empty() && storage.kind != "s3") {
    reader.error("delivery", "\"redirect\" needs redirect_base_url, or kind = \"s3\" for presigned URLs");
  }

  const toml::table* s3_table = nullptr;
  if (table) {
    if (const toml::node* node = table->get("s3")) {
      reader.mark_known("s3");
      s3_table = node->as_table();
      if (!s3_table) errors.push_back("storage.s3: must be a table");
    }
  }
  if (storage.kind == "s3") {
    TableReader s3_reader(s3_table, "storage.s3", errors);
    read_s3(s3_reader, storage.s3, env);
    s3_reader.finish();
  } else if (s3_table) {
    errors.push_back("storage.s3: only read when storage.kind is \"s3\"");
  }
}

void read_redis(TableReader& reader, RedisConfig& redis, const Environment& env) {
  reader.read_string("url", redis.url);
  reader.read_secret_env("password_env", redis.password, env);
  reader.read_string("key_prefix", redis.key_prefix);
  reader.read_int("connect_timeout_ms", redis.connect_timeout_ms, 1, 60'000);
  reader.read_int("command_timeout_ms", redis.command_timeout_ms, 1, 60'000);
  reader.read_int("pool_size", redis.pool_size, 1, 1024);
  reader.read_int("lease_ttl_ms", redis.lease_ttl_ms, 1'000, 3'600'000);
  reader.read_int("lease_poll_ms", redis.lease_poll_ms, 10, 60'000);
  if (!redis.url.empty() && redis.url.rfind("redis://", 0) != 0 && redis.url.rfind("unix://", 0) != 0) {
    reader.error("url", "must start with redis:// or unix://, got \"" + redis.url + "\"");
  }
  if (!redis.password.env_name.empty() && redis.password.empty()) {
    reader.error("password_env", "the environment variable " + redis.password.env_name + " is unset or empty");
  }
}

void read_limits(TableReader& reader, LimitsConfig& limits) {
  reader.read_int("workers", limits.workers, 1, 1024);
  reader.read_int("queue_size", limits.queue_size, 1, 1'000'000);
  reader.read_int("max_prompt_chars", limits.max_prompt_chars, 1, 100'000);
  reader.read_int("max_prompt_bytes", limits.max_prompt_bytes, 4, 400'000);
  reader.read_int("min_dimension", limits.min_dimension, 16, 16384);
  reader.read_int("max_dimension", limits.max_dimension, 16, 16384);
  reader.read_int("generation_timeout_ms", limits.generation_timeout_ms, 1000, 3'600'000);
  reader.read_int64("max_image_bytes", limits.max_image_bytes, 1024, 1LL << 30);
  reader.read_int("max_batch", limits.max_batch, 1, 10);
  reader.read_int("max_concurrent_generations", limits.max_concurrent_generations, 1, 100'000);
  reader.read_int("max_concurrent_generations_per_key", limits.max_concurrent_generations_per_key, 1, 100'000);
  reader.read_int("refusal_cache_ms", limits.refusal_cache_ms, 0, 86'400'000);
  if (limits.min_dimension > limits.max_dimension) {
    reader.error("min_dimension", "must not be larger than limits.max_dimension (" +
                                      std::to_string(limits.max_dimension) + ")");
  }
}

void read_logging(TableReader& reader, LoggingConfig& logging) {
  reader.read_string("level", logging.level, {"trace", "debug", "info", "warn", "error", "off"});
  reader.read_string("format", logging.format, {"json", "text"});
  reader.read_bool("access_log", logging.access_log);
}

void read_backend(TableReader& reader, BackendConfig& backend, const Environment& env) {
  reader.read_string("type", backend.type, kBackendTypes);
  reader.read_string("model", backend.model);
  reader.read_string("model_version", backend.model_version);
  reader.read_string("base_url", backend.base_url);
  const std::map<std::string, std::string> default_key_variables = {
      {"openai", "OPENAI_API_KEY"}, {"stability", "STABILITY_API_KEY"}, {"replicate", "REPLICATE_API_TOKEN"},
      {"fal", "FAL_KEY"}};
  if (auto it = default_key_variables.find(backend.type); it != default_key_variables.end()) {
    backend.api_key.env_name = it->second;
  }
  reader.read_secret_env("api_key_env", backend.api_key, env);
  if (backend.api_key.value.empty() && !backend.api_key.env_name.empty()) {
    auto it = env.find(backend.api_key.env_name);
    if (it != env.end()) backend.api_key.value = it->second;
  }
  reader.read_string("region", backend.region);
  backend.access_key.env_name = "AWS_ACCESS_KEY_ID";
  backend.secret_key.env_name = "AWS_SECRET_ACCESS_KEY";
  backend.session_token.env_name = "AWS_SESSION_TOKEN";
  reader.read_secret_env("access_key_env", backend.access_key, env);
  reader.read_secret_env("secret_key_env", backend.secret_key, env);
  reader.read_secret_env("session_token_env", backend.session_token, env);
  for (Secret* secret : {&backend.access_key, &backend.secret_key, &backend.session_token}) {
    if (secret->value.empty()) {
      auto it = env.find(secret->env_name);
      if (it != env.end()) secret->value = it->second;
    }
  }
  reader.read_string("workflow", backend.workflow);
  reader.read_string("output_format", backend.output_format, {"png", "jpeg", "webp"});
  reader.read_int("poll_interval_ms", backend.poll_interval_ms, 10, 600'000);
  reader.read_int("max_concurrency", backend.max_concurrency, 0, 100'000);
  reader.read_int("queue_size", backend.queue_size, 1, 1'000'000);
  reader.read_int("failure_threshold", backend.failure_threshold, 1, 1000);
  reader.read_int("open_ms", backend.open_ms, 100, 3'600'000);
  reader.read_int("connect_timeout_ms", backend.connect_timeout_ms, 100, 600'000);
  reader.read_int("timeout_ms", backend.timeout_ms, 100, 3'600'000);
  reader.read_int("max_retries", backend.max_retries, 0, 10);
  reader.read_int("retry_base_delay_ms", backend.retry_base_delay_ms, 0, 600'000);
  reader.read_int("retry_max_delay_ms", backend.retry_max_delay_ms, 0, 3'600'000);
  reader.read_int("download_timeout_ms", backend.download_timeout_ms, 100, 3'600'000);
}

// The self-hosted types that run as a pool, with the default readiness path:
// a cheap GET that each server returns 200 for once its API is up.
const std::map<std::string, std::string> kPoolReadyPaths = {
    {"a1111", "/sdapi/v1/options"}, {"sdcpp", "/sdcpp/v1/capabilities"}, {"comfyui", "/system_stats"}};

// Parses "HH:MM" (00:00 to 23:59) into minutes after midnight.
bool parse_clock_minute(std::string_view text, int& minute) {
  if (text.size() != 5 || text[2] != ':') return false;
  for (std::size_t i : {0, 1, 3, 4}) {
    if (text[i] < '0' || text[i] > '9') return false;
  }
  const int hours = (text[0] - '0') * 10 + (text[1] - '0');
  const int minutes = (text[3] - '0') * 10 + (text[4] - '0');
  if (hours > 23 || minutes > 59) return false;
  minute = hours * 60 + minutes;
  return true;
}

void read_pool_env(const toml::node* node, PoolConfig& pool, std::vector<std::string>& errors, const std::string& path) {
  const toml::table* table = node->as_table();
  if (!table) {
    errors.push_back(path + ": must be a table of strings, e.g. { CUDA_VISIBLE_DEVICES = \"0\" }");
    return;
  }
  for (const auto& [key, value] : *table) {
    const std::string name(key.str());
    if (!value.is_string()) {
      errors.push_back(path + "." + name + ": must be a string");
      continue;
    }
    if (name.empty() || name.find('=') != std::string::npos) {
      errors.push_back(path + "." + name + ": invalid environment variable name");
      continue;
    }
    pool.env[name] = value.as_string()->get();
  }
}

void read_port_range(const toml::node* node, PoolConfig& pool, TableReader& reader) {
  const toml::array* array = node->as_array();
  if (!array || array->size() != 2 || !(*array)[0].is_integer() || !(*array)[1].is_integer()) {
    reader.error("port_range", "must be two integers [first, last], e.g. [7860, 7869]");
    return;
  }
  const std::int64_t first = (*array)[0].as_integer()->get();
  const std::int64_t last = (*array)[1].as_integer()->get();
  if (first < 1024 || last > 65535 || first > last) {
    reader.error("port_range", "must satisfy 1024 <= first <= last <= 65535, got [" + std::to_string(first) + ", " +
                                   std::to_string(last) + "]");
    return;
  }
  pool.port_min = static_cast<int>(first);
  pool.port_max = static_cast<int>(last);
}

void read_pool(TableReader& reader, PoolConfig& pool, const std::string& type, const toml::table& table,
               std::vector<std::string>& errors, const std::string& path) {
  reader.read_string_array("command", pool.command);
  if (const toml::node* node = reader.peek("env")) {
    reader.mark_known("env");
    read_pool_env(node, pool, errors, path + ".env");
  }
  reader.read_string("ready_path", pool.ready_path);
  reader.read_int("ready_status", pool.ready_status, 100, 599);
  reader.read_bool("ready_canary", pool.ready_canary);
  reader.read_int("ready_poll_ms", pool.ready_poll_ms, 10, 60'000);
  reader.read_int("start_timeout_ms", pool.start_timeout_ms, 100, 3'600'000);
  reader.read_int("instance_concurrency", pool.instance_concurrency, 1, 1024);
  reader.read_int("min_instances", pool.min_instances, 0, 64);
  reader.read_int("max_instances", pool.max_instances, 1, 64);
  reader.read_int("idle_timeout_ms", pool.idle_timeout_ms, 100, 86'400'000);
  reader.read_string("warm_schedule", pool.warm_schedule);
  reader.read_int("restart_backoff_ms", pool.restart_backoff_ms, 10, 3'600'000);
  reader.read_int("restart_backoff_max_ms", pool.restart_backoff_max_ms, 10, 86'400'000);
  reader.read_int("queue_size", pool.queue_size, 1, 100'000);
  reader.read_int("stop_grace_ms", pool.stop_grace_ms, 0, 600'000);
  reader.read_int("expected_start_ms", pool.expected_start_ms, 0, 3'600'000);
  if (const toml::node* node = reader.peek("port_range")) {
    reader.mark_known("port_range");
    read_port_range(node, pool, reader);
  }
  reader.read_string("log_file", pool.log_file);

  auto ready_path = kPoolReadyPaths.find(type);
  if (ready_path == kPoolReadyPaths.end()) {
    errors.push_back(path + ": only types a1111, sdcpp and comfyui run as a pool, not \"" + type + "\"");
    return;
  }
  if (pool.command.empty() || pool.command.front().empty()) {
    reader.error("command", "missing; give the server's argv, e.g. [\"./webui.sh\", \"--api\", \"--port\", \"{port}\"]");
  } else if (std::none_of(pool.command.begin(), pool.command.end(),
                          [](const std::string& arg) { return arg.find("{port}") != std::string::npos; })) {
    reader.error("command", "must contain {port}: pixelgate chooses the port of each instance");
  }
  if (pool.ready_canary && table.contains("ready_path")) {
    reader.error("ready_canary", "replaces ready_path; set only one of them");
  }
  if (pool.ready_path.empty()) pool.ready_path = ready_path->second;
  if (pool.ready_path.front() != '/') reader.error("ready_path", "must start with /, got \"" + pool.ready_path + "\"");
  // The a1111 and sdcpp adapters hold their server for one generation at a
  // time, so a higher value would only queue inside the adapter.
  if (pool.instance_concurrency > 1 && type != "comfyui") {
    reader.error("instance_concurrency", "must be 1 for type \"" + type + "\": the server runs one generation at a time");
  }
  if (pool.min_instances > pool.max_instances) {
    reader.error("min_instances", "must not be larger than max_instances (" + std::to_string(pool.max_instances) + ")");
  }
  if (pool.restart_backoff_max_ms < pool.restart_backoff_ms) {
    reader.error("restart_backoff_max_ms", "must not be smaller than restart_backoff_ms (" +
                                               std::to_string(pool.restart_backoff_ms) + ")");
  }
  if (!pool.warm_schedule.empty()) {
    const std::string& text = pool.warm_schedule;
    const std::size_t dash = text.find('-');
    if (dash == std::string::npos || !parse_clock_minute(std::string_view(text).substr(0, dash), pool.warm_start_minute) ||
        !parse_clock_minute(std::string_view(text).substr(dash + 1), pool.warm_end_minute) ||
        pool.warm_start_minute == pool.warm_end_minute) {
      pool.warm_start_minute = pool.warm_end_minute = -1;
      reader.error("warm_schedule", "must be \"HH:MM-HH:MM\" in UTC with two different times, e.g. \"08:00-20:00\", got \"" +
                                        text + "\"");
    } else if (pool.min_instances == 0) {
      reader.error("warm_schedule", "has no effect with min_instances = 0; set min_instances or remove it");
    }
  }
  if (pool.port_min > 0 && pool.port_max - pool.port_min + 1 < pool.max_instances) {
    reader.error("port_range", "has fewer ports than max_instances (" + std::to_string(pool.max_instances) + ")");
  }
}

void read_backend_pool(TableReader& reader, BackendConfig& backend, const toml::table* table,
                       std::vector<std::string>& errors, const std::string& path) {
  const toml::node* node = table ? table->get("pool") : nullptr;
  if (!node) return;
  reader.mark_known("pool");
  if (!node->is_table()) {
    errors.push_back(path + ".pool: must be a table");
    return;
  }
  PoolConfig pool;
  TableReader pool_reader(node->as_table(), path + ".pool", errors);
  read_pool(pool_reader, pool, backend.type, *node->as_table(), errors, path + ".pool");
  pool_reader.finish();
  backend.pool = std::move(pool);
}

void validate_backend(TableReader& reader, BackendConfig& backend) {
  if (backend.type.empty()) {
    std::string choices;
    for (const auto& type : kBackendTypes) choices += (choices.empty() ? "" : ", ") + type;
    reader.error("type", "missing; set one of " + choices);
    return;
  }
  if (backend.type == "placeholder") return;

  if (backend.pool) {
    // Each instance of a pool gets http://127.0.0.1:{port}; a configured URL would be ignored.
    if (!backend.base_url.empty()) reader.error("base_url", "must not be set with [pool]; instances listen on 127.0.0.1");
  } else if (backend.base_url.empty()) {
    reader.error("base_url", "missing; set the API's base URL (pixelgate has no built-in provider host)");
  } else if (auto problem = http_url_problem(backend.base_url)) {
    reader.error("base_url", *problem);
  }
  while (!backend.base_url.empty() && backend.base_url.back() == '/') backend.base_url.pop_back();
  if (backend.type == "openai" && backend.model.empty()) backend.model = "gpt-image-2";
  if (backend.type == "bedrock" && backend.region.empty()) reader.error("region", "missing; e.g. \"us-east-1\"");
  if (backend.type == "comfyui" && backend.workflow.empty()) {
    reader.error("workflow", "missing; the path of a workflow exported in API format");
  }
}

// Returns the names inside {braces} in `text`, e.g. "prompt" and "mood".
std::vector<std::string> placeholder_names(const std::string& text) {
  std::vector<std::string> names;
  for (std::size_t open = text.find('{'); open != std::string::npos; open = text.find('{', open + 1)) {
    const std::size_t close = text.find('}', open);
    if (close == std::string::npos) break;
    names.push_back(text.substr(open + 1, close - open - 1));
  }
  return names;
}

bool parse_size_text(const std::string& text, int& width, int& height) {
  const std::size_t x = text.find('x');
  if (x == std::string::npos) return false;
  try {
    std::size_t used_w = 0;
    std::size_t used_h = 0;
    width = std::stoi(text.substr(0, x), &used_w);
    height = std::stoi(text.substr(x + 1), &used_h);
    return used_w == x && used_h == text.size() - x - 1 && width > 0 && height > 0;
  } catch (const std::exception&) {
    return false;
  }
}

void read_variable(TableReader& reader, TemplateVariable& variable) {
  reader.read_string("type", variable.type, {"string", "integer"});
  std::string default_text;
  bool has_default = false;
  if (const toml::node* node = reader.peek("default")) {
    has_default = true;
    if (node->is_integer()) {
      default_text = std::to_string(node->as_integer()->get());
      reader.mark_known("default");
    } else {
      reader.read_string("default", default_text);
    }
  }
  if (has_default) variable.default_value = default_text;
  reader.read_string_array("allowed", variable.allowed);
  reader.read_string("pattern", variable.pattern);
  reader.read_int("max_length", variable.max_length, 1, 10'000);
  reader.read_int64("min", variable.min, INT64_MIN / 2, INT64_MAX / 2);
  reader.read_int64("max", variable.max, INT64_MIN / 2, INT64_MAX / 2);
  if (!variable.pattern.empty()) {
    try {
      std::regex compiled(variable.pattern, std::regex::ECMAScript);
    } catch (const std::regex_error& error) {
      reader.error("pattern", std::string("invalid regular expression: ") + error.what());
    }
  }
  if (variable.type == "integer" && variable.min > variable.max) reader.error("min", "must not be larger than max");
}

void read_template(TableReader& reader, TemplateConfig& tmpl, const toml::table* table,
                   std::vector<std::string>& errors, const std::string& path) {
  reader.read_string("prompt", tmpl.prompt);
  reader.read_string("style", tmpl.style);
  reader.read_string("negative_prompt", tmpl.negative_prompt);
  reader.read_string("backend", tmpl.backend);
  reader.read_string("model", tmpl.model);
  reader.read_int("width", tmpl.width, 16, 16384);
  reader.read_int("height", tmpl.height, 16, 16384);
  std::vector<std::string> sizes;
  reader.read_string_array("sizes", sizes);
  for (const auto& text : sizes) {
    int width = 0;
    int height = 0;
    if (!parse_size_text(text, width, height)) {
      reader.error("sizes", "\"" + text + "\" is not a size like \"1024x768\"");
    } else {
      tmpl.sizes.emplace_back(width, height);
    }
  }
  reader.read_string("quality", tmpl.quality);
  reader.read_int("steps", tmpl.steps, 0, 500);
  reader.read_double("guidance", tmpl.guidance, 0.0, 100.0);
  reader.read_string("sampler", tmpl.sampler);
  reader.read_string("version", tmpl.version);
  reader.read_string_array("fallbacks", tmpl.fallbacks);
  reader.read_string("cold_start", tmpl.cold_start, {"wait", "fallback", "placeholder"});
  reader.read_int("max_cold_start_ms", tmpl.max_cold_start_ms, 0, 3'600'000);
  if (tmpl.cold_start == "wait" && reader.peek("max_cold_start_ms")) {
    reader.error("max_cold_start_ms", "is only used with cold_start = \"fallback\" or \"placeholder\"");
  }
  if (tmpl.cold_start == "fallback" && tmpl.fallbacks.empty()) {
    reader.error("cold_start", "\"fallback\" needs at least one backend in fallbacks");
  }
  if (tmpl.prompt.find("{prompt}") == std::string::npos) {
    reader.error("prompt", "must contain {prompt}, got \"" + tmpl.prompt + "\"");
  }
  if (tmpl.version.empty()) reader.error("version", "must not be empty");
  if (!tmpl.sizes.empty() &&
      std::find(tmpl.sizes.begin(), tmpl.sizes.end(), std::make_pair(tmpl.width, tmpl.height)) == tmpl.sizes.end()) {
    reader.error("sizes", "must include the default size " + std::to_string(tmpl.width) + "x" +
                              std::to_string(tmpl.height));
  }

  if (const toml::node* node = table ? table->get("variables") : nullptr) {
    reader.mark_known("variables");
    if (!node->is_table()) {
      errors.push_back(path + ".variables: must be a table");
    } else {
      for (const auto& [key, value] : *node->as_table()) {
        const std::string name(key.str());
        const std::string variable_path = path + ".variables." + name;
        if (name.empty() || name.size() > 32 || kReservedParameters.count(name) ||
            !std::all_of(name.begin(), name.end(), [](char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'; })) {
          errors.push_back(variable_path + ": invalid name; use lower-case letters, digits and '_', and none of "
                                           "prompt, width, height, size, seed, template, style, sig, kid, exp");
          continue;
        }
        if (!value.is_table()) {
          errors.push_back(variable_path + ": must be a table");
          continue;
        }
        TemplateVariable variable;
        variable.name = name;
        TableReader variable_reader(value.as_table(), variable_path, errors);
        read_variable(variable_reader, variable);
        variable_reader.finish();
        tmpl.variables.emplace(name, std::move(variable));
      }
    }
  }
  for (const std::string* text : {&tmpl.prompt, &tmpl.style, &tmpl.negative_prompt}) {
    for (const auto& name : placeholder_names(*text)) {
      if (name != "prompt" && !tmpl.variables.count(name)) {
        errors.push_back(path + ": {" + name + "} is used but not defined under " + path + ".variables");
      }
    }
  }
}

void read_rate_limits(TableReader& reader, RateLimitsConfig& limits) {
  reader.read_double("requests_per_second", limits.requests_per_second, 0, 1e6);
  reader.read_double("burst", limits.burst, 0, 1e7);
  reader.read_double("generations_per_minute", limits.generations_per_minute, 0, 1e6);
  reader.read_double("generation_burst", limits.generation_burst, 0, 1e6);
  if (limits.requests_per_second > 0 && limits.burst < 1) reader.error("burst", "must be at least 1 when requests_per_second is set");
  if (limits.generations_per_minute > 0 && limits.generation_burst < 1) {
    reader.error("generation_burst", "must be at least 1 when generations_per_minute is set");
  }
}

void read_budgets(TableReader& reader, BudgetsConfig& budgets) {
  reader.read_double("daily_usd", budgets.daily_usd, 0, 1e9);
  reader.read_double("monthly_usd", budgets.monthly_usd, 0, 1e9);
  reader.read_double("unknown_cost_usd", budgets.unknown_cost_usd, 0, 1e6);
  reader.read_string("ledger_path", budgets.ledger_path);
}

void read_jobs(TableReader& reader, JobsConfig& jobs) {
  reader.read_bool("enabled", jobs.enabled);
  reader.read_string("db_path", jobs.db_path);
  reader.read_int("max_queued", jobs.max_queued, 1, 1'000'000);
  reader.read_int("max_running", jobs.max_running, 1, 10'000);
  reader.read_int("retention_hours", jobs.retention_hours, 1, 24 * 366);
  reader.read_int("max_wait_seconds", jobs.max_wait_seconds, 1, 3600);
}

void read_webhooks(TableReader& reader, WebhooksConfig& webhooks, const Environment& env) {
  reader.read_secret_env("secret_env", webhooks.secret, env);
  reader.read_int("max_attempts", webhooks.max_attempts, 1, 50);
  reader.read_int("base_delay_ms", webhooks.base_delay_ms, 1, 3'600'000);
  reader.read_int("timeout_ms", webhooks.timeout_ms, 100, 600'000);
  reader.read_bool("allow_private_addresses", webhooks.allow_private_addresses);
  reader.read_int("queue_size", webhooks.queue_size, 1, 1'000'000);
  if (webhooks.secret.env_name.empty()) return;

  // Standard Webhooks secrets are "whsec_" followed by the base64 of 24 to 64
  // random bytes; the decoded bytes are the HMAC-SHA256 key.
  const std::string& value = webhooks.secret.value;
  const std::string hint = "; generate one with `echo whsec_$(openssl rand -base64 32)`";
  if (value.empty()) {
    reader.error("secret_env", "the environment variable " + webhooks.secret.env_name + " is unset or empty" + hint);
    return;
  }
  std::optional<std::string> key;
  if (value.rfind("whsec_", 0) == 0) key = core::base64_decode(std::string_view(value).substr(6));
  if (!key) {
    reader.error("secret_env", "the value of " + webhooks.secret.env_name +
                                   " must be \"whsec_\" followed by standard base64" + hint);
  } else if (key->size() < 24 || key->size() > 64) {
    reader.error("secret_env", "the value of " + webhooks.secret.env_name + " decodes to " +
                                   std::to_string(key->size()) + " bytes; it must be 24 to 64 bytes" + hint);
  }
}

void read_api_key(TableReader& reader, ApiKeyConfig& key, const RateLimitsConfig& defaults) {
  reader.read_string("sha256", key.sha256);
  if (key.sha256.rfind("sha256:", 0) == 0) key.sha256 = key.sha256.substr(7);
  if (!core::is_sha256_hex(key.sha256)) {
    reader.error("sha256", "must be the 64 lower-case hex digits that `pixelgate keys new` prints");
  }
  reader.read_string_array("scopes", key.scopes);
  for (const auto& scope : key.scopes) {
    if (scope != "generate" && scope != "admin") {
      reader.error("scopes", "unknown scope \"" + scope + "\"; use \"generate\" or \"admin\"");
    }
  }
  RateLimitsConfig limits = defaults;
  read_rate_limits(reader, limits);
  const bool overridden = limits.requests_per_second != defaults.requests_per_second || limits.burst != defaults.burst ||
                          limits.generations_per_minute != defaults.generations_per_minute ||
                          limits.generation_burst != defaults.generation_burst;
  if (overridden) key.rate_limits = limits;
  reader.read_double("daily_usd", key.daily_usd, 0, 1e9);
  reader.read_double("monthly_usd", key.monthly_usd, 0, 1e9);
  reader.read_int("max_concurrent_generations", key.max_concurrent_generations, 0, 100000);
}

void read_security(const toml::table& root, Config& config, const Environment& env, std::set<std::string>& used_env,
                   std::vector<std::string>& errors, bool embedded) {
  SecurityConfig& security = config.security;
  // Without any file, pixelgate is a development server on loopback.
  if (embedded) security.mode = "open";
  const toml::table* table = sub_table(root, "security", errors);
  TableReader reader(table, "security", errors, &env, &used_env);
  reader.read_string("mode", security.mode, {"signed", "open", "templates"});
  reader.read_string_array("public_templates", security.public_templates);
  reader.read_string_array("trusted_proxies", security.trusted_proxies);
  reader.read_string("default_signing_key", security.default_signing_key);
  if (security.mode == "templates" && security.public_templates.empty()) {
    reader.error("public_templates", "must list at least one template when mode is \"templates\"");
  }

  const toml::table* keys = nullptr;
  if (table) {
    if (const toml::node* node = table->get("signing_keys")) {
      reader.mark_known("signing_keys");
      keys = node->as_table();
      if (!keys) errors.push_back("security.signing_keys: must be a table");
    }
  }
  reader.finish();
  if (keys) {
    for (const auto& [key, node] : *keys) {
      const std::string id(key.str());
      const std::string path = "security.signing_keys." + id;
      if (!node.is_table()) {
        errors.push_back(path + ": must be a table");
        continue;
      }
      SigningKeyConfig signing;
      signing.id = id;
      TableReader key_reader(node.as_table(), path, errors);
      key_reader.read_secret_env("secret_env", signing.secret, env);
      key_reader.read_double("daily_usd", signing.daily_usd, 0, 1e9);
      key_reader.read_double("monthly_usd", signing.monthly_usd, 0, 1e9);
      if (signing.secret.env_name.empty()) {
        key_reader.error("secret_env", "missing; name the environment variable that holds the secret");
      } else if (signing.secret.value.size() < 16) {
        key_reader.error("secret_env", "the environment variable " + signing.secret.env_name +
                                           " is unset or shorter than 16 bytes; generate one with `openssl rand "
                                           "-base64 32`");
      }
      key_reader.finish();
      security.signing_keys.emplace(id, std::move(signing));
    }
  }
  if (!security.default_signing_key.empty() && !security.signing_keys.count(security.default_signing_key)) {
    errors.push_back("security.default_signing_key: \"" + security.default_signing_key +
                     "\" is not defined under [security.signing_keys]");
  }
  if (security.default_signing_key.empty() && !security.signing_keys.empty()) {
    security.default_signing_key = security.signing_keys.begin()->first;
  }
}

void read_costs(const toml::table& root, std::vector<CostEntry>& costs, std::vector<std::string>& errors) {
  const toml::node* node = root.get("costs");
  if (!node) return;
  const toml::array* rows = node->as_array();
  if (!rows) {
    errors.push_back("costs: must be an array of tables ([[costs]])");
    return;
  }
  for (std::size_t i = 0; i < rows->size(); ++i) {
    const std::string path = "costs[" + std::to_string(i) + "]";
    const toml::table* row = (*rows)[i].as_table();
    if (!row) {
      errors.push_back(path + ": must be a table");
      continue;
    }
    CostEntry entry;
    TableReader reader(row, path, errors);
    reader.read_string("backend", entry.backend);
    reader.read_string("model", entry.model);
    reader.read_string("size", entry.size);
    reader.read_string("quality", entry.quality);
    entry.usd = -1;
    reader.read_double("usd", entry.usd, 0, 1e6);
    if (entry.usd < 0) reader.error("usd", "missing; give the price of one image in US dollars");
    reader.finish();
    costs.push_back(std::move(entry));
  }
}

bool is_valid_name(const std::string& name) {
  if (name.empty() || name.size() > 64) return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_')) return false;
  }
  return true;
}

// Picks the default backend when the file configures none: openai when both
// OPENAI_API_KEY and OPENAI_BASE_URL are set, the placeholder otherwise.
void add_default_backend(Config& config, const Environment& env) {
  auto key = env.find("OPENAI_API_KEY");
  auto base = env.find("OPENAI_BASE_URL");
  if (key != env.end() && !key->second.empty() && base != env.end() && !base->second.empty()) {
    BackendConfig openai;
    openai.name = "openai";
    openai.type = "openai";
    openai.base_url = base->second;
    while (!openai.base_url.empty() && openai.base_url.back() == '/') openai.base_url.pop_back();
    openai.model = "gpt-image-2";
    openai.api_key = {"OPENAI_API_KEY", key->second};
    config.backends.emplace("openai", openai);
    config.default_backend = "openai";
    return;
  }
  BackendConfig placeholder;
  placeholder.name = "placeholder";
  placeholder.type = "placeholder";
  placeholder.model = "placeholder-v1";
  config.backends.emplace("placeholder", placeholder);
  config.default_backend = "placeholder";
  config.placeholder_by_default = true;
}

void read_named_tables(const toml::table& root, const std::string& section, std::vector<std::string>& errors,
                       const std::function<void(const std::string&, TableReader&)>& read_one) {
  const toml::table* tables = sub_table(root, section, errors);
  if (!tables) return;
  for (const auto& [key, node] : *tables) {
    const std::string name(key.str());
    const std::string path = section + "." + name;
    if (!is_valid_name(name)) {
      errors.push_back(path + ": invalid name; use 1 to 64 letters, digits, '-' or '_'");
      continue;
    }
    if (!node.is_table()) {
      errors.push_back(path + ": must be a table");
      continue;
    }
    TableReader reader(node.as_table(), path, errors);
    read_one(name, reader);
    reader.finish();
  }
}

}  // namespace

Environment process_environment() {
  Environment env;
  for (char** entry = environ; entry && *entry; ++entry) {
    std::string_view text(*entry);
    const std::size_t eq = text.find('=');
    if (eq == std::string_view::npos) continue;
    env.emplace(std::string(text.substr(0, eq)), std::string(text.substr(eq + 1)));
  }
  return env;
}

namespace {

core::Result<Config> load(const std::string& toml_text, const std::string& source_name, const Environment& env,
                          bool embedded) {
  toml::table root;
  try {
    root = toml::parse(toml_text, source_name);
  } catch (const toml::parse_error& error) {
    const auto& where = error.source().begin;
    return core::Error::invalid(source_name + ":" + std::to_string(where.line) + ":" + std::to_string(where.column) +
                                ": invalid TOML: " + std::string(error.description()));
  }

  Config config;
  std::vector<std::string> errors;
  std::set<std::string> used_env;

  const std::set<std::string> known_sections = {"server",    "storage",     "limits",   "logging", "backends",
                                                "templates", "rate_limits", "security", "budgets", "costs",
                                                "api_keys",  "default_backend", "redis",    "jobs",
                                                "webhooks"};
  for (const auto& [key, node] : root) {
    if (!known_sections.count(std::string(key.str()))) errors.push_back(std::string(key.str()) + ": unknown key");
  }
  if (const toml::node* node = root.get("default_backend")) {
    if (node->is_string()) {
      config.default_backend = node->as_string()->get();
    } else {
      errors.push_back("default_backend: must be a string");
    }
  }

  auto read_section = [&](const std::string& name, auto&& read) {
    TableReader reader(sub_table(root, name, errors), name, errors, &env, &used_env);
    read(reader);
    reader.finish();
  };
  read_section("server", [&](TableReader& r) { read_server(r, config.server); });
  read_section("storage", [&](TableReader& r) {
    read_storage(r, config.storage, sub_table(root, "storage", errors), errors, env);
  });
  read_section("redis", [&](TableReader& r) { read_redis(r, config.redis, env); });
  read_section("limits", [&](TableReader& r) { read_limits(r, config.limits); });
  read_section("logging", [&](TableReader& r) { read_logging(r, config.logging); });

  read_section("rate_limits", [&](TableReader& r) { read_rate_limits(r, config.rate_limits); });
  read_section("budgets", [&](TableReader& r) { read_budgets(r, config.budgets); });
  read_section("jobs", [&](TableReader& r) { read_jobs(r, config.jobs); });
  read_section("webhooks", [&](TableReader& r) { read_webhooks(r, config.webhooks, env); });
  read_security(root, config, env, used_env, errors, embedded);

  // A PIXELGATE_SERVER_FOO that matches no key is a typo worth failing on.
  for (const auto& [name, value] : env) {
    if (name.rfind(kEnvPrefix, 0) != 0 || used_env.count(name)) continue;
    const std::string rest = core::to_lower_ascii(name.substr(kEnvPrefix.size()));
    for (const auto& section : kEnvSections) {
      if (rest.rfind(section + "_", 0) == 0) {
        errors.push_back(name + ": unknown setting " + section + "." + rest.substr(section.size() + 1));
        break;
      }
    }
  }
  read_costs(root, config.costs, errors);
  read_named_tables(root, "api_keys", errors, [&](const std::string& name, TableReader& reader) {
    ApiKeyConfig key;
    key.name = name;
    read_api_key(reader, key, config.rate_limits);
    config.api_keys.emplace(name, std::move(key));
  });

  read_named_tables(root, "backends", errors, [&](const std::string& name, TableReader& reader) {
    BackendConfig backend;
    backend.name = name;
    read_backend(reader, backend, env);
    read_backend_pool(reader, backend, root["backends"][name].as_table(), errors, "backends." + name);
    validate_backend(reader, backend);
    config.backends.emplace(name, std::move(backend));
  });
  if (config.backends.empty()) {
    if (!config.default_backend.empty()) {
      errors.push_back("default_backend: \"" + config.default_backend + "\" is not defined under [backends]");
    } else {
      add_default_backend(config, env);
    }
  } else if (config.default_backend.empty()) {
    config.default_backend = config.backends.begin()->first;
  } else if (!config.backends.count(config.default_backend)) {
    errors.push_back("default_backend: \"" + config.default_backend + "\" is not defined under [backends]");
  }

  read_named_tables(root, "templates", errors, [&](const std::string& name, TableReader& reader) {
    TemplateConfig tmpl;
    tmpl.name = name;
    const toml::table* table = root["templates"][name].as_table();
    read_template(reader, tmpl, table, errors, "templates." + name);
    for (const auto& fallback : tmpl.fallbacks) {
      if (!config.backends.count(fallback)) reader.error("fallbacks", "\"" + fallback + "\" is not defined under [backends]");
    }
    if (!tmpl.backend.empty() && !config.backends.count(tmpl.backend)) {
      reader.error("backend", "\"" + tmpl.backend + "\" is not defined under [backends]");
    }
    const std::string primary = tmpl.backend.empty() ? config.default_backend : tmpl.backend;
    auto primary_it = config.backends.find(primary);
    if (tmpl.cold_start != "wait" && primary_it != config.backends.end() && !primary_it->second.pool) {
      reader.error("cold_start", "applies only when the template's backend has [backends." + primary +
                                     ".pool]; \"" + primary + "\" has none");
    }
    config.templates.emplace(name, std::move(tmpl));
  });
  if (!config.templates.count("default")) {
    TemplateConfig tmpl;
    tmpl.name = "default";
    config.templates.emplace("default", tmpl);
  }

  for (const auto& name : config.security.public_templates) {
    if (!config.templates.count(name)) {
      errors.push_back("security.public_templates: \"" + name + "\" is not defined under [templates]");
    }
  }

  if (!errors.empty()) {
    std::string message = "invalid configuration in " + source_name + ":";
    for (const auto& line : errors) message += "\n  " + line;
    return core::Error::invalid(message);
  }
  return config;
}

}  // namespace

core::Result<Config> load_from_string(const std::string& toml_text, const std::string& source_name,
                                      const Environment& env) {
  return load(toml_text, source_name, env, false);
}

core::Result<Config> load_file(const std::string& path, const Environment& env) {
  if (path.empty()) return load("", "the built-in defaults", env, true);
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return core::Error::invalid("cannot read configuration file \"" + path + "\": it is a directory; name a TOML file");
  }
  std::ifstream file(path, std::ios::binary);
  if (!file) return core::Error::invalid("cannot read configuration file \"" + path + "\": " + std::strerror(errno));
  std::ostringstream text;
  text << file.rdbuf();
  return load_from_string(text.str(), path, env);
}

}  // namespace pixelgate::config
