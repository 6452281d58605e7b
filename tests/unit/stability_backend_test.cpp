#include <gtest/gtest.h>

#include "backends/registry.hpp"
#include "backends/stability_backend.hpp"
#include "core/hash.hpp"

using namespace pixelgate;

namespace {

core::GenerationSpec spec(const std::string& model, int width = 1024, int height = 1024) {
  core::GenerationSpec s;
  s.model = model;
  s.prompt = "a lighthouse";
  s.width = width;
  s.height = height;
  s.seed = 42;
  return s;
}

config::BackendConfig stability_config() {
  config::BackendConfig config;
  config.name = "stability";
  config.type = "stability";
  config.base_url = "http://127.0.0.1:1";
  config.model = "sd3.5-large";
  config.api_key = {"STABILITY_API_KEY", "sk-unit-test-key"};
  return config;
}

backends::StabilityBackend backend() { return backends::StabilityBackend(stability_config()); }

// Returns the value of multipart field `name`, or "<absent>".
std::string field(const backends::OutboundRequest& request, const std::string& name) {
  for (const auto& part : request.multipart) {
    if (part.name == name) return part.value;
  }
  return "<absent>";
}

backends::OutboundResponse answer(long status, const std::string& content_type, const std::string& body) {
  backends::OutboundResponse response;
  response.status = status;
  response.headers = {{"content-type", content_type}};
  response.body = body;
  return response;
}

}  // namespace

TEST(StabilityRequest, Sd3ModelGoesToSd3Endpoint) {
  const auto request = backend().build_request(spec("sd3.5-large-turbo"));
  EXPECT_EQ(request.method, "POST");
  EXPECT_EQ(request.url, "http://127.0.0.1:1/v2beta/stable-image/generate/sd3");
  EXPECT_EQ(field(request, "model"), "sd3.5-large-turbo");
}

TEST(StabilityRequest, UltraSendsNoModelField) {
  const auto request = backend().build_request(spec("ultra"));
  EXPECT_EQ(request.url, "http://127.0.0.1:1/v2beta/stable-image/generate/ultra");
  EXPECT_EQ(field(request, "model"), "<absent>");
}

TEST(StabilityRequest, CoreUsesCoreEndpoint) {
  EXPECT_EQ(backend().build_request(spec("core")).url, "http://127.0.0.1:1/v2beta/stable-image/generate/core");
}

TEST(StabilityRequest, HeadersCarryKeyAndAccept) {
  const auto request = backend().build_request(spec("ultra"));
  EXPECT_NE(std::find(request.headers.begin(), request.headers.end(), "Authorization: Bearer sk-unit-test-key"),
            request.headers.end());
  EXPECT_NE(std::find(request.headers.begin(), request.headers.end(), "Accept: image/*"), request.headers.end());
}

TEST(StabilityRequest, FormFieldsFollowSpec) {
  auto s = spec("sd3.5-medium", 1024, 1024);
  s.negative_prompt = "fog";
  const auto request = backend().build_request(s);
  EXPECT_EQ(field(request, "prompt"), "a lighthouse");
  EXPECT_EQ(field(request, "negative_prompt"), "fog");
  EXPECT_EQ(field(request, "aspect_ratio"), "1:1");
  EXPECT_EQ(field(request, "seed"), "42");
  EXPECT_EQ(field(request, "output_format"), "png");
}

TEST(StabilityRequest, RandomSeedIsStillSent) {
  auto s = spec("ultra");
  s.random_seed = true;
  s.seed = 99;
  EXPECT_EQ(field(backend().build_request(s), "seed"), "99");
}

TEST(StabilityBackendInfo, TurboBackendDropsNegativePrompt) {
  auto config = stability_config();
  EXPECT_TRUE(backends::StabilityBackend(config).supports_negative_prompt());
  config.model = "sd3.5-large-turbo";
  EXPECT_FALSE(backends::StabilityBackend(config).supports_negative_prompt());
}

TEST(StabilityRequest, CoreSendsStylePreset) {
  auto s = spec("core");
  s.style = "anime";
  EXPECT_EQ(field(backend().build_request(s), "style_preset"), "anime");
}

