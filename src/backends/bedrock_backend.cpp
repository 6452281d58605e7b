#include "backends/bedrock_backend.hpp"

#include <algorithm>
#include <array>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "backends/registry.hpp"
#include "backends/retry.hpp"
#include "core/aws_sigv4.hpp"
#include "core/hash.hpp"
#include "core/text.hpp"

namespace pixelgate::backends {
namespace {

using Json = nlohmann::json;
using Family = BedrockModelRules::Family;
using Clock = std::chrono::steady_clock;

std::string size_text(int width, int height) { return std::to_string(width) + "x" + std::to_string(height); }

std::chrono::milliseconds remaining(const GenerateContext& context) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(context.deadline - Clock::now());
}

// The sizes Titan Image Generator v1 and v2 accept, after the size table of
// the Bedrock User Guide's "Amazon Titan Image Generator G1 models" page.
// NOTE: the list is recalled, not read, because the copies of that page
// available here lacked the table.
constexpr std::array<std::pair<int, int>, 25> kTitanSizes = {{
    {1024, 1024}, {768, 768},  {512, 512},  {768, 1152}, {384, 576},  {1152, 768}, {576, 384},
    {768, 1280},  {384, 640},  {1280, 768}, {640, 384},  {896, 1152}, {448, 576},  {1152, 896},
    {576, 448},   {768, 1408}, {384, 704},  {1408, 768}, {704, 384},  {640, 1408}, {320, 704},
    {1408, 640},  {704, 320},  {1152, 640}, {1173, 640},
}};

// Stability's aspect ratios and the pixel size each produces at about one
// megapixel. NOTE: the sizes are those of Stability's own SD3 API, recalled.
// Bedrock does not document them, and Ultra and Core may differ, in which
// case the gateway's size check fails the image with 502.
struct AspectRatio {
  const char* name;
  int width;
  int height;
};
constexpr std::array<AspectRatio, 9> kStabilityRatios = {{
    {"1:1", 1024, 1024},
    {"16:9", 1344, 768},
    {"21:9", 1536, 640},
    {"2:3", 832, 1216},
    {"3:2", 1216, 832},
    {"4:5", 896, 1088},
    {"5:4", 1088, 896},
    {"9:16", 768, 1344},
    {"9:21", 640, 1536},
}};

std::string strip_inference_profile(const std::string& model) {
  for (const char* prefix : {"us.", "eu.", "apac.", "global.", "us-gov."}) {
    if (model.rfind(prefix, 0) == 0) return model.substr(std::string(prefix).size());
  }
  return model;
}

bool starts_with(const std::string& text, const std::string& prefix) { return text.rfind(prefix, 0) == 0; }

// Returns true when a Titan or Nova Canvas message reports a content-filter
// block, which arrives as a ValidationException or as the "error" field of
// a 200 response.
bool mentions_content_filter(const std::string& message) {
  const std::string lower = core::to_lower_ascii(message);
  return lower.find("content filter") != std::string::npos || lower.find("blocked by our content") != std::string::npos;
}

// The retry loop's reading of one HTTP response from Bedrock.
struct AttemptOutcome {
  bool retry = false;
  std::optional<std::chrono::milliseconds> retry_after;
  core::Error error;
};

// Maps a Bedrock error response onto the common error vocabulary. The body
// is {"message": "..."}, and x-amzn-ErrorType names the exception, sometimes
// followed by ":" and a namespace URL.
AttemptOutcome classify_error(const OutboundResponse& response, const std::string& backend_name,
                              const std::string& request_id) {
  std::string error_type = response.header("x-amzn-errortype").value_or("");
  if (const auto colon = error_type.find(':'); colon != std::string::npos) error_type.resize(colon);
  std::string message;
  const Json body = Json::parse(response.body, nullptr, false);
  if (body.is_object()) {
    for (const char* key : {"message", "Message"}) {
      if (body.contains(key) && body[key].is_string()) message = body[key].get<std::string>();
    }
  }
  const std::string aws_request_id = response.header("x-amzn-requestid").value_or("-");
  spdlog::warn("backend {}: HTTP {} for request {} (AWS request id {}): type={} message=\"{}\"", backend_name,
               response.status, request_id, aws_request_id, error_type.empty() ? "-" : error_type, message);

  AttemptOutcome outcome;
  outcome.retry_after = parse_retry_after(response.header("retry-after"), std::nullopt);
  const long status = response.status;
  const bool auth_failure = error_type == "AccessDeniedException" || error_type == "UnrecognizedClientException" ||
                            error_type == "InvalidSignatureException" || error_type == "ExpiredTokenException" ||
                            error_type == "IncompleteSignatureException" ||
                            error_type == "MissingAuthenticationTokenException" || status == 401 || status == 403;
  if (error_type == "ValidationException" && mentions_content_filter(message)) {
    outcome.error = {core::ErrorCode::ContentRefused,
                     "the backend refused the prompt under its content policy: " + message, "prompt", 0};
  } else if (error_type == "ServiceQuotaExceededException") {
    outcome.error = core::Error::unavailable("the backend's quota is exhausted; retry later: " + message, 60);
  } else if (error_type == "ThrottlingException" || error_type == "ModelNotReadyException" || status == 429) {
    outcome.retry = true;
    const int seconds = outcome.retry_after ? static_cast<int>((outcome.retry_after->count() + 999) / 1000) : 5;
    outcome.error = core::Error::unavailable("the backend is rate limiting pixelgate; retry later", std::max(1, seconds));
  } else if (auth_failure) {
    outcome.error = core::Error::bad_gateway(
        "the backend rejected pixelgate's credentials (" + (error_type.empty() ? std::to_string(status) : error_type) +
        "); the operator must check the AWS access key, secret key, session token, model access and system clock");
  } else if (error_type == "ResourceNotFoundException" || status == 404) {
    outcome.error = core::Error::bad_gateway("the backend does not know the requested model: " + message);
  } else if (error_type == "ValidationException" || status == 400) {
    outcome.error = core::Error::invalid("the backend rejected the request: " + message);
  } else if (error_type == "ModelTimeoutException" || status == 408) {
    outcome.retry = true;
    outcome.error = {core::ErrorCode::DeadlineExceeded, "the backend's model timed out: " + message, {}, 0};
  } else if (status >= 500 || error_type == "ModelErrorException" || status == 424) {
    outcome.retry = true;
    outcome.error = core::Error::bad_gateway("the backend failed with HTTP " + std::to_string(status) +
                                             (error_type.empty() ? "" : " " + error_type));
  } else {
    outcome.error = core::Error::bad_gateway("the backend returned unexpected HTTP " + std::to_string(status));
  }
  return outcome;
}

core::Result<std::string> decode_image(const Json& item) {
  if (!item.is_string()) return core::Error::bad_gateway("the backend's image is not a base64 string");
  auto decoded = core::base64_decode(item.get<std::string>());
  if (!decoded) return core::Error::bad_gateway("the backend's image is not valid base64");
  return std::move(*decoded);
}

}  // namespace

