#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "backends/fal_backend.hpp"

using namespace pixelgate;
using Json = nlohmann::json;

namespace {

const std::string kSchnell = "fal-ai/flux/schnell";

core::GenerationSpec spec(const std::string& model, int width, int height) {
  core::GenerationSpec s;
  s.model = model;
  s.prompt = "a dog";
  s.width = width;
  s.height = height;
  s.seed = 7;
  return s;
}

backends::FalBackend backend(const std::string& model = kSchnell) {
  config::BackendConfig config;
  config.name = "fal";
  config.type = "fal";
  config.base_url = "http://127.0.0.1:1";
  config.model = model;
  config.api_key = {"FAL_KEY", "fal_unit"};
  return backends::FalBackend(config);
}

}  // namespace

TEST(FalRequest, PresetSizeUsesEnum) {
  const auto body = Json::parse(backend().request_body(spec(kSchnell, 1024, 576)));
  EXPECT_EQ(body["image_size"], "landscape_16_9");
  EXPECT_EQ(body["num_images"], 1);
  EXPECT_EQ(body["seed"], 7);
  EXPECT_EQ(body["enable_safety_checker"], true);
  EXPECT_EQ(body["output_format"], "png");
}

TEST(FalRequest, OtherSizeUsesObject) {
  const auto body = Json::parse(backend().request_body(spec(kSchnell, 640, 480)));
  EXPECT_EQ(body["image_size"]["width"], 640);
  EXPECT_EQ(body["image_size"]["height"], 480);
}

TEST(FalRequest, SchnellOmitsGuidance) {
  auto s = spec(kSchnell, 512, 512);
  s.guidance = 3.5;
  EXPECT_FALSE(Json::parse(backend().request_body(s)).contains("guidance_scale"));
}

TEST(FalRequest, DevSendsGuidanceScale) {
  auto s = spec("fal-ai/flux/dev", 512, 512);
  s.guidance = 3.5;
  EXPECT_EQ(Json::parse(backend("fal-ai/flux/dev").request_body(s))["guidance_scale"], 3.5);
}

TEST(FalQueue, AppDropsSubPath) { EXPECT_EQ(backends::fal_queue_app("fal-ai/flux/schnell"), "fal-ai/flux"); }

TEST(FalQueue, AppKeepsTwoSegments) { EXPECT_EQ(backends::fal_queue_app("fal-ai/fast-sdxl"), "fal-ai/fast-sdxl"); }

TEST(FalValidate, FluxRejectsOddEdges) {
  const auto status = backend().validate(spec(kSchnell, 1000, 600));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "size");
}

TEST(FalValidate, RejectsOversizedEdge) {
  const auto status = backend("fal-ai/fast-sdxl").validate(spec("fal-ai/fast-sdxl", 20000, 512));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "size");
}

TEST(FalValidate, SchnellRejectsTooManySteps) {
  auto s = spec(kSchnell, 512, 512);
  s.steps = 13;
  const auto status = backend().validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "steps");
}

TEST(FalValidate, FluxRejectsNegativePrompt) {
  auto s = spec(kSchnell, 512, 512);
  s.negative_prompt = "blurry";
  const auto status = backend().validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "negative_prompt");
}

TEST(FalValidate, FluxAcceptsPresetSize) { EXPECT_TRUE(backend().validate(spec(kSchnell, 576, 1024)).ok()); }

TEST(FalPrice, SquareHdIsOneMegapixel) {
  EXPECT_DOUBLE_EQ(backend().list_price(spec(kSchnell, 1024, 1024)).value_or(-1), 0.003);
}

TEST(FalPrice, LargerSizeRoundsUp) {
  EXPECT_DOUBLE_EQ(backend().list_price(spec(kSchnell, 1536, 1024)).value_or(-1), 0.006);
}

TEST(FalFactory, MissingKeyNamesVariable) {
  config::BackendConfig config;
  config.name = "fal";
  config.type = "fal";
  config.base_url = "http://127.0.0.1:1";
  config.model = kSchnell;
  config.api_key = {"FAL_KEY", ""};
  const auto made = backends::make_backend(config);
  ASSERT_FALSE(made.ok());
  EXPECT_NE(made.error().message.find("FAL_KEY"), std::string::npos);
}
