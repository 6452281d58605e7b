// Not AI: draws a deterministic card showing the prompt and size, for offline
// development and CI.
#pragma once

#include "backends/backend.hpp"

namespace pixelgate::backends {

class PlaceholderBackend final : public Backend {
 public:
  explicit PlaceholderBackend(const config::BackendConfig& config);

  const std::string& name() const override { return name_; }
  std::string_view type() const override { return "placeholder"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return model_; }
  bool honours_seed() const override { return true; }
  bool supports_negative_prompt() const override { return true; }
  bool is_placeholder() const override { return true; }
  std::optional<double> list_price(const core::GenerationSpec&) const override { return 0.0; }

  core::Status validate(const core::GenerationSpec& spec) const override;
  core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) override;

 private:
  std::string name_;
  std::string model_;
};

}  // namespace pixelgate::backends
