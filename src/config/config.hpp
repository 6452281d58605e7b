// Typed configuration: one TOML file plus PIXELGATE_<SECTION>_<KEY>
// environment overrides. Every key has a default here, every value is checked
// at load, and every problem is reported with its key path.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/error.hpp"

namespace pixelgate::config {

// A secret read from an environment variable. It keeps the variable's name
// for messages; the value is never printed by anything in this program.
struct Secret {
  std::string env_name;
  std::string value;
  bool empty() const noexcept { return value.empty(); }
};

struct ServerConfig {
  std::string host = "127.0.0.1";
  int port = 8080;
  int threads = 0;  // event-loop threads; 0 = one per CPU core
  int max_connections = 10000;
  std::int64_t header_limit_bytes = 16 * 1024;
  std::int64_t body_limit_bytes = 1024 * 1024;
  int header_timeout_ms = 10'000;  // from connection or keep-alive to the end of the headers
  int idle_timeout_ms = 60'000;    // keep-alive connection with no request
  int write_timeout_ms = 60'000;
  int shutdown_grace_ms = 30'000;  // wait for in-flight requests on SIGTERM
  // Base for absolute image URLs in JSON answers, e.g. "https://img.example.com".
  // Empty: built from the request's Host header.
  std::string public_base_url;
};

struct StorageConfig {
  std::string kind = "disk";
  std::string path = "./data";
  std::int64_t hot_cache_bytes = 256LL * 1024 * 1024;
  std::int64_t hot_cache_max_object_bytes = 8LL * 1024 * 1024;
};

struct LimitsConfig {
  int workers = 16;      // threads for provider calls, disk reads on misses and image work
  int queue_size = 1024; // tasks waiting for a worker before requests get 503
  int max_prompt_chars = 4000;
  int max_prompt_bytes = 16'000;
  int min_dimension = 64;
  int max_dimension = 4096;
  int generation_timeout_ms = 180'000;
  std::int64_t max_image_bytes = 32LL * 1024 * 1024;
  int max_batch = 4;  // largest `n` accepted on the OpenAI-compatible route
};

struct LoggingConfig {
  std::string level = "info";
  std::string format = "json";  // "json" or "text"
  bool access_log = true;
};

struct BackendConfig {
  std::string name;
  std::string type;  // "openai" or "placeholder"
  std::string model;
  std::string base_url;       // openai: e.g. "https://api.openai.com/v1"; no default
  Secret api_key;             // openai: from the variable named by api_key_env
  std::string quality;        // openai: model-specific quality, empty = the model's default
  std::string style;          // openai dall-e-3: "vivid" or "natural", empty = default
  int connect_timeout_ms = 5'000;
  int timeout_ms = 120'000;   // one attempt, transfer included
  int max_retries = 2;
  int retry_base_delay_ms = 500;
  int retry_max_delay_ms = 20'000;
  int download_timeout_ms = 30'000;  // fetching a url output
};

struct TemplateConfig {
  std::string name;
  std::string prompt = "{prompt}";  // "{prompt}" is replaced by the user's text
  std::string style;                // fixed text appended to every prompt
  std::string negative_prompt;
  std::string backend;              // empty = the default backend
  std::string model;                // empty = the backend's model
  int width = 1024;
  int height = 1024;
  int steps = 0;          // 0 = the backend's default
  double guidance = 0.0;  // 0 = the backend's default
  std::string sampler;
  std::string version = "1";
};

struct Config {
  ServerConfig server;
  StorageConfig storage;
  LimitsConfig limits;
  LoggingConfig logging;
  std::map<std::string, BackendConfig> backends;
  std::map<std::string, TemplateConfig> templates;
  std::string default_backend;
  // Set when the placeholder backend was chosen because nothing else was
  // configured, so start-up can warn about it.
  bool placeholder_by_default = false;
};

using Environment = std::map<std::string, std::string>;

// Returns the process environment as a map.
Environment process_environment();

// Parses TOML text (empty text = embedded defaults), applies overrides from
// `env` and validates. The error lists every problem, one per line, each with
// its key path (e.g. "server.port: must be between 1 and 65535, got 0").
core::Result<Config> load_from_string(const std::string& toml_text, const std::string& source_name,
                                      const Environment& env);

// Reads `path` and calls load_from_string. An empty path means embedded defaults.
core::Result<Config> load_file(const std::string& path, const Environment& env);

}  // namespace pixelgate::config
