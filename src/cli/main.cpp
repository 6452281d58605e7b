// pixelgate: AI images by URL. Subcommands: serve, generate, config check.
#include <algorithm>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <cstdio>
#include <fstream>
#include <future>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "admission/budget.hpp"
#include "admission/gate.hpp"
#include "admission/url_signing.hpp"
#include "api/app.hpp"
#include "api/image_query.hpp"
#include "backends/http_client.hpp"
#include "cli/jobs_runtime.hpp"
#include "cli/runtime.hpp"
#include "cli/warm.hpp"
#include "imaging/image.hpp"
#include "storage/object_store.hpp"
#include "http/server.hpp"
#include "observability/logging.hpp"

namespace {

using namespace pixelgate;

constexpr const char* kUsage = R"(pixelgate - AI images by URL

Usage:
  pixelgate serve [--config FILE]
      Start the HTTP server (default 127.0.0.1:8080, images under ./data).
  pixelgate generate PROMPT -o FILE [--config FILE] [--template NAME]
                     [--width N] [--height N] [--seed N|random]
      Generate one image through the same pipeline and cache, and write it to FILE.
  pixelgate config check [FILE]
      Load and validate a configuration, print a summary, exit 0 when valid.
  pixelgate sign URL [--expires DURATION] [--key ID] [--config FILE]
      Print URL signed with a signing key (DURATION: 30s, 15m, 1h, 7d).
  pixelgate keys new [--name NAME]
      Print a new API key and the configuration lines that accept it.
  pixelgate costs [--by key|backend|day] [--config FILE]
      Print the money spent, from the budget ledger.
  pixelgate cache purge (--key KEY | --template NAME [--version V]) [--dry-run yes] [--config FILE]
      Remove images from the store and print what to purge at the CDN.
  pixelgate warm FILE [--concurrency N] [--max-usd X] [--config FILE]
      Generate ahead of time every image FILE names (one request path or
      JSON object per line) that is not stored yet; stop before spending
      more than X US dollars or passing a configured budget.
  pixelgate templates list [--config FILE]
  pixelgate templates show NAME [--config FILE]
  pixelgate templates render NAME --prompt TEXT [--var NAME=VALUE]... [--size WxH] [--seed N]
      List templates, print one, or preview its final prompt and cache key
      without generating.
  pixelgate version
  pixelgate help

Without --config, PIXELGATE_CONFIG names the file; with neither, embedded
defaults apply. PIXELGATE_<SECTION>_<KEY> variables override single settings,
for example PIXELGATE_SERVER_PORT=9000. See docs/configuration.md.
)";

// Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;

struct Arguments {
  std::vector<std::string> positional;
  std::map<std::string, std::string> options;
};

// Parses "--name value", "--name=value" and "-o value". Returns an error
// message for an option missing its value or one not in `known`.
std::optional<std::string> parse_arguments(int argc, char** argv, int first, const std::set<std::string>& known,
                                           Arguments& out) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) == 0 || arg == "-o") {
      std::string name = arg == "-o" ? "--output" : arg;
      std::string value;
      const std::size_t eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else {
        if (i + 1 >= argc) return "option " + name + " needs a value";
        value = argv[++i];
      }
      if (!known.count(name)) return "unknown option " + name;
      out.options[name] = value;
    } else {
      out.positional.push_back(arg);
    }
  }
  return std::nullopt;
}

std::string config_path(const Arguments& args) {
  if (auto it = args.options.find("--config"); it != args.options.end()) return it->second;
  if (const char* env = std::getenv("PIXELGATE_CONFIG")) return env;
  return {};
}

