// `pixelgate warm FILE`: generates ahead of time the images a file of
// requests names, so the first visitors get cache hits.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "core/error.hpp"
#include "generation/request.hpp"

namespace pixelgate::cli {

struct WarmOptions {
  std::string file;
  std::string config_path;  // empty = PIXELGATE_CONFIG or the built-in defaults
  int concurrency = 4;      // requests in progress at once
  std::optional<double> max_usd;  // stop before this run would spend more
};

// Parses one line of a warm file: a request path ("/generate-image?prompt=...",
// "/v1/images/NAME?prompt=...") or a JSON object with "template", "prompt",
// "width", "height", "seed" and "variables". The caller skips blank lines and
// lines starting with '#'.
core::Result<generation::ImageRequest> parse_warm_line(std::string_view line);

// Runs the command. Returns 0 when every request was generated or already
// stored, 1 when one failed, was invalid or was not started because a budget
// would have been passed, and 2 for usage and configuration errors.
int run_warm(const WarmOptions& options);

}  // namespace pixelgate::cli
