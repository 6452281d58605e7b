#include "cli/warm.hpp"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <condition_variable>
#include <cstdio>
#include <fstream>
#include <future>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "api/image_query.hpp"
#include "cli/runtime.hpp"
#include "core/text.hpp"
#include "observability/logging.hpp"

namespace pixelgate::cli {
namespace {

using Json = nlohmann::json;

constexpr int kExitFailure = 1;
constexpr int kExitUsage = 2;
constexpr std::size_t kMaxLines = 1'000'000;
constexpr std::size_t kMaxLineBytes = 64 * 1024;
// A rate-limited request waits for the limiter and tries again, at most this
// often and this long each time.
constexpr int kMaxRateLimitWaits = 30;
constexpr int kMaxRateLimitWaitSeconds = 60;

const std::set<std::string> kJsonFields = {"template", "prompt", "width", "height", "seed", "variables"};

core::Result<generation::ImageRequest> parse_json_line(std::string_view line) {
  const Json object = Json::parse(line, nullptr, false);
  if (object.is_discarded() || !object.is_object()) return core::Error::invalid("not a valid JSON object");
  for (const auto& [name, value] : object.items()) {
    if (!kJsonFields.count(name)) {
      return core::Error::invalid("unknown field \"" + name +
                                  "\"; use template, prompt, width, height, seed and variables", name);
    }
  }
  generation::ImageRequest request;
  for (const char* name : {"template", "prompt"}) {
    if (!object.contains(name)) continue;
    if (!object[name].is_string()) return core::Error::invalid(std::string(name) + " must be a string", name);
    (std::string(name) == "template" ? request.template_name : request.prompt) = object[name].get<std::string>();
  }
  for (const char* name : {"width", "height"}) {
    if (!object.contains(name)) continue;
    const Json& value = object[name];
    if (!value.is_number_integer() || value.get<std::int64_t>() < 1 || value.get<std::int64_t>() > 100'000) {
      return core::Error::invalid(std::string(name) + " must be a whole number of pixels", name);
    }
    (std::string(name) == "width" ? request.width : request.height) = static_cast<int>(value.get<std::int64_t>());
  }
  if (object.contains("seed")) {
    if (!object["seed"].is_number_unsigned() || object["seed"].get<std::uint64_t>() > 4294967294u) {
      return core::Error::invalid("seed must be a whole number from 0 to 4294967294", "seed");
    }
    request.seed = object["seed"].get<std::uint64_t>();
  }
  if (object.contains("variables")) {
    if (!object["variables"].is_object()) return core::Error::invalid("variables must be an object", "variables");
    for (const auto& [name, value] : object["variables"].items()) {
      if (value.is_string()) {
        request.variables[name] = value.get<std::string>();
      } else if (value.is_number_integer()) {
        request.variables[name] = std::to_string(value.get<std::int64_t>());
      } else {
        return core::Error::invalid("variable \"" + name + "\" must be a string or an integer", name);
      }
    }
  }
  return request;
}

core::Result<generation::ImageRequest> parse_path_line(std::string_view line) {
  // A full URL is accepted too; only its path and query count.
  if (const std::size_t scheme = line.find("://"); scheme != std::string_view::npos && scheme < line.find('/')) {
    const std::size_t path = line.find('/', scheme + 3);
    line = path == std::string_view::npos ? std::string_view("/") : line.substr(path);
  }
  const std::size_t question = line.find('?');
  const std::string_view path = line.substr(0, question);
  const std::string_view query = question == std::string_view::npos ? std::string_view{} : line.substr(question + 1);
  if (path == "/generate-image") return api::parse_image_query(query, true);

  constexpr std::string_view kTemplatePrefix = "/v1/images/";
  if (path.substr(0, kTemplatePrefix.size()) == kTemplatePrefix && path != "/v1/images/generations") {
    auto name = core::percent_decode(path.substr(kTemplatePrefix.size()), false);
    if (!name || name->empty() || name->find('/') != std::string::npos) {
      return core::Error::invalid("the template name in the path is empty or malformed");
    }
    auto request = api::parse_image_query(query, false);
    if (!request) return request;
    request->template_name = *name;
    return request;
  }
  return core::Error::invalid("unknown path \"" + std::string(path) +
                              "\"; use /generate-image?... or /v1/images/TEMPLATE?...");
}

std::string dollars(double usd) {
  char text[32];
  std::snprintf(text, sizeof(text), "$%.4f", usd);
  return text;
}

struct WarmItem {
  std::size_t line = 0;
  generation::ResolvedRequest resolved;
};

// Counters shared by the warm threads and the progress line.
struct WarmProgress {
  std::mutex mutex;
  std::size_t total = 0;
  std::size_t done = 0;
  std::size_t generated = 0;
  std::size_t cached = 0;
  std::size_t failed = 0;
  std::size_t invalid = 0;  // lines that could not be read or resolved
  double spent_usd = 0;
  double committed_usd = 0;  // estimates of generations in progress
  std::vector<std::string> failures;  // "line N: reason"
  std::string stop_reason;            // set when a budget stopped the run
};

std::string progress_counts(const WarmProgress& p) {
  return std::to_string(p.done) + "/" + std::to_string(p.total) + " done: " + std::to_string(p.generated) +
         " generated, " + std::to_string(p.cached) + " cached, " + std::to_string(p.failed) + " failed, " +
         dollars(p.spent_usd);
}

// Prints progress on stderr: a bar redrawn in place on a terminal, a plain
// line every few seconds otherwise.
class ProgressPrinter {
 public:
  explicit ProgressPrinter(WarmProgress& progress)
      : progress_(progress), terminal_(isatty(STDERR_FILENO) == 1), thread_([this] { run(); }) {}

