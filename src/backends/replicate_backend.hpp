// Replicate's HTTP API: predictions on official models
// (POST {base_url}/v1/models/{owner}/{name}/predictions) and on model versions
// (POST {base_url}/v1/predictions), waited for with "Prefer: wait" and then
// polled at GET {base_url}/v1/predictions/{id}.
#pragma once

#include <utility>
#include <vector>

#include "backends/backend.hpp"

namespace pixelgate::backends {

// The input rules of one model family. The FLUX models take an aspect ratio
// and produce a fixed size for each ratio (replicate/cog-flux). Every other
// model gets width and height, which most text-to-image models on Replicate
// accept.
struct ReplicateModelRules {
  enum class Family { FluxSchnell, FluxDev, Generic };
  Family family = Family::Generic;
  // For the FLUX family: the aspect ratio names and the sizes they produce.
  std::vector<std::pair<std::string, std::pair<int, int>>> aspect_ratios;
};

ReplicateModelRules replicate_model_rules(const std::string& model);

// The path and JSON body of one create call.
struct ReplicateCreateRequest {
  std::string path;  // appended to base_url, e.g. "/v1/predictions"
  std::string body;  // JSON
};

class ReplicateBackend final : public Backend {
 public:
  explicit ReplicateBackend(config::BackendConfig config);

  const std::string& name() const override { return config_.name; }
  std::string_view type() const override { return "replicate"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return config_.model; }
  bool honours_seed() const override { return true; }
  bool supports_negative_prompt() const override;
  std::optional<double> list_price(const core::GenerationSpec& spec) const override;

  core::Status validate(const core::GenerationSpec& spec) const override;
  core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) override;

  // Builds the create call for one generation (exposed for tests).
  ReplicateCreateRequest create_request(const core::GenerationSpec& spec) const;

  // Returns the "Prefer" header value for a call with `remaining_ms` left
  // before the deadline, or an empty string when there is no time to wait
  // (exposed for tests).
  static std::string prefer_header(std::int64_t remaining_ms);

 private:
  core::Result<GeneratedImage> finish(const std::string& prediction_body, const GenerateContext& context,
                                      const core::GenerationSpec& spec, int attempts);
  core::Result<std::string> download(const std::string& url, const GenerateContext& context);
  void cancel(const std::string& id, const GenerateContext& context);
  std::vector<std::string> auth_headers() const;

  config::BackendConfig config_;
};

}  // namespace pixelgate::backends
