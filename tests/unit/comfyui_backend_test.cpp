#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "backends/comfyui_backend.hpp"

using namespace pixelgate;

namespace {

std::string example_workflow() {
  std::ifstream file(std::string(PIXELGATE_SOURCE_DIR) + "/config/examples/comfyui-txt2img.json");
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

backends::ComfyWorkflow workflow() {
  auto parsed = backends::parse_comfy_workflow(example_workflow(), "example.json");
  EXPECT_TRUE(parsed.ok());
  return std::move(parsed).value();
}

core::GenerationSpec spec() {
  core::GenerationSpec s;
  s.prompt = "a \"quoted\" lighthouse";
  s.negative_prompt = "fog";
  s.width = 640;
  s.height = 384;
  s.seed = 12345;
  return s;
}

config::BackendConfig comfy_config() {
  config::BackendConfig config;
  config.name = "comfy";
  config.type = "comfyui";
  config.base_url = "http://127.0.0.1:1";
  return config;
}

}  // namespace

TEST(ComfyWorkflow, ExampleHasEveryPlaceholder) {
  const auto parsed = workflow();
  EXPECT_TRUE(parsed.has_negative_prompt);
  EXPECT_TRUE(parsed.has_seed);
  EXPECT_TRUE(parsed.has_steps);
  EXPECT_TRUE(parsed.has_cfg);
}

TEST(ComfyWorkflow, FillUsesTypedValues) {
  const auto graph = backends::fill_comfy_workflow(workflow(), spec());
  EXPECT_EQ(graph["6"]["inputs"]["text"], "a \"quoted\" lighthouse");
  EXPECT_EQ(graph["7"]["inputs"]["text"], "fog");
  EXPECT_EQ(graph["5"]["inputs"]["width"], 640);
  EXPECT_EQ(graph["5"]["inputs"]["height"], 384);
  EXPECT_EQ(graph["3"]["inputs"]["seed"], 12345);
  EXPECT_EQ(graph["3"]["inputs"]["steps"], backends::kComfyDefaultSteps);
  EXPECT_DOUBLE_EQ(graph["3"]["inputs"]["cfg"].get<double>(), backends::kComfyDefaultCfg);
  EXPECT_EQ(graph["4"]["inputs"]["ckpt_name"], "v1-5-pruned-emaonly.safetensors");
}

TEST(ComfyWorkflow, PromptInsideLongerText) {
  auto parsed = backends::parse_comfy_workflow(
      R"({"1": {"class_type": "CLIPTextEncode", "inputs": {"text": "photo of {{prompt}}, sharp"}},
          "2": {"class_type": "EmptyLatentImage", "inputs": {"width": "{{width}}", "height": "{{height}}"}}})",
      "inline.json");
  ASSERT_TRUE(parsed.ok());
  const auto graph = backends::fill_comfy_workflow(*parsed, spec());
  EXPECT_EQ(graph["1"]["inputs"]["text"], "photo of a \"quoted\" lighthouse, sharp");
}

TEST(ComfyWorkflow, RejectsInvalidJson) {
  const auto parsed = backends::parse_comfy_workflow("{not json", "broken.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message.find("broken.json"), std::string::npos);
}

TEST(ComfyWorkflow, RejectsUiFormat) {
  const auto parsed = backends::parse_comfy_workflow(R"({"nodes": [], "links": []})", "ui.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message.find("Export (API)"), std::string::npos);
}

TEST(ComfyWorkflow, RejectsMissingPromptPlaceholder) {
  const auto parsed = backends::parse_comfy_workflow(
      R"({"2": {"class_type": "EmptyLatentImage", "inputs": {"width": "{{width}}", "height": "{{height}}"}}})",
      "noprompt.json");
  ASSERT_FALSE(parsed.ok());
  EXPECT_NE(parsed.error().message.find("{{prompt}}"), std::string::npos);
}

TEST(ComfyErrors, SummaryNamesNodeAndClass) {
  const auto node_errors = nlohmann::json::parse(R"({"4": {"class_type": "CheckpointLoaderSimple",
      "dependent_outputs": ["9"], "errors": [{"type": "value_not_in_list", "message": "Value not in list",
      "details": "ckpt_name: 'x' not in []", "extra_info": {}}]}})");
  EXPECT_EQ(backends::summarise_node_errors(node_errors),
            "node 4 (CheckpointLoaderSimple): Value not in list: ckpt_name: 'x' not in []");
}

TEST(ComfyValidate, RejectsUnalignedWidth) {
  const backends::ComfyUIBackend backend(comfy_config(), workflow());
  auto s = spec();
  s.width = 641;
  const auto status = backend.validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "width");
}

TEST(ComfyValidate, RejectsSamplerOverride) {
  const backends::ComfyUIBackend backend(comfy_config(), workflow());
  auto s = spec();
  s.sampler = "euler";
  const auto status = backend.validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "sampler");
}

TEST(ComfyRequest, BodyCarriesClientId) {
  const backends::ComfyUIBackend backend(comfy_config(), workflow());
  const auto body = nlohmann::json::parse(backend.request_body(spec(), "pixelgate-r1"));
  EXPECT_EQ(body["client_id"], "pixelgate-r1");
  EXPECT_EQ(body["prompt"]["5"]["inputs"]["width"], 640);
}

TEST(ComfyMaker, MissingWorkflowNamesKey) {
  auto config = comfy_config();
  config.workflow = "/nonexistent/workflow.json";
  const auto backend = backends::make_backend(config);
  ASSERT_FALSE(backend.ok());
  EXPECT_NE(backend.error().message.find("backends.comfy.workflow"), std::string::npos);
}
