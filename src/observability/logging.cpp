#include "observability/logging.hpp"

#include <chrono>
#include <ctime>

#include <nlohmann/json.hpp>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

namespace pixelgate::observability {
namespace {

std::string timestamp(spdlog::log_clock::time_point time) {
  const auto since_epoch = time.time_since_epoch();
  const std::time_t seconds = std::chrono::duration_cast<std::chrono::seconds>(since_epoch).count();
  const auto millis = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count() % 1000;
  std::tm parts{};
  gmtime_r(&seconds, &parts);
  char text[40];
  const std::size_t length = std::strftime(text, sizeof(text), "%Y-%m-%dT%H:%M:%S", &parts);
  std::snprintf(text + length, sizeof(text) - length, ".%03dZ", static_cast<int>(millis));
  return text;
}

// Formats each record as one JSON object per line. The message is escaped
// by nlohmann::json, so quotes or newlines in it cannot break the line. A
// record from the access logger carries a JSON object whose members are
// merged in.
class JsonFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& message, spdlog::memory_buf_t& dest) override {
    nlohmann::json line;
    line["ts"] = timestamp(message.time);
    line["level"] = std::string(spdlog::level::to_string_view(message.level).data(),
                                spdlog::level::to_string_view(message.level).size());
    line["logger"] = std::string(message.logger_name.data(), message.logger_name.size());
    const std::string_view payload(message.payload.data(), message.payload.size());
    if (message.logger_name == spdlog::string_view_t("access")) {
      const auto fields = nlohmann::json::parse(payload, nullptr, false);
      if (fields.is_object()) {
        for (const auto& [key, value] : fields.items()) line[key] = value;
      } else {
        line["msg"] = std::string(payload);
      }
    } else {
      line["msg"] = std::string(payload);
    }
    const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    dest.append(text.data(), text.data() + text.size());
  }

  std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<JsonFormatter>(); }
};

std::shared_ptr<spdlog::logger> make_logger(const std::string& name, const std::string& format) {
  auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  auto logger = std::make_shared<spdlog::logger>(name, sink);
  if (format == "json") {
    logger->set_formatter(std::make_unique<JsonFormatter>());
  } else {
    logger->set_formatter(std::make_unique<spdlog::pattern_formatter>("%Y-%m-%dT%H:%M:%S.%eZ %l [%n] %v",
                                                                     spdlog::pattern_time_type::utc));
  }
  return logger;
}

// Set by setup_logging() before any request thread starts, so reads need no lock.
std::shared_ptr<spdlog::logger> g_access_logger;

}  // namespace

void setup_logging(const std::string& level, const std::string& format) {
  auto main_logger = make_logger("pixelgate", format);
  auto access_logger = make_logger("access", format);
  const auto parsed = spdlog::level::from_str(level);
  main_logger->set_level(parsed);
  access_logger->set_level(parsed == spdlog::level::off ? parsed : spdlog::level::info);
  main_logger->flush_on(spdlog::level::info);
  access_logger->flush_on(spdlog::level::info);
  spdlog::drop("access");
  spdlog::register_logger(access_logger);
  spdlog::set_default_logger(main_logger);
  g_access_logger = access_logger;
}

void log_access(const std::string& fields_json) {
  if (g_access_logger) g_access_logger->info("{}", fields_json);
}

}  // namespace pixelgate::observability
