#include "generation/resolver.hpp"

#include <algorithm>
#include <charconv>
#include <regex>

#include "core/hash.hpp"
#include "core/text.hpp"
#include "generation/cache_key.hpp"

namespace pixelgate::generation {
namespace {

constexpr std::uint64_t kMaxSeed = 4294967294u;

// Replaces each {name} in `pattern` with its value in one pass, so text that
// a user supplies is never expanded again.
std::string render(const std::string& pattern, const std::map<std::string, std::string>& values) {
  std::string out;
  out.reserve(pattern.size() + 64);
  std::size_t at = 0;
  while (at < pattern.size()) {
    const std::size_t open = pattern.find('{', at);
    if (open == std::string::npos) break;
    const std::size_t close = pattern.find('}', open);
    if (close == std::string::npos) break;
    out.append(pattern, at, open - at);
    auto value = values.find(pattern.substr(open + 1, close - open - 1));
    if (value != values.end()) {
      out += value->second;
    } else {
      out.append(pattern, open, close - open + 1);
    }
    at = close + 1;
  }
  out.append(pattern, at, std::string::npos);
  return out;
}

core::Status check_variable(const config::TemplateVariable& variable, const std::string& value) {
  const std::string& name = variable.name;
  if (!core::is_valid_utf8(value) || core::has_control_characters(value)) {
    return core::Error::invalid(name + " must be valid UTF-8 text without control characters", name);
  }
  if (core::count_code_points(value) > static_cast<std::size_t>(variable.max_length)) {
    return core::Error::invalid(name + " is longer than " + std::to_string(variable.max_length) + " characters", name);
  }
  if (!variable.allowed.empty() &&
      std::find(variable.allowed.begin(), variable.allowed.end(), value) == variable.allowed.end()) {
    std::string choices;
    for (const auto& choice : variable.allowed) choices += (choices.empty() ? "" : ", ") + choice;
    return core::Error::invalid(name + " must be one of " + choices + ", got \"" + value + "\"", name);
  }
  if (variable.type == "integer") {
    std::int64_t number = 0;
    const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), number);
    if (ec != std::errc{} || ptr != value.data() + value.size()) {
      return core::Error::invalid(name + " must be a whole number, got \"" + value + "\"", name);
    }
    if (number < variable.min || number > variable.max) {
      return core::Error::invalid(name + " must be between " + std::to_string(variable.min) + " and " +
                                      std::to_string(variable.max) + ", got " + value,
                                  name);
    }
  }
  if (!variable.pattern.empty() && !std::regex_match(value, std::regex(variable.pattern, std::regex::ECMAScript))) {
    return core::Error::invalid(name + " does not match the pattern " + variable.pattern, name);
  }
  return core::Ok{};
}

// Collects the values for every placeholder: the prompt, each variable from
// the request or its default. Unknown and missing variables are errors.
core::Result<std::map<std::string, std::string>> template_values(const config::TemplateConfig& tmpl,
                                                                 const ImageRequest& request) {
  for (const auto& [name, value] : request.variables) {
    if (!tmpl.variables.count(name)) {
      std::string accepted;
      for (const auto& [known, variable] : tmpl.variables) accepted += (accepted.empty() ? "" : ", ") + known;
      return core::Error::invalid("unknown parameter \"" + name + "\" for template \"" + tmpl.name + "\"" +
                                      (accepted.empty() ? std::string("; it has no variables")
                                                        : "; its variables are " + accepted),
                                  name);
    }
  }
  std::map<std::string, std::string> values = {{"prompt", request.prompt}};
  for (const auto& [name, variable] : tmpl.variables) {
    auto given = request.variables.find(name);
    if (given == request.variables.end() && !variable.default_value) {
      return core::Error::invalid("template \"" + tmpl.name + "\" needs the parameter " + name, name);
    }
    const std::string& value = given != request.variables.end() ? given->second : *variable.default_value;
    if (auto status = check_variable(variable, value); !status) return std::move(status).error();
    values[name] = value;
  }
  return values;
}

}  // namespace

Resolver::Resolver(const config::Config& config, const BackendMap& backends) : config_(config), backends_(backends) {}

core::Status Resolver::validate_prompt(const std::string& prompt) const {
  const bool blank = prompt.find_first_not_of(" \t") == std::string::npos;
  if (blank) return core::Error::invalid("prompt is missing or empty; give a description of the image", "prompt");
  if (!core::is_valid_utf8(prompt)) return core::Error::invalid("prompt is not valid UTF-8", "prompt");
  if (core::has_control_characters(prompt)) {
    return core::Error::invalid("prompt contains control characters (newline, tab or other); remove them", "prompt");
  }
  const auto& limits = config_.limits;
  const std::size_t chars = core::count_code_points(prompt);
  if (chars > static_cast<std::size_t>(limits.max_prompt_chars)) {
    return core::Error::invalid("prompt has " + std::to_string(chars) + " characters; the limit is " +
                                    std::to_string(limits.max_prompt_chars),
                                "prompt");
  }
  if (prompt.size() > static_cast<std::size_t>(limits.max_prompt_bytes)) {
    return core::Error::invalid("prompt has " + std::to_string(prompt.size()) + " bytes of UTF-8; the limit is " +
                                    std::to_string(limits.max_prompt_bytes),
                                "prompt");
  }
  return core::Ok{};
}