TEST(StabilityRatio, ExactRatiosAreRecognised) {
  EXPECT_EQ(backends::stability_aspect_ratio(1024, 1024), "1:1");
  EXPECT_EQ(backends::stability_aspect_ratio(1600, 900), "16:9");
  EXPECT_EQ(backends::stability_aspect_ratio(630, 1470), "9:21");
  EXPECT_EQ(backends::stability_aspect_ratio(1344, 768), "");
  EXPECT_EQ(backends::stability_aspect_ratio(0, 768), "");
}

TEST(StabilityValidate, DocumentedSquareSizeAccepted) {
  EXPECT_TRUE(backend().validate(spec("ultra")).ok());
  EXPECT_TRUE(backend().validate(spec("sd3.5-large")).ok());
  EXPECT_TRUE(backend().validate(spec("sd3-medium")).ok());
}

TEST(StabilityValidate, UnknownModelNamesModel) {
  const auto status = backend().validate(spec("sdxl-1.0"));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().code, core::ErrorCode::InvalidArgument);
  EXPECT_EQ(status.error().param, "model");
}

TEST(StabilityValidate, InexactRatioRejected) {
  const auto status = backend().validate(spec("ultra", 1344, 768));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "size");
}

TEST(StabilityValidate, UndocumentedPixelSizeRejected) {
  const auto wide = backend().validate(spec("ultra", 1600, 900));
  ASSERT_FALSE(wide.ok());
  EXPECT_EQ(wide.error().param, "size");
  const auto small_square = backend().validate(spec("ultra", 512, 512));
  ASSERT_FALSE(small_square.ok());
  EXPECT_EQ(small_square.error().param, "size");
}

TEST(StabilityValidate, CoreSizeIsUndocumented) {
  const auto status = backend().validate(spec("core"));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "size");
}

TEST(StabilityValidate, TurboRejectsNegativePrompt) {
  auto s = spec("sd3.5-large-turbo");
  s.negative_prompt = "fog";
  const auto status = backend().validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "negative_prompt");
}

TEST(StabilityValidate, PromptLengthLimitEnforced) {
  auto s = spec("ultra");
  s.prompt = std::string(10000, 'a');
  EXPECT_TRUE(backend().validate(s).ok());
  s.prompt += "a";
  const auto status = backend().validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "prompt");
}

TEST(StabilityValidate, SeedAboveMaximumRejected) {
  auto s = spec("ultra");
  s.seed = 4294967294u;
  EXPECT_TRUE(backend().validate(s).ok());
  s.seed = 4294967295u;
  const auto status = backend().validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "seed");
}

TEST(StabilityValidate, UnsupportedKnobsRejected) {
  auto with_steps = spec("ultra");
  with_steps.steps = 30;
  EXPECT_EQ(backend().validate(with_steps).error().param, "steps");
  auto with_style = spec("ultra");
  with_style.style = "anime";
  EXPECT_EQ(backend().validate(with_style).error().param, "style");
  auto with_quality = spec("ultra");
  with_quality.quality = "hd";
  EXPECT_EQ(backend().validate(with_quality).error().param, "quality");
}

TEST(StabilityPrice, CreditsConvertToDollars) {
  EXPECT_DOUBLE_EQ(*backend().list_price(spec("ultra")), 0.08);
  EXPECT_DOUBLE_EQ(*backend().list_price(spec("core")), 0.03);
  EXPECT_DOUBLE_EQ(*backend().list_price(spec("sd3.5-large")), 0.065);
  EXPECT_DOUBLE_EQ(*backend().list_price(spec("sd3.5-large-turbo")), 0.04);
  EXPECT_DOUBLE_EQ(*backend().list_price(spec("sd3.5-medium")), 0.035);
  EXPECT_FALSE(backend().list_price(spec("unknown")).has_value());
}

TEST(StabilityAnswerParse, RawImageReadsHeaders) {
  auto response = answer(200, "image/png", "PNGBYTES");
  response.headers.push_back({"finish-reason", "SUCCESS"});
  response.headers.push_back({"seed", "42"});
  const auto parsed = backends::parse_stability_answer(response);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->bytes, "PNGBYTES");
  EXPECT_EQ(parsed->finish_reason, "SUCCESS");
  EXPECT_EQ(parsed->seed, "42");
}

