// AUTOMATIC1111's Stable Diffusion web UI API (POST {base_url}/sdapi/v1/txt2img),
// also served by Forge and SD.Next. The server must run with --api.
#pragma once

#include <memory>

#include "backends/backend.hpp"
#include "backends/instance_lock.hpp"

namespace pixelgate::backends {

// Values the adapter sends when the spec leaves a setting at 0 or empty: the
// web UI's own txt2img defaults.
inline constexpr int kA1111DefaultSteps = 20;
inline constexpr double kA1111DefaultCfgScale = 7.0;
inline constexpr const char* kA1111DefaultSampler = "Euler a";

class A1111Backend final : public Backend {
 public:
  explicit A1111Backend(config::BackendConfig config);

  const std::string& name() const override { return config_.name; }
  std::string_view type() const override { return "a1111"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return config_.model; }
  bool honours_seed() const override { return true; }
  bool supports_negative_prompt() const override { return true; }
  // Self-hosted: no list price.
  std::optional<double> list_price(const core::GenerationSpec&) const override { return 0.0; }

  core::Status validate(const core::GenerationSpec& spec) const override;
  core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) override;

  // Builds the JSON body of POST /sdapi/v1/txt2img (exposed for tests).
  std::string request_body(const core::GenerationSpec& spec) const;

 private:
  core::Result<GeneratedImage> call(const core::GenerationSpec& spec, const GenerateContext& context);

  config::BackendConfig config_;
  InstanceLock instance_;
};

// Parses a txt2img answer body into image bytes; BadGateway when it is not
// the documented {"images": [base64], "parameters", "info"} shape.
core::Result<std::string> parse_a1111_images(const std::string& body);

}  // namespace pixelgate::backends