std::string format_access_record(const http::AccessRecord& record) {
  nlohmann::json fields = {{"request_id", record.request->request_id},
                           {"method", record.request->method},
                           {"path", record.request->path},
                           {"status", record.status},
                           {"bytes", record.body_bytes},
                           {"duration_ms", std::round(record.duration_ms * 100) / 100},
                           {"remote", record.request->remote_address}};
  if (!record.cache_state.empty()) fields["cache"] = record.cache_state;
  return fields.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

int run_serve(const Arguments& args) {
  auto config = cli::load_config(config_path(args));
  if (!config) {
    std::fprintf(stderr, "pixelgate: %s\n", config.error().message.c_str());
    return kExitUsage;
  }
  observability::setup_logging(config->logging.level, config->logging.format);

  // Block the stop signals in every thread; one thread waits for them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);

  cli::warn_about_access(*config);
  auto runtime = cli::build_runtime(std::move(config).value());
  if (!runtime) {
    spdlog::error("start-up failed: {}", runtime.error().message);
    return kExitUsage;
  }
  cli::Runtime& rt = **runtime;
  const auto& server_config = rt.config.server;

  generation::ResolutionCache resolutions(10'000);
  std::function<core::Status()> check_shared_state;
  if (rt.redis) check_shared_state = [&rt] { return rt.redis->ping(); };
  auto jobs_runtime = cli::start_jobs(rt);
  if (!jobs_runtime) {
    spdlog::error("start-up failed: {}", jobs_runtime.error().message);
    return kExitUsage;
  }
  jobs::JobRunner* job_runner = *jobs_runtime ? (*jobs_runtime)->runner.get() : nullptr;
  api::App app({rt.config, rt.backends, *rt.resolver, *rt.images, *rt.store, *rt.workers, *rt.gate, resolutions,
                check_shared_state, job_runner});
  http::ServerOptions options;
  options.host = server_config.host;
  options.port = server_config.port;
  options.threads = server_config.threads > 0 ? server_config.threads
                                              : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  options.max_connections = server_config.max_connections;
  options.header_limit_bytes = static_cast<std::uint64_t>(server_config.header_limit_bytes);
  options.body_limit_bytes = static_cast<std::uint64_t>(server_config.body_limit_bytes);
  options.header_timeout_ms = server_config.header_timeout_ms;
  options.idle_timeout_ms = server_config.idle_timeout_ms;
  options.write_timeout_ms = server_config.write_timeout_ms;

  http::AccessLogger access_logger;
  if (rt.config.logging.access_log) {
    access_logger = [](const http::AccessRecord& record) {
      // Health probes come every few seconds and carry no new information.
      if (record.request->path == "/healthz" || record.request->path == "/readyz") return;
      observability::log_access(format_access_record(record));
    };
  }
  http::Server server(options, [&app](http::Request&& request, http::Responder responder) {
    app.handle(std::move(request), std::move(responder));
  }, access_logger);
  if (auto status = server.start(); !status) {
    spdlog::error("start-up failed: {}", status.error().message);
    return kExitFailure;
  }

  std::thread signal_thread([&server, &stop_signals, grace = server_config.shutdown_grace_ms] {
    int signal_number = 0;
    sigwait(&stop_signals, &signal_number);
    spdlog::info("received {}; stopping: no new connections, finishing requests in progress (up to {} ms)",
                 signal_number == SIGTERM ? "SIGTERM" : "SIGINT", grace);
    server.shutdown(grace);
  });

  spdlog::info("pixelgate {} listening on http://{}:{} ({} threads, storage {}, default backend {})",
               PIXELGATE_VERSION, server_config.host, server.port(), options.threads, rt.store->describe(),
               rt.config.default_backend);
  // Tests and scripts that use port 0 read the bound port from this line.
  std::fprintf(stdout, "{\"listening\":{\"host\":\"%s\",\"port\":%d}}\n", server_config.host.c_str(), server.port());
  std::fflush(stdout);

  server.run();
  // Queued jobs stay queued for the next start; running ones finish below.
  if (job_runner) job_runner->stop_dispatch();

  // Generations whose clients have left are still paid for: let them finish.
  const std::size_t unfinished = rt.images->drain(std::chrono::milliseconds(server_config.shutdown_grace_ms));
  if (unfinished > 0) spdlog::warn("stopping with {} generations still in flight", unfinished);
  rt.workers->stop();
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  spdlog::info("pixelgate stopped");
  return 0;
}

int run_generate(const Arguments& args) {
  if (args.positional.size() != 1) {
    std::fprintf(stderr, "pixelgate generate: give exactly one PROMPT (quote it)\n");
    return kExitUsage;
  }
  const auto output = args.options.find("--output");
  if (output == args.options.end()) {
    std::fprintf(stderr, "pixelgate generate: -o FILE is required\n");
    return kExitUsage;
  }
  auto config = cli::load_config(config_path(args));
  if (!config) {
    std::fprintf(stderr, "pixelgate: %s\n", config.error().message.c_str());
    return kExitUsage;
  }
  observability::setup_logging(config->logging.level == "info" ? "warn" : config->logging.level, "text");
  auto runtime = cli::build_runtime(std::move(config).value());
  if (!runtime) {
    std::fprintf(stderr, "pixelgate: %s\n", runtime.error().message.c_str());
    return kExitUsage;
  }
  cli::Runtime& rt = **runtime;

  generation::ImageRequest request;
  request.prompt = args.positional[0];
  if (auto it = args.options.find("--template"); it != args.options.end()) request.template_name = it->second;
  for (const char* flag : {"--width", "--height", "--seed"}) {
    auto it = args.options.find(flag);
    if (it == args.options.end()) continue;
    std::uint64_t number = 0;
    if (std::string(flag) == "--seed" && it->second == "random") {
      request.random_seed = true;
    } else if (!api::parse_unsigned(it->second, number) || number > 4294967294u) {
      std::fprintf(stderr, "pixelgate generate: %s takes a whole number%s, got \"%s\"\n", flag,
                   std::string(flag) == "--seed" ? " or \"random\"" : "", it->second.c_str());
      return kExitUsage;
    } else if (std::string(flag) == "--seed") {
      request.seed = number;
    } else {
      (std::string(flag) == "--width" ? request.width : request.height) = static_cast<int>(std::min<std::uint64_t>(number, 100000));
    }
  }

  auto resolved = rt.resolver->resolve(request);
  if (!resolved) {
    std::fprintf(stderr, "pixelgate generate: %s\n", resolved.error().message.c_str());
    return kExitUsage;
  }
  std::promise<core::Result<generation::ImageOutcome>> promise;
  auto future = promise.get_future();
  rt.images->fetch_or_generate(*resolved, "cli", {"cli", "local"}, [&promise](core::Result<generation::ImageOutcome> outcome) {
    promise.set_value(std::move(outcome));
  });
  auto outcome = future.get();
  if (!outcome) {
    std::fprintf(stderr, "pixelgate generate: %s\n", outcome.error().message.c_str());
    return kExitFailure;
  }

  const std::string path = output->second;
  const std::string temporary = path + ".tmp";
  {
    std::ofstream file(temporary, std::ios::binary | std::ios::trunc);
    file.write(outcome->image->bytes->data(), static_cast<std::streamsize>(outcome->image->bytes->size()));
    if (!file.good()) {
      std::fprintf(stderr, "pixelgate generate: cannot write %s\n", temporary.c_str());
      return kExitFailure;
    }
  }
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    std::fprintf(stderr, "pixelgate generate: cannot rename %s to %s\n", temporary.c_str(), path.c_str());
    return kExitFailure;
  }
  std::fprintf(stderr, "wrote %s (%zu bytes, %s, key %s, cache %s, backend %s)\n", path.c_str(),
               outcome->image->bytes->size(), outcome->image->content_type.c_str(), resolved->key.c_str(),
               std::string(generation::to_string(outcome->state)).c_str(), resolved->spec.backend.c_str());
  return 0;
}

// Parses "90", "30s", "15m", "1h" or "7d" into seconds.
std::optional<std::int64_t> parse_duration(const std::string& text) {
  if (text.empty()) return std::nullopt;
  std::int64_t unit = 1;
  std::string digits = text;
  switch (text.back()) {
    case 's': unit = 1; digits.pop_back(); break;
    case 'm': unit = 60; digits.pop_back(); break;
    case 'h': unit = 3600; digits.pop_back(); break;
    case 'd': unit = 86400; digits.pop_back(); break;
    default: break;
  }
  if (digits.empty() || digits.size() > 9 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return std::nullopt;
  return std::stoll(digits) * unit;
}

int run_sign(const Arguments& args) {
  if (args.positional.size() != 1) {
    std::fprintf(stderr, "pixelgate sign: give exactly one URL or path, e.g. '/generate-image?prompt=a+dog'\n");
    return kExitUsage;
  }
  auto config = cli::load_config(config_path(args));
  if (!config) {
    std::fprintf(stderr, "pixelgate: %s\n", config.error().message.c_str());
    return kExitUsage;
  }
  std::string key_id = config->security.default_signing_key;
  if (auto it = args.options.find("--key"); it != args.options.end()) key_id = it->second;
  const auto& keys = config->security.signing_keys;
  if (keys.empty()) {
    std::fprintf(stderr, "pixelgate sign: %s defines no signing keys; pass --config FILE with a "
                         "[security.signing_keys.ID] table (see docs/signing.md)\n",
                 config_path(args).empty() ? "the built-in configuration" : config_path(args).c_str());
    return kExitUsage;
  }
  auto key = keys.find(key_id);
  if (key == keys.end()) {
    std::string names;
    for (const auto& [id, unused] : keys) names += (names.empty() ? "" : ", ") + id;
    std::fprintf(stderr, "pixelgate sign: no signing key \"%s\"; the configuration has %s\n", key_id.c_str(),
                 names.c_str());
    return kExitUsage;
  }
  std::optional<std::int64_t> expires;
  if (auto it = args.options.find("--expires"); it != args.options.end()) {
    auto seconds = parse_duration(it->second);
    if (!seconds) {
      std::fprintf(stderr, "pixelgate sign: --expires takes a duration such as 30s, 15m, 1h or 7d\n");
      return kExitUsage;
    }
    expires = core::SystemClock().unix_seconds() + *seconds;
  }

  // Keep an origin ("https://host") in front of the signed path and query.
  std::string url = args.positional[0];
  std::string origin;
  if (const std::size_t scheme = url.find("://"); scheme != std::string::npos) {
    const std::size_t path = url.find('/', scheme + 3);
    origin = url.substr(0, path);
    url = path == std::string::npos ? "/" : url.substr(path);
  }
  auto signed_url = admission::sign_url(url, {key->first, key->second.secret.value}, expires);
  if (!signed_url) {
    std::fprintf(stderr, "pixelgate sign: %s\n", signed_url.error().message.c_str());
    return kExitUsage;
  }
  std::printf("%s%s\n", origin.c_str(), signed_url->c_str());
  return 0;
}

int run_keys_new(const Arguments& args) {
  std::string name = "my-site";
  if (auto it = args.options.find("--name"); it != args.options.end()) name = it->second;
  const auto key = admission::generate_api_key();
  std::printf("API key (shown once; store it in your application's secrets):\n  %s\n\n", key.key.c_str());
  std::printf("Add to the pixelgate configuration:\n\n[api_keys.%s]\nsha256 = \"%s\"\nscopes = [\"generate\"]\n",
              name.c_str(), key.sha256.c_str());
  return 0;
}

int run_costs(const Arguments& args) {
  auto config = cli::load_config(config_path(args));
  if (!config) {
    std::fprintf(stderr, "pixelgate: %s\n", config.error().message.c_str());
    return kExitUsage;
  }
  std::string by = "key";
  if (auto it = args.options.find("--by"); it != args.options.end()) by = it->second;
  const std::string path = cli::ledger_path(*config);
  if (!std::filesystem::exists(path)) {
    std::printf("no spending recorded yet (%s does not exist)\n", path.c_str());
    return 0;
  }
  core::SystemClock clock;
  auto ledger = admission::BudgetLedger::open(path, clock);
  if (!ledger) {
    std::fprintf(stderr, "pixelgate costs: %s\n", ledger.error().message.c_str());
    return kExitFailure;
  }
  auto lines = (*ledger)->report(by);
  if (!lines) {
    std::fprintf(stderr, "pixelgate costs: %s\n", lines.error().message.c_str());
    return kExitUsage;
  }
  std::printf("%-40s %8s %12s\n", by.c_str(), "images", "usd");
  double total = 0;
  int images = 0;
  for (const auto& line : *lines) {
    std::printf("%-40s %8d %12.4f\n", line.group.c_str(), line.images, line.usd);
    total += line.usd;
    images += line.images;
  }
  std::printf("%-40s %8d %12.4f\n", "total", images, total);
  std::printf("\ntoday (UTC): $%.4f   this month (UTC): $%.4f\n", (*ledger)->spent_today(""),
              (*ledger)->spent_this_month(""));
  return 0;
}

bool is_tag_safe(const std::string& text) {
  if (text.empty() || text.size() > 100) return false;
  for (char c : text) {
    if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_' && c != '.') return false;
  }
  return true;
}

int run_cache_purge(const Arguments& args) {
  auto config = cli::load_config(config_path(args));
  if (!config) {
    std::fprintf(stderr, "pixelgate: %s\n", config.error().message.c_str());
    return kExitUsage;
  }
  observability::setup_logging("warn", "text");
  const auto option = [&args](const std::string& name) -> std::optional<std::string> {
    auto it = args.options.find(name);
    if (it == args.options.end()) return std::nullopt;
    return it->second;
  };
  const auto key = option("--key");
  const auto template_name = option("--template");
  const auto version = option("--version");
  const auto dry_run = option("--dry-run");
  if (key.has_value() == template_name.has_value() || (version && !template_name)) {
    std::fprintf(stderr, "pixelgate cache purge: give either --key KEY or --template NAME [--version V]\n");
    return kExitUsage;
  }
  if (dry_run && *dry_run != "yes" && *dry_run != "no") {
    std::fprintf(stderr, "pixelgate cache purge: --dry-run takes yes or no\n");
    return kExitUsage;
  }
  if (key && !storage::is_valid_key(*key)) {
    std::fprintf(stderr, "pixelgate cache purge: \"%s\" is not an image key (64 hex digits)\n", key->c_str());
    return kExitUsage;
  }
  if (auto status = imaging::initialize(); !status) {
    std::fprintf(stderr, "pixelgate cache purge: %s\n", status.error().message.c_str());
    return kExitFailure;
  }
  backends::initialize_http_client();
  auto store = cli::open_store(*config);
  if (!store) {
    std::fprintf(stderr, "pixelgate cache purge: %s\n", store.error().message.c_str());
    return kExitFailure;
  }

  // Which keys: the one given, or every stored image of the template.
  std::vector<std::pair<std::string, std::string>> matches;  // key, content type
  auto describe = [&](const std::string& candidate) -> core::Result<bool> {
    auto metadata = (*store)->find_metadata(candidate);
    if (!metadata) return std::move(metadata).error();
    if (!*metadata) return false;
    const auto json = nlohmann::json::parse(**metadata, nullptr, false);
    const auto spec = json.is_object() ? json.value("spec", nlohmann::json::object()) : nlohmann::json::object();
    if (template_name) {
      if (!spec.is_object() || spec.value("template", "") != *template_name) return false;
      if (version && spec.value("template_version", "") != *version) return false;
    }
    matches.emplace_back(candidate, json.is_object() ? json.value("content_type", "") : "");
    return true;
  };
  std::optional<core::Error> failure;
  if (key) {
    auto found = describe(*key);
    if (!found) failure = found.error();
    if (found && !*found) {
      std::printf("no image is stored under %s\n", key->c_str());
      return 0;
    }
  } else {
    std::vector<std::string> keys;
    auto listed = (*store)->list([&keys](const std::string& candidate) {
      if (candidate.size() == 64) keys.push_back(candidate);  // variants go with their master
      return true;
    });
    if (!listed) failure = listed.error();
    for (std::size_t i = 0; !failure && i < keys.size(); ++i) {
      auto found = describe(keys[i]);
      if (!found) failure = found.error();
    }
  }
  if (failure) {
    std::fprintf(stderr, "pixelgate cache purge: reading %s failed: %s\n", (*store)->describe().c_str(),
                 failure->message.c_str());
    return kExitFailure;
  }

  if (template_name && !config->templates.count(*template_name)) {
    std::printf("note: template \"%s\" is not in the configuration; purging its stored images all the same\n",
                template_name->c_str());
  }
  const bool removing = !dry_run || *dry_run == "no";
  std::size_t removed = 0;
  for (const auto& [image_key, content_type] : matches) {
    if (!removing) continue;
    if (auto status = (*store)->remove(image_key); !status) {
      std::fprintf(stderr, "pixelgate cache purge: removing %s failed: %s\n", image_key.c_str(),
                   status.error().message.c_str());
      return kExitFailure;
    }
    ++removed;
  }
  if (removing) {
    std::printf("removed %zu image(s) from %s\n", removed, (*store)->describe().c_str());
  } else {
    std::printf("would remove %zu image(s) from %s (dry run)\n", matches.size(), (*store)->describe().c_str());
  }
  if (matches.empty()) return 0;

  const auto& server = config->server;
  const std::string base = server.public_base_url.empty()
                               ? "http://" + server.host + ":" + std::to_string(server.port)
                               : server.public_base_url;
  std::printf("\npurge these URLs at your CDN%s:\n",
              server.public_base_url.empty()
                  ? " (built from server.host and server.port; set server.public_base_url to your public host)"
                  : "");
  for (const auto& [image_key, content_type] : matches) {
    std::string extension = content_type == "image/png"    ? ".png"
                            : content_type == "image/jpeg" ? ".jpg"
                            : content_type == "image/webp" ? ".webp"
                                                           : "";
    std::printf("  %s/images/%s%s\n", base.c_str(), image_key.c_str(), extension.c_str());
    if (!config->storage.redirect_base_url.empty()) {
      std::printf("  %s/%s\n", config->storage.redirect_base_url.c_str(), (*store)->object_name(image_key).c_str());
    }
  }
  std::printf("\nprompt URLs (/generate-image, /v1/images/...) are cached under their own URLs; purge them by "
              "surrogate key:\n");
  if (template_name && is_tag_safe(*template_name)) {
    std::printf("  template:%s\n", template_name->c_str());
  } else {
    for (const auto& [image_key, content_type] : matches) std::printf("  key:%s\n", image_key.c_str());
  }
  return 0;
}

nlohmann::json template_json(const config::TemplateConfig& tmpl) {
  nlohmann::json sizes = nlohmann::json::array();
  for (const auto& [w, h] : tmpl.sizes) sizes.push_back(std::to_string(w) + "x" + std::to_string(h));
  nlohmann::json variables = nlohmann::json::object();
  for (const auto& [name, variable] : tmpl.variables) {
    nlohmann::json entry = {{"type", variable.type}, {"max_length", variable.max_length}};
    if (variable.default_value) entry["default"] = *variable.default_value;
    if (!variable.allowed.empty()) entry["allowed"] = variable.allowed;
    if (!variable.pattern.empty()) entry["pattern"] = variable.pattern;
    variables[name] = entry;
  }
  return {{"name", tmpl.name},         {"prompt", tmpl.prompt},   {"style", tmpl.style},
          {"negative_prompt", tmpl.negative_prompt}, {"backend", tmpl.backend}, {"model", tmpl.model},
          {"width", tmpl.width},       {"height", tmpl.height},   {"sizes", sizes},
          {"quality", tmpl.quality},   {"steps", tmpl.steps},     {"guidance", tmpl.guidance},
          {"sampler", tmpl.sampler},   {"version", tmpl.version}, {"variables", variables}};
}

int run_templates(const Arguments& args, const std::vector<std::string>& variables) {
  const std::string action = args.positional.empty() ? "" : args.positional[0];
  auto config = cli::load_config(config_path(args));
  if (!config) {
    std::fprintf(stderr, "pixelgate: %s\n", config.error().message.c_str());
    return kExitUsage;
  }
  if (action == "list") {
    std::printf("%-22s %-12s %-16s %-10s %s\n", "template", "backend", "model", "size", "version");
    for (const auto& [name, tmpl] : config->templates) {
      const std::string backend = tmpl.backend.empty() ? config->default_backend : tmpl.backend;
      const std::string model = tmpl.model.empty() ? config->backends.at(backend).model : tmpl.model;
      std::printf("%-22s %-12s %-16s %-10s %s\n", name.c_str(), backend.c_str(), model.c_str(),
                  (std::to_string(tmpl.width) + "x" + std::to_string(tmpl.height)).c_str(), tmpl.version.c_str());
    }
    return 0;
  }
  if (args.positional.size() != 2 || (action != "show" && action != "render")) {
    std::fprintf(stderr, "pixelgate templates: use list, show NAME or render NAME --prompt TEXT\n");
    return kExitUsage;
  }
  const std::string name = args.positional[1];
  auto tmpl = config->templates.find(name);
  if (tmpl == config->templates.end()) {
    std::fprintf(stderr, "pixelgate templates: template \"%s\" is not configured\n", name.c_str());
    return kExitUsage;
  }
  if (action == "show") {
    std::printf("%s\n", template_json(tmpl->second).dump(2).c_str());
    return 0;
  }

  // render: resolve exactly as a request would, without storage or a call.
  observability::setup_logging("error", "text");
  generation::BackendMap backends;
  for (const auto& [backend_name, backend_config] : config->backends) {
    // Resolving needs only the adapter's rules, not a pool's running servers.
    config::BackendConfig adapter_config = backend_config;
    adapter_config.pool.reset();
    auto backend = backends::make_backend(adapter_config);
    if (!backend) {
      std::fprintf(stderr, "pixelgate: %s\n", backend.error().message.c_str());
      return kExitUsage;
    }
    backends.emplace(backend_name, std::move(backend).value());
  }
  const generation::Resolver resolver(*config, backends);
  generation::ImageRequest request;
  request.template_name = name;
  if (auto it = args.options.find("--prompt"); it != args.options.end()) request.prompt = it->second;
  for (const auto& assignment : variables) {
    const std::size_t eq = assignment.find('=');
    if (eq == std::string::npos) {
      std::fprintf(stderr, "pixelgate templates render: --var takes NAME=VALUE, got \"%s\"\n", assignment.c_str());
      return kExitUsage;
    }
    request.variables[assignment.substr(0, eq)] = assignment.substr(eq + 1);
  }
  if (auto it = args.options.find("--size"); it != args.options.end()) {
    int width = 0;
    int height = 0;
    if (!api::parse_size(it->second, width, height)) {
      std::fprintf(stderr, "pixelgate templates render: --size takes WIDTHxHEIGHT\n");
      return kExitUsage;
    }
    request.width = width;
    request.height = height;
  }
  if (auto it = args.options.find("--seed"); it != args.options.end()) {
    std::uint64_t seed = 0;
    if (!api::parse_unsigned(it->second, seed)) {
      std::fprintf(stderr, "pixelgate templates render: --seed takes a whole number\n");
      return kExitUsage;
    }
    request.seed = seed;
  }
  auto resolved = resolver.resolve(request);
  if (!resolved) {
    std::fprintf(stderr, "pixelgate templates render: %s\n", resolved.error().message.c_str());
    return kExitUsage;
  }
  const auto& spec = resolved->spec;
  nlohmann::json out = {{"key", resolved->key},       {"backend", spec.backend}, {"model", spec.model},
                        {"prompt", spec.prompt},      {"negative_prompt", spec.negative_prompt},
                        {"width", spec.width},        {"height", spec.height},   {"quality", spec.quality},
                        {"seed", spec.seed},          {"template", spec.template_name},
                        {"template_version", spec.template_version}};
  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

int run_warm(const Arguments& args) {
  if (args.positional.size() != 1) {
    std::fprintf(stderr, "pixelgate warm: give exactly one FILE of requests, one per line\n");
    return kExitUsage;
  }
  cli::WarmOptions options;
  options.file = args.positional[0];
  options.config_path = config_path(args);
  if (auto it = args.options.find("--concurrency"); it != args.options.end()) {
    std::uint64_t number = 0;
    if (!api::parse_unsigned(it->second, number) || number < 1 || number > 256) {
      std::fprintf(stderr, "pixelgate warm: --concurrency takes a whole number from 1 to 256, got \"%s\"\n",
                   it->second.c_str());
      return kExitUsage;
    }
    options.concurrency = static_cast<int>(number);
  }
  if (auto it = args.options.find("--max-usd"); it != args.options.end()) {
    char* end = nullptr;
    const double usd = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || end != it->second.c_str() + it->second.size() || !(usd >= 0) || !std::isfinite(usd)) {
      std::fprintf(stderr, "pixelgate warm: --max-usd takes a number of US dollars such as 2.50, got \"%s\"\n",
                   it->second.c_str());
      return kExitUsage;
    }
    options.max_usd = usd;
  }
  return cli::run_warm(options);
}

int run_config_check(const Arguments& args) {
  std::string path = args.positional.size() > 1 ? args.positional[1] : config_path(args);
  auto config = cli::load_config(path);
  if (!config) {
    std::fprintf(stderr, "%s\n", config.error().message.c_str());
    return kExitUsage;
  }
  for (const auto& [name, backend] : config->backends) {
    if (backend.type == "openai" && backend.api_key.empty()) {
      std::fprintf(stderr, "invalid configuration: backends.%s.api_key_env: the environment variable %s is not set\n",
                   name.c_str(), backend.api_key.env_name.c_str());
      return kExitUsage;
    }
  }
  std::printf("configuration OK (%s)\n  backends: %zu, default \"%s\"\n  templates: %zu\n  access: mode \"%s\", "
              "%zu signing keys, %zu API keys\n  listening on %s:%d\n  storage: %s\n",
              path.empty() ? "built-in defaults" : path.c_str(), config->backends.size(),
              config->default_backend.c_str(), config->templates.size(), config->security.mode.c_str(),
              config->security.signing_keys.size(), config->api_keys.size(), config->server.host.c_str(),
              config->server.port,
              config->storage.kind == "s3"
                  ? ("s3 bucket \"" + config->storage.s3.bucket + "\" at " + config->storage.s3.endpoint).c_str()
                  : ("disk " + config->storage.path).c_str());
  std::printf("  delivery: %s\n  shared state: %s\n", config->storage.delivery.c_str(),
              config->redis.url.empty() ? "in this process (no [redis] url)" : ("redis " + config->redis.url).c_str());
  for (const auto& warning : cli::access_warnings(*config)) std::printf("warning: %s\n", warning.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fputs(kUsage, stderr);
    return kExitUsage;
  }
  const std::string command = argv[1];
  if (command == "help" || command == "--help" || command == "-h") {
    std::fputs(kUsage, stdout);
    return 0;
  }
  // `pixelgate COMMAND --help` prints the usage, which covers every command.
  for (int i = 2; i < argc; ++i) {
    const std::string_view arg = argv[i];
    if (arg == "--help" || arg == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
  }
  if (command == "version" || command == "--version") {
    std::printf("pixelgate %s\n", PIXELGATE_VERSION);
    return 0;
  }

  // --var may repeat, so it is collected before the other options.
  std::vector<std::string> variables;
  std::vector<char*> rest = {argv[0], argv[1]};
  for (int i = 2; i < argc; ++i) {
    const std::string arg = argv[i];
    if (command == "templates" && arg == "--var" && i + 1 < argc) {
      variables.emplace_back(argv[++i]);
    } else if (command == "templates" && arg.rfind("--var=", 0) == 0) {
      variables.emplace_back(arg.substr(6));
    } else {
      rest.push_back(argv[i]);
    }
  }
  argc = static_cast<int>(rest.size());
  argv = rest.data();

  Arguments args;
  std::set<std::string> known = {"--config"};
  if (command == "generate") known.insert({"--output", "--template", "--width", "--height", "--seed"});
  if (command == "sign") known.insert({"--expires", "--key"});
  if (command == "keys") known.insert("--name");
  if (command == "costs") known.insert("--by");
  if (command == "cache") known.insert({"--key", "--template", "--version", "--dry-run"});
  if (command == "templates") known.insert({"--prompt", "--size", "--seed"});
  if (command == "warm") known.insert({"--concurrency", "--max-usd"});
  if (auto error = parse_arguments(argc, argv, 2, known, args)) {
    std::fprintf(stderr, "pixelgate %s: %s\n", command.c_str(), error->c_str());
    return kExitUsage;
  }

  try {
    if (command == "serve") return run_serve(args);
    if (command == "generate") return run_generate(args);
    if (command == "config" && !args.positional.empty() && args.positional[0] == "check") return run_config_check(args);
    if (command == "sign") return run_sign(args);
    if (command == "keys" && args.positional.size() == 1 && args.positional[0] == "new") return run_keys_new(args);
    if (command == "costs") return run_costs(args);
    if (command == "cache" && args.positional.size() == 1 && args.positional[0] == "purge") return run_cache_purge(args);
    if (command == "templates") return run_templates(args, variables);
    if (command == "warm") return run_warm(args);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "pixelgate %s: unexpected error: %s\n", command.c_str(), error.what());
    return kExitFailure;
  }
  const std::map<std::string, std::string> subcommands = {
      {"config", "check"}, {"keys", "new"}, {"cache", "purge"}};
  if (auto it = subcommands.find(command); it != subcommands.end()) {
    std::fprintf(stderr, "pixelgate %s: missing or unknown subcommand; use `pixelgate %s %s` (see `pixelgate help`)\n",
                 command.c_str(), command.c_str(), it->second.c_str());
    return kExitUsage;
  }
  std::fprintf(stderr, "pixelgate: unknown command \"%s\"\n\n%s", command.c_str(), kUsage);
  return kExitUsage;
}
