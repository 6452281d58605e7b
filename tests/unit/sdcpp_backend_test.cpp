#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "backends/sdcpp_backend.hpp"
#include "core/hash.hpp"

using namespace pixelgate;

namespace {

core::GenerationSpec spec(int width, int height) {
  core::GenerationSpec s;
  s.prompt = "a robot";
  s.negative_prompt = "noise";
  s.width = width;
  s.height = height;
  s.seed = 42;
  return s;
}

backends::SdCppBackend backend() {
  config::BackendConfig config;
  config.name = "sdcpp";
  config.type = "sdcpp";
  config.base_url = "http://127.0.0.1:1";
  return backends::SdCppBackend(config);
}

}  // namespace

TEST(SdCppRequest, UnsetSettingsAreOmitted) {
  const auto body = nlohmann::json::parse(backend().request_body(spec(768, 512)));
  EXPECT_EQ(body["prompt"], "a robot");
  EXPECT_EQ(body["negative_prompt"], "noise");
  EXPECT_EQ(body["width"], 768);
  EXPECT_EQ(body["height"], 512);
  EXPECT_EQ(body["seed"], 42);
  EXPECT_EQ(body["batch_count"], 1);
  EXPECT_EQ(body["output_format"], "png");
  EXPECT_FALSE(body.contains("sample_params"));
}

TEST(SdCppRequest, SettingsFillSampleParams) {
  auto s = spec(512, 512);
  s.steps = 8;
  s.guidance = 3.5;
  s.sampler = "euler_a";
  const auto body = nlohmann::json::parse(backend().request_body(s));
  EXPECT_EQ(body["sample_params"]["sample_steps"], 8);
  EXPECT_EQ(body["sample_params"]["sample_method"], "euler_a");
  EXPECT_DOUBLE_EQ(body["sample_params"]["guidance"]["txt_cfg"].get<double>(), 3.5);
}

TEST(SdCppValidate, RejectsUnalignedHeight) {
  const auto status = backend().validate(spec(512, 500));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "height");
}

TEST(SdCppValidate, RejectsOversizeWidth) {
  const auto status = backend().validate(spec(4104, 512));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "width");
}

TEST(SdCppResult, DecodesFirstImage) {
  const auto job = nlohmann::json{{"status", "completed"},
                                  {"result", {{"images", {{{"index", 0}, {"b64_json", core::base64_encode("PNG")}}}}}}};
  const auto bytes = backends::parse_sdcpp_result(job);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, "PNG");
}

TEST(SdCppResult, RejectsMissingImages) {
  const auto bytes = backends::parse_sdcpp_result(nlohmann::json{{"status", "completed"}, {"result", nullptr}});
  ASSERT_FALSE(bytes.ok());
  EXPECT_EQ(bytes.error().code, core::ErrorCode::BadGateway);
}
