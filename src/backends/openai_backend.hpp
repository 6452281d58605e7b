// The OpenAI Images API (POST {base_url}/images/generations), and servers that
// copy it (LocalAI, stable-diffusion.cpp's sd-server).
#pragma once

#include "backends/backend.hpp"

namespace pixelgate::backends {

// The request rules of one model family, from OpenAI's API reference.
struct OpenAIModelRules {
  // GptImage: gpt-image-1, -1-mini, -1.5 and chatgpt-image-latest, three fixed
  // sizes. GptImageFlexible: gpt-image-2 and later, any size whose sides are
  // multiples of 16 with an aspect ratio between 1:3 and 3:1, up to 3840x2160.
  // DallE2 and DallE3 were retired by OpenAI in 2026 but remain for servers
  // that copy their API. Compatible: any other model name, sent as given.
  enum class Family { GptImage, GptImageFlexible, DallE3, DallE2, Compatible };
  Family family = Family::Compatible;
  std::vector<std::pair<int, int>> sizes;  // empty = no fixed list
  std::vector<std::string> qualities;      // empty = quality not accepted
  std::size_t max_prompt_chars = 0;        // 0 = no limit known
};

OpenAIModelRules openai_model_rules(const std::string& model);

// Returns the list price in US dollars of one image, or 0 when unknown.
// Sources, OpenAI's published prices: dall-e-2 $0.016/$0.018/$0.020 by size
// and dall-e-3 $0.04 standard and $0.08 hd at 1024x1024, $0.08 and $0.12 at
// the wide sizes (both retired in 2026); gpt-image-1 $0.011/$0.042/$0.167 for
// low/medium/high at 1024x1024 and $0.016/$0.063/$0.25 at the other sizes;
// gpt-image-2 (launched 2026-04-21) $0.006/$0.053/$0.211 at 1024x1024 and
// $0.005/$0.041/$0.165 at 1536x1024 and 1024x1536.
double openai_list_price(const std::string& model, int width, int height, const std::string& quality);

class OpenAIBackend final : public Backend {
 public:
  explicit OpenAIBackend(config::BackendConfig config);

  const std::string& name() const override { return config_.name; }
  std::string_view type() const override { return "openai"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return config_.model; }
  bool honours_seed() const override { return false; }
  bool supports_negative_prompt() const override { return false; }
  std::optional<double> list_price(const core::GenerationSpec& spec) const override;

  core::Status validate(const core::GenerationSpec& spec) const override;
  core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) override;

  // Builds the JSON body for one generation (exposed for tests).
  std::string request_body(const core::GenerationSpec& spec) const;

 private:
  core::Result<GeneratedImage> parse_success(const std::string& body, const GenerateContext& context,
                                             const core::GenerationSpec& spec);
  core::Result<std::string> download(const std::string& url, const GenerateContext& context);

  config::BackendConfig config_;
};

}  // namespace pixelgate::backends
