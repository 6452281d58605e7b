// Log set-up: one default logger for events and one "access" logger for the
// per-request lines, as JSON lines or plain text on standard error.
#pragma once

#include <string>

namespace pixelgate::observability {

// Configures spdlog. `format` is "json" or "text"; `level` is an spdlog level
// name. Safe to call again to change the settings.
void setup_logging(const std::string& level, const std::string& format);

// Writes one access-log record. `fields_json` is a JSON object; with the JSON
// format its members are merged into the log line.
void log_access(const std::string& fields_json);

}  // namespace pixelgate::observability