BedrockModelRules bedrock_model_rules(const std::string& model) {
  const std::string id = strip_inference_profile(model);
  BedrockModelRules rules;
  if (starts_with(id, "amazon.titan-image-generator-")) {
    rules.family = Family::Titan;
    rules.max_prompt_chars = 512;
    rules.max_seed = 2'147'483'646;
  } else if (starts_with(id, "amazon.nova-canvas-")) {
    rules.family = Family::NovaCanvas;
    rules.max_prompt_chars = 1024;
    rules.max_seed = 858'993'459;
  } else if (starts_with(id, "stability.")) {
    rules.family = Family::Stability;
    rules.max_prompt_chars = 10'000;
    rules.max_seed = 4'294'967'294;
  }
  return rules;
}

std::string bedrock_stability_aspect_ratio(int width, int height) {
  for (const auto& ratio : kStabilityRatios) {
    if (ratio.width == width && ratio.height == height) return ratio.name;
  }
  return {};
}

// Source: the Amazon Bedrock pricing page, on-demand image prices as last
// seen in 2025 (NOTE: recalled, not reread here): Titan Image Generator v1 and v2 $0.008 (up to 512x512) and $0.01
// (larger) at standard quality, $0.01 and $0.012 at premium; Nova Canvas
// $0.04 (up to 1024x1024) and $0.06 (up to 2048x2048) at standard, $0.06
// and $0.08 at premium; SD3.5 Large $0.08, Stable Image Ultra $0.14 and
// Stable Image Core $0.04 per image.
double bedrock_list_price(const std::string& model, int width, int height, const std::string& quality) {
  const std::string id = strip_inference_profile(model);
  const bool premium = quality == "premium";
  const long long pixels = static_cast<long long>(width) * height;
  switch (bedrock_model_rules(model).family) {
    case Family::Titan:
      if (pixels <= 512LL * 512) return premium ? 0.01 : 0.008;
      return premium ? 0.012 : 0.01;
    case Family::NovaCanvas:
      if (pixels <= 1024LL * 1024) return premium ? 0.06 : 0.04;
      return premium ? 0.08 : 0.06;
    case Family::Stability:
      if (starts_with(id, "stability.sd3-5-large")) return 0.08;
      if (starts_with(id, "stability.stable-image-ultra")) return 0.14;
      if (starts_with(id, "stability.stable-image-core")) return 0.04;
      return 0.0;
    case Family::Unknown:
      return 0.0;
  }
  return 0.0;
}

