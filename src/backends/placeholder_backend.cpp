#include "backends/placeholder_backend.hpp"

#include "backends/registry.hpp"
#include "imaging/image.hpp"

namespace pixelgate::backends {
namespace {

core::Result<std::unique_ptr<Backend>> make_placeholder(const config::BackendConfig& config) {
  return std::unique_ptr<Backend>(std::make_unique<PlaceholderBackend>(config));
}

const bool kRegistered = register_backend_type("placeholder", &make_placeholder);

}  // namespace

PlaceholderBackend::PlaceholderBackend(const config::BackendConfig& config)
    : name_(config.name), model_(config.model.empty() ? "placeholder-v1" : config.model) {}

core::Status PlaceholderBackend::validate(const core::GenerationSpec& spec) const {
  if (spec.width < 16 || spec.width > 8192) {
    return core::Error::invalid("width must be between 16 and 8192 for the placeholder backend, got " +
                                    std::to_string(spec.width),
                                "width");
  }
  if (spec.height < 16 || spec.height > 8192) {
    return core::Error::invalid("height must be between 16 and 8192 for the placeholder backend, got " +
                                    std::to_string(spec.height),
                                "height");
  }
  return core::Ok{};
}

core::Result<GeneratedImage> PlaceholderBackend::generate(const core::GenerationSpec& spec,
                                                          const GenerateContext& context) {
  imaging::PlaceholderRequest request;
  request.prompt = spec.prompt;
  request.negative_prompt = spec.negative_prompt;
  request.width = spec.width;
  request.height = spec.height;
  request.seed = spec.seed;
  request.label = "pixelgate placeholder - not AI";
  auto png = imaging::render_placeholder(request);
  if (!png) return std::move(png).error();
  GeneratedImage image;
  image.bytes = std::move(png).value();
  return image;
}

}  // namespace pixelgate::backends
