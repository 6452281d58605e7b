// Typed configuration: one TOML file plus PIXELGATE_<SECTION>_<KEY>
// environment overrides. Every key has a default here, every value is checked
// at load, and every problem is reported with its key path.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
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
  std::int64_t header_limit_bytes = 64 * 1024;  // room for a long percent-encoded prompt in the URL
  std::int64_t body_limit_bytes = 1024 * 1024;
  int header_timeout_ms = 10'000;  // from connection or keep-alive to the end of the headers
  int idle_timeout_ms = 60'000;    // keep-alive connection with no request
  int write_timeout_ms = 60'000;
  int shutdown_grace_ms = 30'000;  // wait for in-flight requests on SIGTERM
  // Base for absolute image URLs in JSON responses, e.g. "https://img.example.com".
  // Empty: built from the request's Host header.
  std::string public_base_url;
};

// An S3-compatible bucket (AWS S3, Cloudflare R2, MinIO, Google Cloud
// Storage's XML API). There is no default endpoint: name the service's
// address, e.g. "https://s3.eu-west-1.amazonaws.com".
struct S3Config {
  std::string endpoint;
  std::string bucket;
  std::string region = "us-east-1";  // AWS_REGION or AWS_DEFAULT_REGION when set
  std::string addressing = "path";   // "path" (endpoint/bucket/key) or "virtual" (bucket.endpoint/key)
  std::string prefix;                // prepended to every object name, e.g. "images/"
  Secret access_key{"AWS_ACCESS_KEY_ID", {}};
  Secret secret_key{"AWS_SECRET_ACCESS_KEY", {}};
  Secret session_token{"AWS_SESSION_TOKEN", {}};
  // Writes send If-None-Match: * so an existing object is never replaced
  // (turn off for stores that reject the header).
  bool create_only = true;
  int connect_timeout_ms = 3'000;
  int timeout_ms = 30'000;  // one request, the whole transfer
  int max_attempts = 4;     // tries per operation on 5xx, throttling and transport errors
};

struct StorageConfig {
  std::string kind = "disk";  // "disk" or "s3"
  // Disk: where images live. Every kind: the default folder of the budget ledger.
  std::string path = "./data";
  std::int64_t hot_cache_bytes = 256LL * 1024 * 1024;
  std::int64_t hot_cache_max_object_bytes = 8LL * 1024 * 1024;
  // Disk: image files kept open, so hits are sent with sendfile(2).
  int open_files = 1000;
  S3Config s3;
  // How image bytes reach clients: "proxy" (pixelgate sends them) or
  // "redirect" (a 302 to redirect_base_url + "/" + object name, or, when that
  // is empty and the store is S3, to a presigned GET URL).
  std::string delivery = "proxy";
  std::string redirect_base_url;
  int presign_seconds = 3600;
};

// Shared state for several replicas. With an empty url everything stays in
// process memory.
struct RedisConfig {
  std::string url;  // "redis://127.0.0.1:6379/0" or "unix:///run/redis/redis.sock"
  Secret password;  // from password_env
  std::string key_prefix = "pixelgate:";
  int connect_timeout_ms = 500;
  int command_timeout_ms = 500;
  int pool_size = 8;              // connections kept open
  int lease_ttl_ms = 15'000;      // a generation lease expires this long after its last renewal
  int lease_poll_ms = 200;        // how often a waiting replica checks for the image
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
  int max_concurrent_generations = 32;         // backend calls in flight, all callers
  int max_concurrent_generations_per_key = 8;  // per API key, signing key or client address
  int refusal_cache_ms = 600'000;  // how long a content refusal is remembered per image key; 0 = off
};

// Token buckets applied per client address and per API key. A rate of 0
// disables that limit.
struct RateLimitsConfig {
  double requests_per_second = 100;  // image requests, hits included
  double burst = 200;
  double generations_per_minute = 10;  // requests that start a generation
  double generation_burst = 5;
};

struct SigningKeyConfig {
  std::string id;
  Secret secret;  // from the variable named by secret_env
  double daily_usd = 0;  // budget for images generated through this key; 0 = none
  double monthly_usd = 0;
};

struct ApiKeyConfig {
  std::string name;
  std::string sha256;                          // hex SHA-256 of the key; the key itself is never stored
  std::vector<std::string> scopes = {"generate"};  // "generate", "admin"
  std::optional<RateLimitsConfig> rate_limits;  // overrides [rate_limits] for this key
  double daily_usd = 0;
  double monthly_usd = 0;
  int max_concurrent_generations = 0;  // 0 = limits.max_concurrent_generations_per_key
};