namespace {

core::Result<std::unique_ptr<Backend>> make_bedrock(const config::BackendConfig& config) {
  if (config.access_key.empty()) {
    return core::Error::invalid("backends." + config.name + ".access_key_env: the environment variable " +
                                config.access_key.env_name + " is not set or empty");
  }
  if (config.secret_key.empty()) {
    return core::Error::invalid("backends." + config.name + ".secret_key_env: the environment variable " +
                                config.secret_key.env_name + " is not set or empty");
  }
  if (config.region.empty()) {
    return core::Error::invalid("backends." + config.name + ".region: missing; set the AWS region, e.g. \"us-east-1\"");
  }
  if (config.output_format != "png" && config.output_format != "jpeg") {
    return core::Error::invalid("backends." + config.name + ".output_format: Bedrock's Stability models return \"png\" "
                                "or \"jpeg\", got \"" + config.output_format + "\"");
  }
  return std::unique_ptr<Backend>(std::make_unique<BedrockBackend>(config));
}

const bool kRegistered = register_backend_type("bedrock", &make_bedrock);

}  // namespace

BedrockBackend::BedrockBackend(config::BackendConfig config) : config_(std::move(config)) {
  // base_url is "http[s]://authority[/prefix]". The authority is signed as
  // the Host header and sent explicitly, so the two never differ.
  const auto scheme_end = config_.base_url.find("://");
  const std::size_t authority_start = scheme_end == std::string::npos ? 0 : scheme_end + 3;
  const auto path_start = config_.base_url.find('/', authority_start);
  host_ = config_.base_url.substr(authority_start, path_start == std::string::npos ? std::string::npos
                                                                                    : path_start - authority_start);
  if (path_start != std::string::npos) path_prefix_ = config_.base_url.substr(path_start);
}

std::optional<double> BedrockBackend::list_price(const core::GenerationSpec& spec) const {
  const double price = bedrock_list_price(spec.model, spec.width, spec.height, spec.quality);
  if (price > 0) return price;
  return std::nullopt;
}

