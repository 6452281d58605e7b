#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "backends/replicate_backend.hpp"

using namespace pixelgate;
using Json = nlohmann::json;

namespace {

core::GenerationSpec spec(const std::string& model, int width, int height) {
  core::GenerationSpec s;
  s.model = model;
  s.prompt = "a dog";
  s.width = width;
  s.height = height;
  s.seed = 42;
  return s;
}

backends::ReplicateBackend backend(const std::string& model, const std::string& version = "") {
  config::BackendConfig config;
  config.name = "replicate";
  config.type = "replicate";
  config.base_url = "http://127.0.0.1:1";
  config.model = model;
  config.model_version = version;
  config.api_key = {"REPLICATE_API_TOKEN", "r8_unit"};
  return backends::ReplicateBackend(config);
}

const std::string kSchnell = "black-forest-labs/flux-schnell";
const std::string kVersion(64, 'a');

}  // namespace

TEST(ReplicateRequest, FluxUsesModelsPath) {
  const auto request = backend(kSchnell).create_request(spec(kSchnell, 1344, 768));
  EXPECT_EQ(request.path, "/v1/models/black-forest-labs/flux-schnell/predictions");
}

TEST(ReplicateRequest, FluxMapsSizeToAspectRatio) {
  const auto body = Json::parse(backend(kSchnell).create_request(spec(kSchnell, 1344, 768)).body);
  EXPECT_EQ(body["input"]["aspect_ratio"], "16:9");
  EXPECT_FALSE(body["input"].contains("width"));
  EXPECT_EQ(body["input"]["output_format"], "png");
  EXPECT_EQ(body["input"]["seed"], 42);
  EXPECT_FALSE(body.contains("version"));
}

TEST(ReplicateRequest, VersionUsesPredictionsPath) {
  const auto b = backend("stability-ai/sdxl", kVersion);
  const auto request = b.create_request(spec("stability-ai/sdxl", 768, 512));
  EXPECT_EQ(request.path, "/v1/predictions");
  const auto body = Json::parse(request.body);
  EXPECT_EQ(body["version"], kVersion);
  EXPECT_EQ(body["input"]["width"], 768);
  EXPECT_EQ(body["input"]["height"], 512);
}

TEST(ReplicateRequest, ModelWithColonNamesVersion) {
  const auto request = backend(kSchnell).create_request(spec("owner/model:" + kVersion, 512, 512));
  EXPECT_EQ(request.path, "/v1/predictions");
  EXPECT_EQ(Json::parse(request.body)["version"], kVersion);
}

TEST(ReplicateRequest, GenericSendsNegativePrompt) {
  auto s = spec("stability-ai/sdxl", 1024, 1024);
  s.negative_prompt = "blurry";
  s.steps = 30;
  const auto input = Json::parse(backend("stability-ai/sdxl").create_request(s).body)["input"];
  EXPECT_EQ(input["negative_prompt"], "blurry");
  EXPECT_EQ(input["num_inference_steps"], 30);
}

TEST(ReplicateRequest, GenericOmitsEmptyNegativePrompt) {
  const auto input = Json::parse(backend("stability-ai/sdxl").create_request(spec("stability-ai/sdxl", 512, 512)).body)["input"];
  EXPECT_FALSE(input.contains("negative_prompt"));
}

TEST(ReplicatePrefer, CapsWaitAtSixtySeconds) { EXPECT_EQ(backends::ReplicateBackend::prefer_header(120'000), "wait=60"); }

TEST(ReplicatePrefer, KeepsOneSecondBack) { EXPECT_EQ(backends::ReplicateBackend::prefer_header(5'500), "wait=4"); }

TEST(ReplicatePrefer, OmittedWithoutTimeLeft) { EXPECT_EQ(backends::ReplicateBackend::prefer_header(1'900), ""); }

TEST(ReplicateValidate, FluxRejectsFreeSize) {
  const auto status = backend(kSchnell).validate(spec(kSchnell, 1000, 1000));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().code, core::ErrorCode::InvalidArgument);
  EXPECT_EQ(status.error().param, "size");
}

TEST(ReplicateValidate, FluxAcceptsRatioSize) { EXPECT_TRUE(backend(kSchnell).validate(spec(kSchnell, 640, 1536)).ok()); }

TEST(ReplicateValidate, FluxRejectsNegativePrompt) {
  auto s = spec(kSchnell, 1024, 1024);
  s.negative_prompt = "blurry";
  const auto status = backend(kSchnell).validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "negative_prompt");
}

TEST(ReplicateValidate, SchnellRejectsFiveSteps) {
  auto s = spec(kSchnell, 1024, 1024);
  s.steps = 5;
  const auto status = backend(kSchnell).validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "steps");
}

TEST(ReplicateRequest, SchnellSendsSteps) {
  auto s = spec(kSchnell, 1024, 1024);
  s.steps = 2;
  EXPECT_EQ(Json::parse(backend(kSchnell).create_request(s).body)["input"]["num_inference_steps"], 2);
}

TEST(ReplicateValidate, DevRejectsHighGuidance) {
  const std::string dev = "black-forest-labs/flux-dev";
  auto s = spec(dev, 1024, 1024);
  s.guidance = 12;
  const auto status = backend(dev).validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "guidance");
}

TEST(ReplicateValidate, GenericAcceptsAnySize) {
  EXPECT_TRUE(backend("stability-ai/sdxl").validate(spec("stability-ai/sdxl", 777, 333)).ok());
}

TEST(ReplicateCapabilities, NegativePromptByFamily) {
  EXPECT_FALSE(backend(kSchnell).supports_negative_prompt());
  EXPECT_TRUE(backend("stability-ai/sdxl").supports_negative_prompt());
}

TEST(ReplicatePrice, SchnellListPrice) {
  EXPECT_DOUBLE_EQ(backend(kSchnell).list_price(spec(kSchnell, 1024, 1024)).value_or(-1), 0.003);
}

TEST(ReplicatePrice, GenericPriceUnknown) {
  EXPECT_FALSE(backend("stability-ai/sdxl").list_price(spec("stability-ai/sdxl", 512, 512)).has_value());
}

TEST(ReplicateFactory, MissingTokenNamesVariable) {
  config::BackendConfig config;
  config.name = "rep";
  config.type = "replicate";
  config.base_url = "http://127.0.0.1:1";
  config.model = kSchnell;
  config.api_key = {"REPLICATE_API_TOKEN", ""};
  const auto made = backends::make_backend(config);
  ASSERT_FALSE(made.ok());
  EXPECT_NE(made.error().message.find("REPLICATE_API_TOKEN"), std::string::npos);
}