TEST(StabilityAnswerParse, JsonImageDecodesBase64) {
  const auto parsed = backends::parse_stability_answer(
      answer(200, "application/json; charset=utf-8", R"({"image":")" + core::base64_encode("PNGBYTES") +
                                                          R"(","finish_reason":"CONTENT_FILTERED","seed":7})"));
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(parsed->bytes, "PNGBYTES");
  EXPECT_EQ(parsed->finish_reason, "CONTENT_FILTERED");
  EXPECT_EQ(parsed->seed, "7");
}

TEST(StabilityAnswerParse, MalformedAnswersAreBadGateway) {
  EXPECT_EQ(backends::parse_stability_answer(answer(200, "application/json", "{}")).error().code,
            core::ErrorCode::BadGateway);
  EXPECT_EQ(backends::parse_stability_answer(answer(200, "application/json", R"({"image":"@@@"})")).error().code,
            core::ErrorCode::BadGateway);
  EXPECT_EQ(backends::parse_stability_answer(answer(200, "text/html", "<html>")).error().code,
            core::ErrorCode::BadGateway);
  EXPECT_EQ(backends::parse_stability_answer(answer(200, "image/png", "")).error().code, core::ErrorCode::BadGateway);
}

TEST(StabilityErrors, ModerationIsContentRefused) {
  const auto failure = backends::classify_stability_error(
      answer(403, "application/json",
             R"({"id":"abc","name":"content_moderation","errors":["Your request was flagged."]})"),
      "stability", "req");
  EXPECT_EQ(failure.error.code, core::ErrorCode::ContentRefused);
  EXPECT_FALSE(failure.retry);
}

TEST(StabilityErrors, BadRequestNamesField) {
  const auto failure = backends::classify_stability_error(
      answer(400, "application/json", R"({"id":"abc","name":"bad_request","errors":["aspect_ratio: is invalid"]})"),
      "stability", "req");
  EXPECT_EQ(failure.error.code, core::ErrorCode::InvalidArgument);
  EXPECT_EQ(failure.error.param, "aspect_ratio");
}

TEST(StabilityErrors, RateLimitRetriesWithRetryAfter) {
  auto response = answer(429, "application/json", R"({"id":"abc","name":"rate_limit_exceeded","errors":["slow"]})");
  response.headers.push_back({"retry-after", "3"});
  const auto failure = backends::classify_stability_error(response, "stability", "req");
  EXPECT_TRUE(failure.retry);
  EXPECT_EQ(failure.error.code, core::ErrorCode::Unavailable);
  EXPECT_EQ(failure.error.retry_after_seconds, 3);
}

TEST(StabilityErrors, StatusesMapToVocabulary) {
  const auto classify = [](long status) {
    return backends::classify_stability_error(answer(status, "application/json", "{}"), "stability", "req");
  };
  EXPECT_EQ(classify(401).error.code, core::ErrorCode::BadGateway);
  EXPECT_EQ(classify(402).error.code, core::ErrorCode::Unavailable);
  EXPECT_EQ(classify(413).error.code, core::ErrorCode::InvalidArgument);
  EXPECT_EQ(classify(422).error.code, core::ErrorCode::InvalidArgument);
  EXPECT_TRUE(classify(500).retry);
  EXPECT_EQ(classify(500).error.code, core::ErrorCode::BadGateway);
  EXPECT_FALSE(classify(400).retry);
}

TEST(StabilityFactory, MissingKeyNamesVariable) {
  auto config = stability_config();
  config.api_key.value.clear();
  const auto result = backends::find_backend_maker("stability")(config);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("STABILITY_API_KEY"), std::string::npos);
}

TEST(StabilityFactory, UnknownConfiguredModelRejected) {
  auto config = stability_config();
  config.model = "dall-e-3";
  const auto result = backends::find_backend_maker("stability")(config);
  ASSERT_FALSE(result.ok());
  EXPECT_NE(result.error().message.find("backends.stability.model"), std::string::npos);
}