core::Status BedrockBackend::validate(const core::GenerationSpec& spec) const {
  const BedrockModelRules rules = bedrock_model_rules(spec.model);
  if (rules.family == Family::Unknown) {
    return core::Error::invalid("model \"" + spec.model + "\" is not an image model this adapter supports; use "
                                "amazon.titan-image-generator-v2:0, amazon.nova-canvas-v1:0 or a stability.* model",
                                "model");
  }
  if (rules.family == Family::Titan) {
    const bool listed = std::any_of(kTitanSizes.begin(), kTitanSizes.end(), [&](const auto& size) {
      return size.first == spec.width && size.second == spec.height;
    });
    if (!listed) {
      return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not supported by " + spec.model +
                                      "; use a size from Titan's list, e.g. 1024x1024, 1152x768, 768x1152, "
                                      "1280x768 or 512x512",
                                  "size");
    }
  } else if (rules.family == Family::NovaCanvas) {
    const bool sides = spec.width >= 320 && spec.width <= 4096 && spec.height >= 320 && spec.height <= 4096 &&
                       spec.width % 16 == 0 && spec.height % 16 == 0;
    const bool ratio = spec.width <= 4 * spec.height && spec.height <= 4 * spec.width;
    const bool pixels = static_cast<long long>(spec.width) * spec.height <= 4'194'304LL;
    if (!sides || !ratio || !pixels) {
      return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not supported by " + spec.model +
                                      "; each side must be a multiple of 16 from 320 to 4096, the aspect ratio "
                                      "between 1:4 and 4:1, and the image at most 4194304 pixels (2048x2048)",
                                  "size");
    }
  } else if (bedrock_stability_aspect_ratio(spec.width, spec.height).empty()) {
    std::string choices;
    for (const auto& ratio : kStabilityRatios) choices += (choices.empty() ? "" : ", ") + size_text(ratio.width, ratio.height);
    return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not supported by " + spec.model +
                                    "; Stability models take an aspect ratio, so use one of " + choices,
                                "size");
  }

  const std::size_t prompt_chars = core::count_code_points(spec.prompt);
  if (prompt_chars == 0 && rules.family != Family::Stability) {
    return core::Error::invalid("prompt must not be empty for " + spec.model, "prompt");
  }
  if (prompt_chars > rules.max_prompt_chars) {
    return core::Error::invalid("prompt is longer than the " + std::to_string(rules.max_prompt_chars) +
                                    " characters " + spec.model + " accepts",
                                "prompt");
  }
  if (core::count_code_points(spec.negative_prompt) > rules.max_prompt_chars) {
    return core::Error::invalid("negative prompt is longer than the " + std::to_string(rules.max_prompt_chars) +
                                    " characters " + spec.model + " accepts",
                                "negative_prompt");
  }
  if (!spec.quality.empty()) {
    if (rules.family == Family::Stability) {
      return core::Error::invalid(spec.model + " does not take a quality setting", "quality");
    }
    if (spec.quality != "standard" && spec.quality != "premium") {
      return core::Error::invalid("quality \"" + spec.quality + "\" is not supported by " + spec.model +
                                      "; use standard or premium",
                                  "quality");
    }
  }
  if (!spec.style.empty()) {
    return core::Error::invalid("the bedrock adapter does not send a style; remove \"style\"", "style");
  }
  if (spec.guidance != 0.0 && rules.family != Family::Stability && (spec.guidance < 1.1 || spec.guidance > 10.0)) {
    return core::Error::invalid("guidance " + std::to_string(spec.guidance) + " is outside the range 1.1 to 10 that " +
                                    spec.model + " accepts as cfgScale",
                                "guidance");
  }
  return core::Ok{};
}

std::string BedrockBackend::request_body(const core::GenerationSpec& spec) const {
  const BedrockModelRules rules = bedrock_model_rules(spec.model);
  // Seeds above a model's maximum are folded into its range, so a derived
  // seed (up to 2^32-2) still gives the same image for the same request.
  const std::uint64_t seed = rules.max_seed > 0 ? spec.seed % (rules.max_seed + 1) : spec.seed;
  Json body;
  if (rules.family == Family::Stability) {
    body = {{"prompt", spec.prompt},
            {"aspect_ratio", bedrock_stability_aspect_ratio(spec.width, spec.height)},
            {"seed", seed},
            {"output_format", config_.output_format}};
    if (!spec.negative_prompt.empty()) body["negative_prompt"] = spec.negative_prompt;
    return body.dump();
  }
  Json text_params = {{"text", spec.prompt}};
  // Titan and Nova reject an empty negativeText (minimum length 1).
  if (!spec.negative_prompt.empty()) text_params["negativeText"] = spec.negative_prompt;
  Json config = {{"numberOfImages", 1}, {"width", spec.width}, {"height", spec.height}, {"seed", seed}};
  if (spec.guidance != 0.0) config["cfgScale"] = spec.guidance;
  if (!spec.quality.empty()) config["quality"] = spec.quality;
  body = {{"taskType", "TEXT_IMAGE"}, {"textToImageParams", text_params}, {"imageGenerationConfig", config}};
  return body.dump();
}

std::string BedrockBackend::invoke_url(const std::string& model) const {
  return config_.base_url + "/model/" + core::aws_uri_encode(model, false) + "/invoke";
}

std::vector<std::string> BedrockBackend::signed_headers(const std::string& model, const std::string& body,
                                                        std::chrono::system_clock::time_point time) const {
  core::AwsSigningInput input;
  input.method = "POST";
  input.host = host_;
  input.path = path_prefix_ + "/model/" + core::aws_uri_encode(model, false) + "/invoke";
  input.headers = {{"Content-Type", "application/json"}, {"Accept", "application/json"}};
  input.region = config_.region;
  input.service = "bedrock";
  input.credentials = {config_.access_key.value, config_.secret_key.value, config_.session_token.value};
  input.payload_hash = core::sha256_hex(body);
  input.double_encode_path = true;
  input.time = time;
  const core::AwsSignedRequest signed_request = core::aws_sigv4_sign(input);
  std::vector<std::string> headers = {"Content-Type: application/json", "Accept: application/json"};
  headers.insert(headers.end(), signed_request.headers_to_add.begin(), signed_request.headers_to_add.end());
  return headers;
}

