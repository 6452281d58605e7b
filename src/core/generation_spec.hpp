// The fully resolved description of one image. It lives in core/ because both
// generation/ (which builds it and derives the cache key) and backends/ (which
// turn it into provider calls) use it.
#pragma once

#include <cstdint>
#include <string>

namespace pixelgate::core {

struct GenerationSpec {
  std::string backend;       // configured backend name, e.g. "openai"
  std::string backend_type;  // adapter, e.g. "openai" or "placeholder"
  int adapter_version = 1;   // bumped when an adapter changes what it sends
  std::string model;
  std::string prompt;  // final prompt: template applied, exact UTF-8
  std::string negative_prompt;
  int width = 0;
  int height = 0;
  int steps = 0;          // 0 = backend default
  double guidance = 0.0;  // 0 = backend default
  std::string sampler;
  std::string quality;  // provider-specific, e.g. "hd" or "high"; empty = default
  std::string style;    // provider-specific, e.g. "vivid"; empty = default
  std::uint64_t seed = 0;
  bool random_seed = false;  // the caller asked for a fresh random image
  std::string template_name;
  std::string template_version;
};

}  // namespace pixelgate::core
