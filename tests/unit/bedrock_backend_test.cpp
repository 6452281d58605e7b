#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "backends/bedrock_backend.hpp"
#include "core/aws_sigv4.hpp"
#include "core/hash.hpp"

using namespace pixelgate;
using Json = nlohmann::json;

namespace {

core::GenerationSpec spec(const std::string& model, int width, int height) {
  core::GenerationSpec s;
  s.model = model;
  s.prompt = "a lighthouse at dusk";
  s.width = width;
  s.height = height;
  s.seed = 7;
  return s;
}

config::BackendConfig bedrock_config() {
  config::BackendConfig config;
  config.name = "bedrock";
  config.type = "bedrock";
  config.base_url = "http://127.0.0.1:8123";
  config.model = "amazon.nova-canvas-v1:0";
  config.region = "us-east-1";
  config.access_key = {"AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"};
  config.secret_key = {"AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"};
  return config;
}

backends::BedrockBackend backend() { return backends::BedrockBackend(bedrock_config()); }

std::string find_header(const std::vector<std::string>& headers, const std::string& name) {
  for (const auto& header : headers) {
    if (header.rfind(name + ": ", 0) == 0) return header.substr(name.size() + 2);
  }
  return {};
}

std::chrono::system_clock::time_point fixed_time() { return std::chrono::system_clock::from_time_t(1'764'849'600); }

}  // namespace

TEST(BedrockRules, FamiliesFromModelIds) {
  using Family = backends::BedrockModelRules::Family;
  EXPECT_EQ(backends::bedrock_model_rules("amazon.titan-image-generator-v2:0").family, Family::Titan);
  EXPECT_EQ(backends::bedrock_model_rules("amazon.nova-canvas-v1:0").family, Family::NovaCanvas);
  EXPECT_EQ(backends::bedrock_model_rules("us.amazon.nova-canvas-v1:0").family, Family::NovaCanvas);
  EXPECT_EQ(backends::bedrock_model_rules("stability.sd3-5-large-v1:0").family, Family::Stability);
  EXPECT_EQ(backends::bedrock_model_rules("anthropic.claude-v2").family, Family::Unknown);
}

TEST(BedrockValidate, UnknownModelRejected) {
  const auto status = backend().validate(spec("anthropic.claude-v2", 1024, 1024));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "model");
}

TEST(BedrockValidate, TitanListedSizeAccepted) {
  EXPECT_TRUE(backend().validate(spec("amazon.titan-image-generator-v2:0", 1173, 640)).ok());
}

TEST(BedrockValidate, TitanUnlistedSizeRejected) {
  const auto status = backend().validate(spec("amazon.titan-image-generator-v2:0", 1024, 768));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "size");
}

TEST(BedrockValidate, NovaMultipleOf16Accepted) {
  EXPECT_TRUE(backend().validate(spec("amazon.nova-canvas-v1:0", 1280, 720)).ok());
}

TEST(BedrockValidate, NovaOddSideRejected) {
  EXPECT_FALSE(backend().validate(spec("amazon.nova-canvas-v1:0", 1000, 1000)).ok());
}

TEST(BedrockValidate, NovaTooManyPixelsRejected) {
  EXPECT_FALSE(backend().validate(spec("amazon.nova-canvas-v1:0", 4096, 1024 + 16)).ok());
}

TEST(BedrockValidate, NovaWideRatioRejected) {
  EXPECT_FALSE(backend().validate(spec("amazon.nova-canvas-v1:0", 2048, 320)).ok());
}

TEST(BedrockValidate, StabilityRatioSizeAccepted) {
  EXPECT_TRUE(backend().validate(spec("stability.sd3-5-large-v1:0", 1344, 768)).ok());
}

TEST(BedrockValidate, StabilityOtherSizeRejected) {
  const auto status = backend().validate(spec("stability.stable-image-core-v1:1", 1280, 720));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "size");
}

TEST(BedrockValidate, TitanLongPromptRejected) {
  auto s = spec("amazon.titan-image-generator-v2:0", 1024, 1024);
  s.prompt = std::string(513, 'a');
  const auto status = backend().validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "prompt");
}

TEST(BedrockValidate, NovaPromptLimitCountsCharacters) {
  auto s = spec("amazon.nova-canvas-v1:0", 1024, 1024);
  s.prompt.clear();
  for (int i = 0; i < 1024; ++i) s.prompt += "\xC3\xA9";  // 1024 characters, 2048 bytes
  EXPECT_TRUE(backend().validate(s).ok());
}

TEST(BedrockValidate, LongNegativePromptRejected) {
  auto s = spec("amazon.nova-canvas-v1:0", 1024, 1024);
  s.negative_prompt = std::string(1025, 'b');
  const auto status = backend().validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "negative_prompt");
}

TEST(BedrockValidate, UnknownQualityRejected) {
  auto s = spec("amazon.nova-canvas-v1:0", 1024, 1024);
  s.quality = "hd";
  const auto status = backend().validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "quality");
}

TEST(BedrockValidate, StabilityQualityRejected) {
  auto s = spec("stability.stable-image-ultra-v1:1", 1024, 1024);
  s.quality = "premium";
  EXPECT_FALSE(backend().validate(s).ok());
}

TEST(BedrockValidate, GuidanceOutOfRangeRejected) {
  auto s = spec("amazon.titan-image-generator-v2:0", 1024, 1024);
  s.guidance = 12;
  const auto status = backend().validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "guidance");
}