core::Result<GeneratedImage> BedrockBackend::parse_success(const OutboundResponse& response,
                                                           const core::GenerationSpec& spec,
                                                           const GenerateContext& context) const {
  const Json json = Json::parse(response.body, nullptr, false);
  if (!json.is_object()) return core::Error::bad_gateway("the backend's response is not a JSON object");
  const BedrockModelRules rules = bedrock_model_rules(spec.model);

  if (rules.family == Family::Stability && json.contains("finish_reasons") && json["finish_reasons"].is_array() &&
      !json["finish_reasons"].empty() && json["finish_reasons"][0].is_string()) {
    const std::string reason = json["finish_reasons"][0].get<std::string>();
    spdlog::warn("backend {}: request {} finished with \"{}\"", config_.name, context.request_id, reason);
    if (starts_with(reason, "Filter reason")) {
      return core::Error{core::ErrorCode::ContentRefused,
                         "the backend refused the prompt under its content policy (" + reason + ")", "prompt", 0};
    }
    return core::Error::bad_gateway("the backend's model failed: " + reason);
  }
  if (rules.family != Family::Stability && json.contains("error") && json["error"].is_string()) {
    const std::string error = json["error"].get<std::string>();
    spdlog::warn("backend {}: request {} returned error \"{}\"", config_.name, context.request_id, error);
    if (mentions_content_filter(error)) {
      return core::Error{core::ErrorCode::ContentRefused,
                         "the backend refused the prompt under its content policy: " + error, "prompt", 0};
    }
    return core::Error::bad_gateway("the backend reported an error: " + error);
  }
  if (!json.contains("images") || !json["images"].is_array()) {
    return core::Error::bad_gateway("the backend's response is not the expected JSON (no \"images\" array)");
  }
  if (json["images"].empty()) return core::Error::bad_gateway("the backend returned no image (empty \"images\")");

  auto bytes = decode_image(json["images"][0]);
  if (!bytes) return std::move(bytes).error();
  GeneratedImage image;
  image.bytes = std::move(bytes).value();
  image.cost_usd = bedrock_list_price(spec.model, spec.width, spec.height, spec.quality);
  if (auto id = response.header("x-amzn-requestid")) image.provider_request_id = *id;
  return image;
}

core::Result<GeneratedImage> BedrockBackend::generate(const core::GenerationSpec& spec, const GenerateContext& context) {
  OutboundRequest request;
  request.method = "POST";
  request.url = invoke_url(spec.model);
  request.body = request_body(spec);
  request.connect_timeout_ms = config_.connect_timeout_ms;

  const int max_attempts = 1 + config_.max_retries;
  for (int attempt = 1;; ++attempt) {
    const auto left = remaining(context);
    if (left.count() <= 0) {
      return core::Error{core::ErrorCode::DeadlineExceeded, "generation timed out before the backend responded", {}, 0};
    }
    request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.timeout_ms, left.count()));
    // Each attempt is signed again, because AWS rejects a signature more than
    // five minutes away from its own clock.
    request.headers = signed_headers(spec.model, request.body, std::chrono::system_clock::now());

    AttemptOutcome outcome;
    auto response = perform(request);
    if (!response) {
      outcome.retry = true;
      outcome.error = std::move(response).error();
      spdlog::warn("backend {}: attempt {} of {} for request {} failed: {}", config_.name, attempt, max_attempts,
                   context.request_id, outcome.error.message);
    } else if (response->status == 200) {
      auto image = parse_success(*response, spec, context);
      if (image) {
        image->attempts = attempt;
      } else {
        spdlog::warn("backend {}: request {} got an unusable response: {}", config_.name, context.request_id,
                     image.error().message);
      }
      return image;
    } else {
      outcome = classify_error(*response, config_.name, context.request_id);
    }

    if (!outcome.retry || attempt >= max_attempts) return outcome.error;
    if (!sleep_before_retry(config_, context, attempt, max_attempts, outcome.retry_after)) return outcome.error;
  }
}

}  // namespace pixelgate::backends