core::Result<Candidate> Resolver::build_candidate(const ImageRequest& request, const config::TemplateConfig& tmpl,
                                                  const std::map<std::string, std::string>& values,
                                                  backends::Backend& backend, bool primary,
                                                  std::uint64_t random_seed) const {
  core::GenerationSpec spec;
  spec.backend = backend.name();
  spec.backend_type = std::string(backend.type());
  spec.adapter_version = backend.adapter_version();
  // Model names and quality levels belong to one provider, so a fallback
  // uses its own default model and keeps the quality only for the same type.
  if (primary) {
    spec.model = !request.model.empty() ? request.model : !tmpl.model.empty() ? tmpl.model : backend.default_model();
  } else {
    spec.model = backend.default_model();
  }
  spec.prompt = render(tmpl.prompt, values);
  if (!tmpl.style.empty()) spec.prompt += ", " + render(tmpl.style, values);
  spec.negative_prompt = backend.supports_negative_prompt() ? render(tmpl.negative_prompt, values) : std::string{};
  spec.width = request.width.value_or(tmpl.width);
  spec.height = request.height.value_or(tmpl.height);
  spec.steps = tmpl.steps;
  spec.guidance = tmpl.guidance;
  spec.sampler = tmpl.sampler;
  spec.quality = !request.quality.empty() ? request.quality : tmpl.quality;
  spec.style = request.style;
  if (!primary && spec.backend_type != primary_type_of(tmpl)) {
    spec.quality.clear();
    spec.style.clear();
  }
  spec.template_name = tmpl.name;
  spec.template_version = tmpl.version;

  if (request.random_seed) {
    spec.random_seed = true;
    spec.seed = random_seed;
  } else if (request.seed) {
    spec.seed = *request.seed;
  } else {
    spec.seed = derive_seed(spec);
  }

  if (auto status = backend.validate(spec); !status) return std::move(status).error();
  Candidate candidate;
  candidate.key = cache_key(spec);
  candidate.spec = std::move(spec);
  candidate.backend = &backend;
  if (tmpl.cold_start != "wait") candidate.cold_start_budget = std::chrono::milliseconds(tmpl.max_cold_start_ms);
  return candidate;
}

std::string Resolver::primary_type_of(const config::TemplateConfig& tmpl) const {
  const std::string name = tmpl.backend.empty() ? config_.default_backend : tmpl.backend;
  auto it = backends_.find(name);
  return it == backends_.end() ? std::string{} : std::string(it->second->type());
}

core::Result<ResolvedRequest> Resolver::resolve(const ImageRequest& request) const {
  auto tmpl_it = config_.templates.find(request.template_name);
  if (tmpl_it == config_.templates.end()) {
    return core::Error{core::ErrorCode::NotFound, "template \"" + request.template_name + "\" is not configured",
                       "template", 0};
  }
  const config::TemplateConfig& tmpl = tmpl_it->second;
  if (auto status = validate_prompt(request.prompt); !status) return std::move(status).error();

  const std::string backend_name = tmpl.backend.empty() ? config_.default_backend : tmpl.backend;
  auto backend_it = backends_.find(backend_name);
  if (backend_it == backends_.end()) return core::Error::internal("backend \"" + backend_name + "\" is not running");

  const auto& limits = config_.limits;
  const int width = request.width.value_or(tmpl.width);
  const int height = request.height.value_or(tmpl.height);
  for (const auto& [name, value] : {std::pair{"width", width}, std::pair{"height", height}}) {
    if (value < limits.min_dimension || value > limits.max_dimension) {
      return core::Error::invalid(std::string(name) + " must be between " + std::to_string(limits.min_dimension) +
                                      " and " + std::to_string(limits.max_dimension) + ", got " +
                                      std::to_string(value),
                                  name);
    }
  }
  if (!tmpl.sizes.empty() && std::find(tmpl.sizes.begin(), tmpl.sizes.end(), std::make_pair(width, height)) == tmpl.sizes.end()) {
    std::string choices;
    for (const auto& [w, h] : tmpl.sizes) choices += (choices.empty() ? "" : ", ") + std::to_string(w) + "x" + std::to_string(h);
    return core::Error::invalid("size " + std::to_string(width) + "x" + std::to_string(height) +
                                    " is not allowed by template \"" + tmpl.name + "\"; use one of " + choices,
                                "size");
  }
  if (request.seed && *request.seed > kMaxSeed) {
    return core::Error::invalid("seed must be between 0 and " + std::to_string(kMaxSeed) + ", or \"random\", got " +
                                    std::to_string(*request.seed),
                                "seed");
  }

  auto values = template_values(tmpl, request);
  if (!values) return std::move(values).error();
  const std::uint64_t random_seed = request.random_seed ? core::random_u64() % (kMaxSeed + 1) : 0;

  auto primary = build_candidate(request, tmpl, *values, *backend_it->second, true, random_seed);
  if (!primary) return std::move(primary).error();
  ResolvedRequest resolved;
  resolved.spec = std::move(primary->spec);
  resolved.key = std::move(primary->key);
  resolved.backend = primary->backend;
  resolved.cold_start = tmpl.cold_start;
  resolved.cold_start_budget = primary->cold_start_budget;

  // A fallback that cannot take this request (another size rule, say) is
  // left out rather than failing the request.
  for (const auto& name : tmpl.fallbacks) {
    auto it = backends_.find(name);
    if (it == backends_.end() || it->second.get() == resolved.backend) continue;
    auto fallback = build_candidate(request, tmpl, *values, *it->second, false, random_seed);
    if (fallback) resolved.fallbacks.push_back(std::move(fallback).value());
  }
  return resolved;
}

}  // namespace pixelgate::generation