TEST(BedrockBody, NovaTextToImageShape) {
  auto s = spec("amazon.nova-canvas-v1:0", 1280, 720);
  s.negative_prompt = "blurry";
  s.quality = "premium";
  s.guidance = 6.5;
  const Json body = Json::parse(backend().request_body(s));
  EXPECT_EQ(body["taskType"], "TEXT_IMAGE");
  EXPECT_EQ(body["textToImageParams"]["text"], "a lighthouse at dusk");
  EXPECT_EQ(body["textToImageParams"]["negativeText"], "blurry");
  EXPECT_EQ(body["imageGenerationConfig"]["numberOfImages"], 1);
  EXPECT_EQ(body["imageGenerationConfig"]["width"], 1280);
  EXPECT_EQ(body["imageGenerationConfig"]["height"], 720);
  EXPECT_EQ(body["imageGenerationConfig"]["seed"], 7);
  EXPECT_EQ(body["imageGenerationConfig"]["quality"], "premium");
  EXPECT_DOUBLE_EQ(body["imageGenerationConfig"]["cfgScale"].get<double>(), 6.5);
}

TEST(BedrockBody, EmptyNegativeTextOmitted) {
  const Json body = Json::parse(backend().request_body(spec("amazon.titan-image-generator-v2:0", 1024, 1024)));
  EXPECT_FALSE(body["textToImageParams"].contains("negativeText"));
}

TEST(BedrockBody, NovaSeedFoldedIntoRange) {
  auto s = spec("amazon.nova-canvas-v1:0", 1024, 1024);
  s.seed = 858'993'460ULL + 5;
  const Json body = Json::parse(backend().request_body(s));
  EXPECT_EQ(body["imageGenerationConfig"]["seed"], 5);
}

TEST(BedrockBody, StabilityShape) {
  auto s = spec("stability.sd3-5-large-v1:0", 832, 1216);
  s.negative_prompt = "text";
  const Json body = Json::parse(backend().request_body(s));
  EXPECT_EQ(body["prompt"], "a lighthouse at dusk");
  EXPECT_EQ(body["negative_prompt"], "text");
  EXPECT_EQ(body["aspect_ratio"], "2:3");
  EXPECT_EQ(body["seed"], 7);
  EXPECT_EQ(body["output_format"], "png");
  EXPECT_FALSE(body.contains("taskType"));
}

TEST(BedrockRequest, ModelIdEncodedInUrl) {
  EXPECT_EQ(backend().invoke_url("stability.stable-image-ultra-v1:1"),
            "http://127.0.0.1:8123/model/stability.stable-image-ultra-v1%3A1/invoke");
}

TEST(BedrockRequest, SignsTheHostItSends) {
  const std::string body = R"({"prompt":"a cat"})";
  const auto headers = backend().signed_headers("stability.sd3-5-large-v1:0", body, fixed_time());
  EXPECT_EQ(find_header(headers, "Host"), "127.0.0.1:8123");

  core::AwsSigningInput input;
  input.method = "POST";
  input.host = "127.0.0.1:8123";
  input.path = "/model/stability.sd3-5-large-v1%3A0/invoke";
  input.headers = {{"Content-Type", "application/json"}, {"Accept", "application/json"}};
  input.region = "us-east-1";
  input.service = "bedrock";
  input.credentials = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
  input.payload_hash = core::sha256_hex(body);
  input.time = fixed_time();
  EXPECT_EQ(find_header(headers, "Authorization"), core::aws_sigv4_sign(input).authorization);
}

TEST(BedrockRequest, AuthorizationScopeNamesBedrock) {
  const auto headers = backend().signed_headers("amazon.nova-canvas-v1:0", "{}", fixed_time());
  EXPECT_NE(find_header(headers, "Authorization").find("/us-east-1/bedrock/aws4_request, "), std::string::npos);
}

TEST(BedrockRequest, SessionTokenSent) {
  auto config = bedrock_config();
  config.session_token = {"AWS_SESSION_TOKEN", "token-abc"};
  const auto headers = backends::BedrockBackend(config).signed_headers("amazon.nova-canvas-v1:0", "{}", fixed_time());
  EXPECT_EQ(find_header(headers, "X-Amz-Security-Token"), "token-abc");
  EXPECT_NE(find_header(headers, "Authorization").find("x-amz-security-token"), std::string::npos);
}

TEST(BedrockPrice, ListPrices) {
  EXPECT_DOUBLE_EQ(backends::bedrock_list_price("amazon.nova-canvas-v1:0", 1024, 1024, ""), 0.04);
  EXPECT_DOUBLE_EQ(backends::bedrock_list_price("amazon.nova-canvas-v1:0", 2048, 2048, "premium"), 0.08);
  EXPECT_DOUBLE_EQ(backends::bedrock_list_price("amazon.titan-image-generator-v2:0", 512, 512, ""), 0.008);
  EXPECT_DOUBLE_EQ(backends::bedrock_list_price("stability.stable-image-ultra-v1:1", 1024, 1024, ""), 0.14);
}

TEST(BedrockFactory, MissingSecretKeyNamed) {
  auto config = bedrock_config();
  config.secret_key.value.clear();
  const auto created = backends::make_backend(config);
  ASSERT_FALSE(created.ok());
  EXPECT_NE(created.error().message.find("secret_key_env"), std::string::npos);
  EXPECT_NE(created.error().message.find("AWS_SECRET_ACCESS_KEY"), std::string::npos);
}
