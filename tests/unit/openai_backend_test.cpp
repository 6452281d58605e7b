#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "backends/openai_backend.hpp"
#include "backends/retry.hpp"

using namespace pixelgate;

namespace {

core::GenerationSpec spec(const std::string& model, int width, int height) {
  core::GenerationSpec s;
  s.model = model;
  s.prompt = "a dog";
  s.width = width;
  s.height = height;
  return s;
}

backends::OpenAIBackend backend() {
  config::BackendConfig config;
  config.name = "openai";
  config.type = "openai";
  config.base_url = "http://127.0.0.1:1/v1";
  config.model = "gpt-image-2";
  return backends::OpenAIBackend(config);
}

}  // namespace

TEST(OpenAIRequest, GptImageOmitsResponseFormat) {
  const auto body = nlohmann::json::parse(backend().request_body(spec("gpt-image-2", 1536, 864)));
  EXPECT_EQ(body["model"], "gpt-image-2");
  EXPECT_EQ(body["size"], "1536x864");
  EXPECT_EQ(body["n"], 1);
  EXPECT_FALSE(body.contains("response_format"));
  EXPECT_EQ(body["output_format"], "png");
}

TEST(OpenAIRequest, DallEAsksForBase64) {
  const auto body = nlohmann::json::parse(backend().request_body(spec("dall-e-3", 1024, 1024)));
  EXPECT_EQ(body["response_format"], "b64_json");
  EXPECT_FALSE(body.contains("output_format"));
}

TEST(OpenAIValidate, FixedSizeModels) {
  auto b = backend();
  EXPECT_TRUE(b.validate(spec("gpt-image-1.5", 1536, 1024)).ok());
  EXPECT_FALSE(b.validate(spec("gpt-image-1.5", 1792, 1024)).ok());
  EXPECT_TRUE(b.validate(spec("dall-e-3", 1792, 1024)).ok());
  EXPECT_FALSE(b.validate(spec("dall-e-3", 512, 512)).ok());
  EXPECT_TRUE(b.validate(spec("dall-e-2", 256, 256)).ok());
}

TEST(OpenAIValidate, FlexibleSizeRules) {
  auto b = backend();
  EXPECT_TRUE(b.validate(spec("gpt-image-2", 1536, 864)).ok());
  EXPECT_FALSE(b.validate(spec("gpt-image-2", 1000, 1000)).ok());  // not multiples of 16
  EXPECT_FALSE(b.validate(spec("gpt-image-2", 3200, 1024)).ok());  // wider than 3:1
  EXPECT_FALSE(b.validate(spec("gpt-image-2", 4096, 2048)).ok());  // above 3840x2160
  auto error = b.validate(spec("gpt-image-2", 1000, 1000));
  EXPECT_EQ(error.error().param, "size");
}

TEST(OpenAIValidate, QualityAndStylePerModel) {
  auto b = backend();
  auto hd = spec("dall-e-3", 1024, 1024);
  hd.quality = "hd";
  EXPECT_TRUE(b.validate(hd).ok());
  auto wrong = spec("gpt-image-2", 1024, 1024);
  wrong.quality = "hd";
  EXPECT_EQ(b.validate(wrong).error().param, "quality");
  auto styled = spec("gpt-image-2", 1024, 1024);
  styled.style = "vivid";
  EXPECT_EQ(b.validate(styled).error().param, "style");
}

TEST(OpenAIValidate, PromptLengthPerModel) {
  auto b = backend();
  auto long_prompt = spec("dall-e-2", 256, 256);
  long_prompt.prompt = std::string(1001, 'a');
  EXPECT_EQ(b.validate(long_prompt).error().param, "prompt");
}

TEST(OpenAIPrice, ListPrices) {
  EXPECT_DOUBLE_EQ(backends::openai_list_price("dall-e-3", 1024, 1024, "hd"), 0.08);
  EXPECT_DOUBLE_EQ(backends::openai_list_price("dall-e-3", 1792, 1024, ""), 0.08);
  EXPECT_DOUBLE_EQ(backends::openai_list_price("gpt-image-1", 1024, 1024, "low"), 0.011);
  EXPECT_DOUBLE_EQ(backends::openai_list_price("gpt-image-2", 1024, 1024, "low"), 0.006);
  EXPECT_DOUBLE_EQ(backends::openai_list_price("gpt-image-2", 1536, 1024, "high"), 0.165);
  EXPECT_DOUBLE_EQ(backends::openai_list_price("gpt-image-2", 2048, 2048, "low"), 0.024);  // area estimate
  EXPECT_DOUBLE_EQ(backends::openai_list_price("some-local-model", 512, 512, ""), 0.0);
}

TEST(RetryDelay, HonoursRetryAfter) {
  using std::chrono::milliseconds;
  EXPECT_EQ(backends::backoff_delay(1, milliseconds(100), milliseconds(20000), milliseconds(3000)), milliseconds(3000));
  EXPECT_EQ(backends::backoff_delay(1, milliseconds(100), milliseconds(2000), milliseconds(3000)), milliseconds(2000));
}

TEST(RetryDelay, BacksOffExponentiallyWithJitter) {
  using std::chrono::milliseconds;
  for (int i = 0; i < 50; ++i) {
    const auto third = backends::backoff_delay(3, milliseconds(100), milliseconds(20000), std::nullopt);
    EXPECT_GE(third.count(), 200);
    EXPECT_LE(third.count(), 400);
  }
  EXPECT_LE(backends::backoff_delay(30, milliseconds(100), milliseconds(1000), std::nullopt).count(), 1000);
}

TEST(RetryAfter, ParsesSecondsAndMilliseconds) {
  EXPECT_EQ(backends::parse_retry_after(std::string("2"), std::nullopt).value().count(), 2000);
  EXPECT_EQ(backends::parse_retry_after(std::string("2"), std::string("150")).value().count(), 150);
  EXPECT_FALSE(backends::parse_retry_after(std::string("Wed, 21 Oct 2015 07:28:00 GMT"), std::nullopt).has_value());
}