  ~ProgressPrinter() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    thread_.join();
    print();
    if (terminal_) std::fputc('\n', stderr);
  }

 private:
  void run() {
    const auto interval = terminal_ ? std::chrono::milliseconds(200) : std::chrono::milliseconds(5000);
    std::unique_lock lock(mutex_);
    while (!wake_.wait_for(lock, interval, [this] { return stopping_; })) print();
  }

  void print() {
    std::string counts;
    double fraction = 1;
    {
      std::lock_guard lock(progress_.mutex);
      counts = progress_counts(progress_);
      if (progress_.total > 0) fraction = static_cast<double>(progress_.done) / static_cast<double>(progress_.total);
    }
    if (!terminal_) {
      std::fprintf(stderr, "warm: %s\n", counts.c_str());
      return;
    }
    constexpr int kWidth = 30;
    const int filled = static_cast<int>(std::lround(fraction * kWidth));
    std::fprintf(stderr, "\r[%s%s] %s\033[K", std::string(static_cast<std::size_t>(filled), '#').c_str(),
                 std::string(static_cast<std::size_t>(kWidth - filled), '.').c_str(), counts.c_str());
    std::fflush(stderr);
  }

  WarmProgress& progress_;
  const bool terminal_;
  std::mutex mutex_;
  std::condition_variable wake_;
  bool stopping_ = false;
  std::thread thread_;
};

// Reads the file and resolves each request. Invalid lines are reported on
// stderr and counted, and duplicates of an earlier line's key are counted.
core::Result<std::vector<WarmItem>> read_items(const std::string& file, Runtime& rt, WarmProgress& progress,
                                                std::size_t& duplicates) {
  std::ifstream input(file);
  if (!input) return core::Error::invalid("cannot read " + file + ": " + std::strerror(errno));
  std::vector<WarmItem> items;
  std::set<std::string> keys;
  std::string line;
  std::size_t number = 0;
  while (std::getline(input, line)) {
    if (++number > kMaxLines) return core::Error::invalid(file + " has more than " + std::to_string(kMaxLines) + " lines");
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const std::size_t first = line.find_first_not_of(" \t");
    if (first == std::string::npos || line[first] == '#') continue;
    const std::string_view text = std::string_view(line).substr(first);
    const std::string where = "line " + std::to_string(number) + ": ";

    core::Result<generation::ImageRequest> request = core::Error::invalid("expected a request path starting with / or a JSON object");
    if (text.size() > kMaxLineBytes) {
      request = core::Error::invalid("the line is longer than " + std::to_string(kMaxLineBytes) + " bytes");
    } else if (text.front() == '/' || text.rfind("http://", 0) == 0 || text.rfind("https://", 0) == 0) {
      request = parse_path_line(text);
    } else if (text.front() == '{') {
      request = parse_json_line(text);
    }
    if (request && request->random_seed) {
      request = core::Error::invalid("seed=random images are never stored, so they cannot be warmed", "seed");
    }
    core::Result<generation::ResolvedRequest> resolved = request ? rt.resolver->resolve(*request) : request.error();
    if (!resolved) {
      std::fprintf(stderr, "warm: %s%s (skipped)\n", where.c_str(), resolved.error().message.c_str());
      progress.failures.push_back(where + resolved.error().message);
      ++progress.invalid;
      continue;
    }
    if (!keys.insert(resolved->key).second) {
      ++duplicates;
      continue;
    }
    items.push_back({number, std::move(resolved).value()});
  }
  return items;
}

// Returns why generating one more image estimated at `estimate` would pass
// --max-usd or a configured budget, or an empty string. The caller holds
// progress.mutex.
std::string budget_stop_reason(const Runtime& rt, const WarmProgress& progress, std::optional<double> max_usd,
                               double estimate) {
  const double pending = progress.committed_usd + estimate;
  if (max_usd && progress.spent_usd + pending > *max_usd + 1e-9) {
    return "the next image (estimated " + dollars(estimate) + ") would take this run past --max-usd " +
           dollars(*max_usd) + " (" + dollars(progress.spent_usd) + " spent so far)";
  }
  const auto& budgets = rt.config.budgets;
  if (budgets.daily_usd > 0) {
    const double today = rt.ledger->spent_today("");
    if (today + pending > budgets.daily_usd + 1e-9) {
      return "the next image (estimated " + dollars(estimate) + ") would pass the daily budget [budgets] daily_usd = " +
             dollars(budgets.daily_usd) + " (" + dollars(today) + " spent today, UTC)";
    }
  }
  if (budgets.monthly_usd > 0) {
    const double month = rt.ledger->spent_this_month("");
    if (month + pending > budgets.monthly_usd + 1e-9) {
      return "the next image (estimated " + dollars(estimate) +
             ") would pass the monthly budget [budgets] monthly_usd = " + dollars(budgets.monthly_usd) + " (" +
             dollars(month) + " spent this month, UTC)";
    }
  }
  return {};
}

// Produces one image: skips it when stored, checks the budget, generates.
void warm_one(Runtime& rt, const WarmItem& item, WarmProgress& progress, std::optional<double> max_usd,
              std::atomic<bool>& stop) {
  const std::string where = "line " + std::to_string(item.line) + ": ";
  auto fail = [&](const std::string& reason) {
    std::lock_guard lock(progress.mutex);
    ++progress.failed;
    ++progress.done;
    progress.failures.push_back(where + reason);
  };

  auto stored = rt.store->find_metadata(item.resolved.key);
  if (!stored) return fail("reading the store failed: " + stored.error().message);
  if (*stored) {
    std::lock_guard lock(progress.mutex);
    ++progress.cached;
    ++progress.done;
    return;
  }

  const auto& spec = item.resolved.spec;
  const double estimate = rt.gate->estimate_cost(spec, item.resolved.backend->list_price(spec));
  {
    std::lock_guard lock(progress.mutex);
    if (stop.load()) return;
    const std::string reason = budget_stop_reason(rt, progress, max_usd, estimate);
    if (!reason.empty()) {
      if (progress.stop_reason.empty()) progress.stop_reason = reason;
      stop.store(true);
      return;
    }
    progress.committed_usd += estimate;
  }

  core::Result<generation::ImageOutcome> outcome = core::Error::internal("not started");
  for (int wait = 0;; ++wait) {
    std::promise<core::Result<generation::ImageOutcome>> promise;
    auto future = promise.get_future();
    rt.images->fetch_or_generate(item.resolved, "warm-line-" + std::to_string(item.line), {"warm", "local"},
                                 [&promise](core::Result<generation::ImageOutcome> result) {
                                   promise.set_value(std::move(result));
                                 });
    outcome = future.get();
    if (outcome || outcome.error().code != core::ErrorCode::ResourceExhausted || wait >= kMaxRateLimitWaits ||
        stop.load()) {
      break;
    }
    const int seconds = std::clamp(outcome.error().retry_after_seconds, 1, kMaxRateLimitWaitSeconds);
    spdlog::warn("warm: line {} is rate limited; waiting {} s", item.line, seconds);
    std::this_thread::sleep_for(std::chrono::seconds(seconds));
  }

  std::lock_guard lock(progress.mutex);
  progress.committed_usd -= estimate;
  ++progress.done;
  if (!outcome) {
    ++progress.failed;
    progress.failures.push_back(where + outcome.error().message);
    if (outcome.error().code == core::ErrorCode::BudgetExhausted) {
      if (progress.stop_reason.empty()) progress.stop_reason = outcome.error().message;
      stop.store(true);
    }
    return;
  }
  if (outcome->state == generation::CacheState::Miss) {
    ++progress.generated;
    progress.spent_usd += outcome->cost_usd;
  } else {
    ++progress.cached;
  }
}

}  // namespace

