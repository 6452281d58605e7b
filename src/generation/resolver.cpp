#include "generation/resolver.hpp"

#include "core/hash.hpp"
#include "core/text.hpp"
#include "generation/cache_key.hpp"

namespace pixelgate::generation {
namespace {

constexpr std::uint64_t kMaxSeed = 4294967294u;

std::string apply_template(const config::TemplateConfig& tmpl, const std::string& prompt) {
  std::string text = tmpl.prompt;
  const std::string placeholder = "{prompt}";
  for (std::size_t at = text.find(placeholder); at != std::string::npos; at = text.find(placeholder, at + prompt.size())) {
    text.replace(at, placeholder.size(), prompt);
  }
  if (!tmpl.style.empty()) text += ", " + tmpl.style;
  return text;
}

}  // namespace

Resolver::Resolver(const config::Config& config, const BackendMap& backends) : config_(config), backends_(backends) {}

core::Status Resolver::validate_prompt(const std::string& prompt) const {
  if (prompt.empty()) return core::Error::invalid("prompt is missing or empty; give a description of the image", "prompt");
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
  backends::Backend& backend = *backend_it->second;

  const auto& limits = config_.limits;
  auto check_dimension = [&](const char* name, int value) -> core::Status {
    if (value < limits.min_dimension || value > limits.max_dimension) {
      return core::Error::invalid(std::string(name) + " must be between " + std::to_string(limits.min_dimension) +
                                      " and " + std::to_string(limits.max_dimension) + ", got " +
                                      std::to_string(value),
                                  name);
    }
    return core::Ok{};
  };

  core::GenerationSpec spec;
  spec.backend = backend.name();
  spec.backend_type = std::string(backend.type());
  spec.adapter_version = backend.adapter_version();
  spec.model = !request.model.empty() ? request.model : !tmpl.model.empty() ? tmpl.model : backend.default_model();
  spec.prompt = apply_template(tmpl, request.prompt);
  spec.negative_prompt = backend.supports_negative_prompt() ? tmpl.negative_prompt : std::string{};
  spec.width = request.width.value_or(tmpl.width);
  spec.height = request.height.value_or(tmpl.height);
  if (auto status = check_dimension("width", spec.width); !status) return std::move(status).error();
  if (auto status = check_dimension("height", spec.height); !status) return std::move(status).error();
  spec.steps = tmpl.steps;
  spec.guidance = tmpl.guidance;
  spec.sampler = tmpl.sampler;
  spec.quality = request.quality;
  spec.style = request.style;
  spec.template_name = tmpl.name;
  spec.template_version = tmpl.version;

  if (request.random_seed) {
    spec.random_seed = true;
    spec.seed = core::random_u64() % (kMaxSeed + 1);
  } else if (request.seed) {
    if (*request.seed > kMaxSeed) {
      return core::Error::invalid("seed must be between 0 and " + std::to_string(kMaxSeed) + ", or \"random\"", "seed");
    }
    spec.seed = *request.seed;
  } else {
    spec.seed = derive_seed(spec);
  }

  if (auto status = backend.validate(spec); !status) return std::move(status).error();

  ResolvedRequest resolved;
  resolved.key = cache_key(spec);
  resolved.spec = std::move(spec);
  resolved.backend = &backend;
  return resolved;
}

}  // namespace pixelgate::generation
