// The user's request for an image, before any defaults or validation.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <string>

namespace pixelgate::generation {

struct ImageRequest {
  std::string template_name = "default";
  std::string prompt;
  std::optional<int> width;
  std::optional<int> height;
  std::optional<std::uint64_t> seed;
  bool random_seed = false;  // seed=random: a fresh image, never cached under a deterministic key
  std::string model;         // overrides the template's model (OpenAI-compatible route)
  std::string quality;
  std::string style;
  // Values for the template's variables, by name, as the request gave them.
  std::map<std::string, std::string> variables;
};

}  // namespace pixelgate::generation