core::Result<generation::ImageRequest> parse_warm_line(std::string_view line) {
  if (!line.empty() && line.front() == '{') return parse_json_line(line);
  return parse_path_line(line);
}

int run_warm(const WarmOptions& options) {
  if (options.concurrency < 1 || options.concurrency > 256) {
    std::fprintf(stderr, "pixelgate warm: --concurrency must be between 1 and 256\n");
    return kExitUsage;
  }
  if (options.max_usd && !(*options.max_usd >= 0)) {
    std::fprintf(stderr, "pixelgate warm: --max-usd must be a non-negative number of US dollars\n");
    return kExitUsage;
  }
  auto config = load_config(options.config_path);
  if (!config) {
    std::fprintf(stderr, "pixelgate: %s\n", config.error().message.c_str());
    return kExitUsage;
  }
  observability::setup_logging(config->logging.level == "info" ? "warn" : config->logging.level, "text");
  auto runtime = build_runtime(std::move(config).value());
  if (!runtime) {
    std::fprintf(stderr, "pixelgate: %s\n", runtime.error().message.c_str());
    return kExitUsage;
  }
  Runtime& rt = **runtime;

  WarmProgress progress;
  std::size_t duplicates = 0;
  auto items = read_items(options.file, rt, progress, duplicates);
  if (!items) {
    std::fprintf(stderr, "pixelgate warm: %s\n", items.error().message.c_str());
    return kExitUsage;
  }
  progress.total = items->size();

  std::atomic<bool> stop{false};
  {
    ProgressPrinter printer(progress);
    std::atomic<std::size_t> next{0};
    std::vector<std::thread> threads;
    const std::size_t count = std::min<std::size_t>(static_cast<std::size_t>(options.concurrency), items->size());
    for (std::size_t t = 0; t < count; ++t) {
      threads.emplace_back([&] {
        while (!stop.load()) {
          const std::size_t index = next.fetch_add(1);
          if (index >= items->size()) return;
          warm_one(rt, (*items)[index], progress, options.max_usd, stop);
        }
      });
    }
    for (auto& thread : threads) thread.join();
  }

  std::lock_guard lock(progress.mutex);
  const std::size_t not_started = progress.total - progress.done;
  std::printf("generated %zu, cached %zu, duplicates %zu, invalid %zu, failed %zu, not started %zu, spent %s\n",
              progress.generated, progress.cached, duplicates, progress.invalid, progress.failed, not_started,
              dollars(progress.spent_usd).c_str());
  for (const auto& failure : progress.failures) std::printf("  failed: %s\n", failure.c_str());
  if (!progress.stop_reason.empty()) {
    std::printf("stopped early: %s; %zu requests were not started\n", progress.stop_reason.c_str(), not_started);
  }
  std::fflush(stdout);
  return progress.failed > 0 || progress.invalid > 0 || not_started > 0 ? kExitFailure : 0;
}

}  // namespace pixelgate::cli
