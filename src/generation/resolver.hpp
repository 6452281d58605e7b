// Turns an ImageRequest into a fully resolved GenerationSpec and its cache key:
// template applied, defaults filled in, every value validated.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "backends/backend.hpp"
#include "config/config.hpp"
#include "core/error.hpp"
#include "core/generation_spec.hpp"
#include "generation/request.hpp"

namespace pixelgate::generation {

// One backend's version of a request: its spec and key.
struct Candidate {
  core::GenerationSpec spec;
  std::string key;
  backends::Backend* backend = nullptr;
  // The template's max_cold_start_ms, unless its cold_start is "wait".
  std::optional<std::chrono::milliseconds> cold_start_budget;
};

// The primary candidate, whose key names the image, and the template's
// fallbacks in order, each with its own spec and key.
struct ResolvedRequest {
  core::GenerationSpec spec;
  std::string key;
  backends::Backend* backend = nullptr;
  std::vector<Candidate> fallbacks;
  std::string cold_start = "wait";  // the template's cold_start policy
  std::optional<std::chrono::milliseconds> cold_start_budget;
};

using BackendMap = std::map<std::string, std::unique_ptr<backends::Backend>>;

// Thread-safety: resolve() is const and may run on any thread. The config and
// backends must outlive the resolver.
class Resolver {
 public:
  Resolver(const config::Config& config, const BackendMap& backends);

  core::Result<ResolvedRequest> resolve(const ImageRequest& request) const;

  // Checks the user's prompt text: valid UTF-8, no control characters, within
  // the configured character and byte limits.
  core::Status validate_prompt(const std::string& prompt) const;

  bool has_template(const std::string& name) const { return config_.templates.count(name) > 0; }

 private:
  core::Result<Candidate> build_candidate(const ImageRequest& request, const config::TemplateConfig& tmpl,
                                          const std::map<std::string, std::string>& values, backends::Backend& backend,
                                          bool primary, std::uint64_t random_seed) const;
  std::string primary_type_of(const config::TemplateConfig& tmpl) const;

  const config::Config& config_;
  const BackendMap& backends_;
};

}  // namespace pixelgate::generation