struct SecurityConfig {
  // "signed": image routes need a signed URL or an API key. "open": no
  // checks, for local development. "templates": like "signed", except that
  // the templates in public_templates may be used without either.
  std::string mode = "signed";
  std::vector<std::string> public_templates;
  std::vector<std::string> trusted_proxies;  // CIDRs whose X-Forwarded-For and Forwarded headers are believed
  std::map<std::string, SigningKeyConfig> signing_keys;
  std::string default_signing_key;  // used by `pixelgate sign` without --key
};

struct BudgetsConfig {
  double daily_usd = 0;    // all callers together; 0 = unlimited
  double monthly_usd = 0;
  // Reserved for a call whose price neither the cost table nor the adapter
  // has, so budgets still bound spending.
  double unknown_cost_usd = 0.25;
  std::string ledger_path;  // empty = <storage.path>/ledger.sqlite3
};

// One row of the cost table; "*" matches anything.
struct CostEntry {
  std::string backend = "*";
  std::string model = "*";
  std::string size = "*";  // "WIDTHxHEIGHT"
  std::string quality = "*";
  double usd = 0;
};

struct LoggingConfig {
  std::string level = "info";
  std::string format = "json";  // "json" or "text"
  bool access_log = true;
};

// Asynchronous jobs: POST /v1/jobs, GET /v1/jobs/{id} and `Prefer: wait=N`.
struct JobsConfig {
  bool enabled = true;
  std::string db_path;      // empty = <storage.path>/jobs.sqlite3
  int max_queued = 1000;    // jobs waiting for a slot; more get 503 with Retry-After
  int max_running = 4;      // jobs generating at once
  int retention_hours = 24; // finished jobs are deleted this long after they finish
  int max_wait_seconds = 60;  // cap on the N of `Prefer: wait=N`
};

// Signed job-completion callbacks (Standard Webhooks).
struct WebhooksConfig {
  Secret secret;  // from secret_env: "whsec_" + base64 of 24 to 64 random bytes
  int max_attempts = 5;      // tries per event, the first one included
  int base_delay_ms = 1000;  // wait before the first retry; doubles each retry
  int timeout_ms = 10'000;   // one attempt: DNS lookup, connect and transfer each
  // Lets webhooks reach loopback, private and link-local addresses; for
  // tests and private networks only.
  bool allow_private_addresses = false;
  int queue_size = 1000;  // events waiting to be sent
};

// The backend types this program supports; each has an adapter in backends/.
inline const std::set<std::string> kBackendTypes = {"openai",    "placeholder", "stability", "bedrock", "replicate",
                                                    "fal",       "a1111",       "comfyui",   "sdcpp"};

// A pool of self-hosted model servers that pixelgate starts and stops itself
// ([backends.NAME.pool]), for types a1111, sdcpp and comfyui. Each instance
// listens on http://127.0.0.1:{port}; docs/pools.md describes the lifecycle.
struct PoolConfig {
  // argv of one instance, run without a shell; "{port}" and "{model}" in any
  // element (and in env values) are replaced per instance.
  std::vector<std::string> command;
  std::map<std::string, std::string> env;  // added to pixelgate's environment
  std::string ready_path;    // empty = the type's default (a1111: /sdapi/v1/options)
  int ready_status = 200;    // the status ready_path must return
  bool ready_canary = false; // ready after one small generation succeeds instead
  int ready_poll_ms = 200;   // time between readiness probes
  int start_timeout_ms = 120'000;  // spawn to ready; past it the process group is killed
  int instance_concurrency = 1;    // generations sent to one instance at once
  int min_instances = 0;           // kept running (within warm_schedule); 0 = scale to zero
  int max_instances = 1;
  int idle_timeout_ms = 300'000;   // an instance with no generation for this long is stopped
  std::string warm_schedule;       // "HH:MM-HH:MM" UTC; empty = min_instances always applies
  int warm_start_minute = -1;      // warm_schedule parsed: minutes after 00:00 UTC, -1 = none
  int warm_end_minute = -1;
  int restart_backoff_ms = 1'000;       // first delay before restarting after a crash
  int restart_backoff_max_ms = 60'000;  // cap; the delay doubles per consecutive failure
  int queue_size = 16;                  // requests waiting for a free instance
  int stop_grace_ms = 10'000;           // SIGTERM, then SIGKILL after this long
  int expected_start_ms = 0;  // cold start estimate before any was measured; 0 = start_timeout_ms
  int port_min = 0;           // port_range = [min, max]; 0 = a free port from the kernel
  int port_max = 0;
  std::string log_file;       // child output appended here; empty = pixelgate's log
};

