// ComfyUI's server API: queue a workflow with POST {base_url}/prompt, poll
// GET /history/{prompt_id}, fetch the image through GET /view.
#pragma once

#include <nlohmann/json.hpp>

#include "backends/backend.hpp"

namespace pixelgate::backends {

// Defaults put into {{steps}} and {{cfg}} when the spec leaves them at 0:
// ComfyUI's KSampler defaults.
inline constexpr int kComfyDefaultSteps = 20;
inline constexpr double kComfyDefaultCfg = 8.0;

// A workflow in ComfyUI's API format with pixelgate's placeholders, loaded
// and checked once at start-up.
struct ComfyWorkflow {
  nlohmann::json graph;
  bool has_negative_prompt = false;
  bool has_seed = false;
  bool has_steps = false;
  bool has_cfg = false;
};

// Parses `text` (the file at `path`, named in errors) as an API-format
// workflow that contains at least "{{prompt}}", "{{width}}" and "{{height}}".
core::Result<ComfyWorkflow> parse_comfy_workflow(const std::string& text, const std::string& path);

// Returns the graph with every placeholder replaced by the spec's value:
// strings for the prompts, numbers for the rest.
nlohmann::json fill_comfy_workflow(const ComfyWorkflow& workflow, const core::GenerationSpec& spec);

// Summarises ComfyUI's node_errors object as "node 4 (CheckpointLoaderSimple):
// message: details; ..." for error messages.
std::string summarise_node_errors(const nlohmann::json& node_errors);

class ComfyUIBackend final : public Backend {
 public:
  ComfyUIBackend(config::BackendConfig config, ComfyWorkflow workflow);

  const std::string& name() const override { return config_.name; }
  std::string_view type() const override { return "comfyui"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return config_.model; }
  bool honours_seed() const override { return workflow_.has_seed; }
  bool supports_negative_prompt() const override { return workflow_.has_negative_prompt; }
  // Self-hosted: no list price.
  std::optional<double> list_price(const core::GenerationSpec&) const override { return 0.0; }

  core::Status validate(const core::GenerationSpec& spec) const override;
  core::Result<GeneratedImage> generate(const core::GenerationSpec& spec, const GenerateContext& context) override;

  // Builds the JSON body of POST /prompt (exposed for tests).
  std::string request_body(const core::GenerationSpec& spec, const std::string& client_id) const;

 private:
  core::Result<std::string> submit(const core::GenerationSpec& spec, const GenerateContext& context);
  core::Result<nlohmann::json> wait_for_history(const std::string& prompt_id, const GenerateContext& context);
  core::Result<std::string> fetch_image(const nlohmann::json& outputs, const GenerateContext& context);
  void cancel(const std::string& prompt_id, const GenerateContext& context);

  config::BackendConfig config_;
  ComfyWorkflow workflow_;
};

}  // namespace pixelgate::backends
