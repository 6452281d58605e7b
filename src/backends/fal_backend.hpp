// fal's queue API: POST {base_url}/{model_id} submits a request, then
// GET {base_url}/{owner}/{alias}/requests/{id}/status is polled until
// COMPLETED and GET .../requests/{id} returns the result. PUT .../cancel
// withdraws a request that pixelgate gave up on.
#pragma once

#include <utility>
#include <vector>

#include "backends/backend.hpp"

namespace pixelgate::backends {

// The input rules of one fal model family.
struct FalModelRules {
  // FluxSchnell: fal-ai/flux/schnell. FluxDev: fal-ai/flux/dev. Generic: any
  // other text-to-image model, sent the common input names.
  enum class Family { FluxSchnell, FluxDev, Generic };
  Family family = Family::Generic;
  int max_steps = 0;  // 0 = steps not accepted
};

FalModelRules fal_model_rules(const std::string& model);

// Returns fal's image_size preset name for a size ("square_hd" for
// 1024x1024), or an empty string when none matches.
std::string fal_image_size_preset(int width, int height);

// Returns "{owner}/{alias}" of a model id: the queue's status, result and
// cancel paths drop any further sub-path ("fal-ai/flux/schnell" -> "fal-ai/flux").
std::string fal_queue_app(const std::string& model);

class FalBackend final : public Backend {
 public:
  explicit FalBackend(config::BackendConfig config);

  const std::string& name() const override { return config_.name; }
  std::string_view type() const override { return "fal"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return config_.model; }
  bool honours_seed() const override { return true; }
  bool supports_negative_prompt() const override;
  std::optional<double> list_price(const core::GenerationSpec& spec) const override;

  core::Status validate(const core::GenerationSpec& spec) const override;
  core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) override;

  // Builds the JSON input submitted for one generation (exposed for tests).
  std::string request_body(const core::GenerationSpec& spec) const;

 private:
  core::Result<GeneratedImage> fetch_result(const std::string& app, const std::string& id,
                                            const GenerateContext& context, const core::GenerationSpec& spec,
                                            int attempts);
  core::Result<std::string> download(const std::string& url, const GenerateContext& context);
  void cancel(const std::string& app, const std::string& id, const GenerateContext& context);
  std::vector<std::string> auth_headers() const;

  config::BackendConfig config_;
};

}  // namespace pixelgate::backends