struct BackendConfig {
  std::string name;
  std::string type;  // one of kBackendTypes
  std::string model;
  std::string model_version;  // replicate: a model version id instead of an official model
  std::string base_url;       // required for every network backend; there is no built-in host
  Secret api_key;             // from the variable named by api_key_env
  std::string region;         // bedrock: e.g. "us-east-1"
  Secret access_key;          // bedrock: access_key_env, default AWS_ACCESS_KEY_ID
  Secret secret_key;          // bedrock: secret_key_env, default AWS_SECRET_ACCESS_KEY
  Secret session_token;       // bedrock: session_token_env, default AWS_SESSION_TOKEN (optional)
  std::string workflow;       // comfyui: path of a workflow in API format
  std::string output_format = "png";
  int connect_timeout_ms = 5'000;
  int timeout_ms = 120'000;   // one attempt, transfer included
  int max_retries = 2;
  int retry_base_delay_ms = 500;
  int retry_max_delay_ms = 20'000;
  int download_timeout_ms = 30'000;  // fetching a url output
  int poll_interval_ms = 1'000;      // asynchronous APIs: time between status checks
  int max_concurrency = 0;           // calls in flight to this backend; 0 = no limit of its own
  int queue_size = 256;              // calls waiting for a concurrency slot
  int failure_threshold = 5;         // consecutive failures that open the circuit breaker
  int open_ms = 30'000;              // how long an open circuit rejects calls before a probe
  std::optional<PoolConfig> pool;    // set by [backends.NAME.pool]; base_url is then per instance
};

// A named value a request may set for a template, as ?NAME=VALUE.
struct TemplateVariable {
  std::string name;
  std::string type = "string";  // "string" or "integer"
  std::optional<std::string> default_value;  // without one the variable is required
  std::vector<std::string> allowed;          // empty = any value
  std::string pattern;                       // ECMAScript regular expression the whole value must match
  int max_length = 100;                      // characters (code points)
  std::int64_t min = 0;                      // integers only
  std::int64_t max = 1'000'000;
};

struct TemplateConfig {
  std::string name;
  // "{prompt}" is replaced by the user's text and "{NAME}" by variable NAME.
  std::string prompt = "{prompt}";
  std::string style;  // fixed text appended to every prompt; may use variables
  std::string negative_prompt;
  std::string backend;  // empty = the default backend
  std::string model;    // empty = the backend's model
  int width = 1024;     // default size
  int height = 1024;
  std::vector<std::pair<int, int>> sizes;  // allowed sizes; empty = any within limits
  std::string quality;                     // provider-specific, e.g. "low" for a cheap draft
  int steps = 0;          // 0 = the backend's default
  double guidance = 0.0;  // 0 = the backend's default
  std::string sampler;
  std::string version = "1";
  std::map<std::string, TemplateVariable> variables;
  // Backends tried in order when the primary one is unavailable, rate
  // limited, timed out or failing; each must accept the template's size.
  std::vector<std::string> fallbacks;
  // What a request does when the primary backend is a pool with no ready
  // instance: "wait" for the start, or, when the expected start takes longer
  // than max_cold_start_ms, "fallback" (try the fallbacks) or "placeholder"
  // (the fallbacks, then a short-lived placeholder image).
  std::string cold_start = "wait";
  int max_cold_start_ms = 0;
};

struct Config {
  ServerConfig server;
  StorageConfig storage;
  RedisConfig redis;
  LimitsConfig limits;
  LoggingConfig logging;
  RateLimitsConfig rate_limits;
  SecurityConfig security;
  BudgetsConfig budgets;
  std::vector<CostEntry> costs;
  std::map<std::string, ApiKeyConfig> api_keys;
  std::map<std::string, BackendConfig> backends;
  std::map<std::string, TemplateConfig> templates;
  JobsConfig jobs;
  WebhooksConfig webhooks;
  std::string default_backend;
  // Set when the placeholder backend was chosen because nothing else was
  // configured, so start-up can warn about it.
  bool placeholder_by_default = false;
};

using Environment = std::map<std::string, std::string>;

// Returns the process environment as a map.
Environment process_environment();

// Parses TOML text, applies overrides from `env` and validates. The error
// lists every problem, one per line, each with its key path (e.g.
// "server.port: must be between 0 and 65535, got 70000").
core::Result<Config> load_from_string(const std::string& toml_text, const std::string& source_name,
                                      const Environment& env);

// Reads `path` and calls load_from_string. An empty path means the embedded
// defaults, a development set-up whose security.mode is "open" (any file
// defaults to "signed").
core::Result<Config> load_file(const std::string& path, const Environment& env);

}  // namespace pixelgate::config
