// Amazon Bedrock's InvokeModel (POST {base_url}/model/{modelId}/invoke),
// signed with AWS Signature Version 4 (core/aws_sigv4.hpp), for the image
// models Amazon Titan Image Generator, Amazon Nova Canvas and the Stability
// AI models that Bedrock hosts.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "backends/backend.hpp"
#include "backends/http_client.hpp"

namespace pixelgate::backends {

// The request rules of one Bedrock model family, from the Bedrock User
// Guide's inference-parameter pages.
struct BedrockModelRules {
  // Titan: amazon.titan-image-generator-v1 and -v2, a fixed list of sizes.
  // NovaCanvas: amazon.nova-canvas-v1, any size whose sides are multiples of
  // 16 within the limits below. Stability: stability.*, an aspect ratio
  // instead of a size. Unknown: any other model id, which is rejected.
  enum class Family { Titan, NovaCanvas, Stability, Unknown };
  Family family = Family::Unknown;
  std::size_t max_prompt_chars = 0;
  std::uint64_t max_seed = 0;
};

// Accepts a model id with or without a cross-region inference profile
// prefix such as "us." or "eu.".
BedrockModelRules bedrock_model_rules(const std::string& model);

// Returns the Stability aspect_ratio for an output size, or empty when the
// size is not one the Stability models produce.
std::string bedrock_stability_aspect_ratio(int width, int height);

// Returns the list price in US dollars of one image, or 0 when unknown.
double bedrock_list_price(const std::string& model, int width, int height, const std::string& quality);

class BedrockBackend final : public Backend {
 public:
  explicit BedrockBackend(config::BackendConfig config);

  const std::string& name() const override { return config_.name; }
  std::string_view type() const override { return "bedrock"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return config_.model; }
  bool honours_seed() const override { return true; }
  bool supports_negative_prompt() const override { return true; }
  std::optional<double> list_price(const core::GenerationSpec& spec) const override;

  core::Status validate(const core::GenerationSpec& spec) const override;
  core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) override;

  // Builds the InvokeModel JSON body for one generation (exposed for tests).
  std::string request_body(const core::GenerationSpec& spec) const;

  // Returns the URL of the InvokeModel call for `model`, with the model id
  // percent-encoded once ("v2:0" becomes "v2%3A0").
  std::string invoke_url(const std::string& model) const;

  // Returns the signed headers ("Name: value") for a POST of `body` to
  // invoke_url(model) at `time` (exposed for tests).
  std::vector<std::string> signed_headers(const std::string& model, const std::string& body,
                                          std::chrono::system_clock::time_point time) const;

 private:
  core::Result<GeneratedImage> parse_success(const OutboundResponse& response, const core::GenerationSpec& spec,
                                             const GenerateContext& context) const;

  config::BackendConfig config_;
  std::string host_;         // the authority of base_url, as the Host header carries it
  std::string path_prefix_;  // the path of base_url, usually empty
};

}  // namespace pixelgate::backends
