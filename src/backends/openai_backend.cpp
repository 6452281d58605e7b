#include "backends/openai_backend.hpp"

#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "backends/http_client.hpp"
#include "backends/registry.hpp"
#include "backends/retry.hpp"
#include "core/hash.hpp"
#include "core/text.hpp"

namespace pixelgate::backends {
namespace {

using Json = nlohmann::json;
using Family = OpenAIModelRules::Family;
using Clock = std::chrono::steady_clock;

std::string size_text(int width, int height) { return std::to_string(width) + "x" + std::to_string(height); }

std::chrono::milliseconds remaining(const GenerateContext& context) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(context.deadline - Clock::now());
}

// The retry loop's reading of one HTTP response from the provider.
struct AttemptOutcome {
  bool retry = false;
  std::optional<std::chrono::milliseconds> retry_after;
  core::Error error;
};

// Maps an OpenAI error response onto the common error vocabulary. OpenAI's error
// body is {"error": {"message", "type", "param", "code"}}.
AttemptOutcome classify_error(const OutboundResponse& response, const std::string& backend_name,
                              const std::string& request_id) {
  std::string provider_message;
  std::string provider_code;
  std::string provider_param;
  const Json body = Json::parse(response.body, nullptr, false);
  if (body.is_object() && body.contains("error") && body["error"].is_object()) {
    const Json& error = body["error"];
    if (error.contains("message") && error["message"].is_string()) provider_message = error["message"];
    if (error.contains("code") && error["code"].is_string()) provider_code = error["code"];
    if (error.contains("param") && error["param"].is_string()) provider_param = error["param"];
  }
  spdlog::warn("backend {}: HTTP {} for request {}: code={} message=\"{}\"", backend_name, response.status,
               request_id, provider_code.empty() ? "-" : provider_code, provider_message);

  AttemptOutcome outcome;
  outcome.retry_after = parse_retry_after(response.header("retry-after"), response.header("retry-after-ms"));
  const long status = response.status;
  if (status == 400 && (provider_code == "content_policy_violation" || provider_code == "moderation_blocked")) {
    outcome.error = {core::ErrorCode::ContentRefused,
                     "the backend refused the prompt under its content policy: " + provider_message, "prompt", 0};
  } else if (status == 400 || status == 422) {
    outcome.error = core::Error::invalid("the backend rejected the request: " + provider_message, provider_param);
  } else if (status == 401 || status == 403) {
    outcome.error = core::Error::bad_gateway("the backend rejected pixelgate's credentials; the operator must check "
                                             "the API key");
  } else if (status == 404) {
    outcome.error = core::Error::bad_gateway("the backend does not know the requested model or route: " +
                                             provider_message);
  } else if (status == 429 && provider_code == "insufficient_quota") {
    outcome.error = core::Error::unavailable("the backend's quota is exhausted; retry later", 60);
  } else if (status == 429) {
    outcome.retry = true;
    const int seconds = outcome.retry_after ? static_cast<int>((outcome.retry_after->count() + 999) / 1000) : 5;
    outcome.error = core::Error::unavailable("the backend is rate limiting pixelgate; retry later", std::max(1, seconds));
  } else if (status >= 500) {
    outcome.retry = true;
    outcome.error = core::Error::bad_gateway("the backend failed with HTTP " + std::to_string(status));
  } else {
    outcome.error = core::Error::bad_gateway("the backend responded with unexpected HTTP " + std::to_string(status));
  }
  return outcome;
}

}  // namespace

OpenAIModelRules openai_model_rules(const std::string& model) {
  OpenAIModelRules rules;
  const bool fixed_size_gpt_image = model == "gpt-image-1" || model.rfind("gpt-image-1-", 0) == 0 ||
                                    model.rfind("gpt-image-1.", 0) == 0 || model == "chatgpt-image-latest";
  if (model.rfind("gpt-image-", 0) == 0 && !fixed_size_gpt_image) {
    rules.family = Family::GptImageFlexible;
    rules.qualities = {"low", "medium", "high", "auto"};
    if (model.rfind("gpt-image-2.5", 0) == 0) rules.qualities.insert(rules.qualities.end(), {"xhigh", "max"});
    rules.max_prompt_chars = 32000;
  } else if (fixed_size_gpt_image) {
    rules.family = Family::GptImage;
    rules.sizes = {{1024, 1024}, {1536, 1024}, {1024, 1536}};
    rules.qualities = {"low", "medium", "high", "auto"};
    rules.max_prompt_chars = 32000;
  } else if (model == "dall-e-3") {
    rules.family = Family::DallE3;
    rules.sizes = {{1024, 1024}, {1792, 1024}, {1024, 1792}};
    rules.qualities = {"standard", "hd"};
    rules.max_prompt_chars = 4000;
  } else if (model == "dall-e-2") {
    rules.family = Family::DallE2;
    rules.sizes = {{256, 256}, {512, 512}, {1024, 1024}};
    rules.max_prompt_chars = 1000;
  }
  return rules;
}

double openai_list_price(const std::string& model, int width, int height, const std::string& quality) {
  const bool square = width == height;
  if (model == "dall-e-2") {
    if (width == 256) return 0.016;
    if (width == 512) return 0.018;
    return 0.020;
  }
  if (model == "dall-e-3") {
    const bool hd = quality == "hd";
    if (square) return hd ? 0.08 : 0.04;
    return hd ? 0.12 : 0.08;
  }
  // "auto" quality is billed like "high" by both GPT image models below.
  const std::string tier = quality.empty() || quality == "auto" ? "high" : quality;
  if (model == "gpt-image-1") {
    if (tier == "low") return square ? 0.011 : 0.016;
    if (tier == "medium") return square ? 0.042 : 0.063;
    return square ? 0.167 : 0.25;
  }
  if (model.rfind("gpt-image-2", 0) == 0) {
    const bool standard = (width == 1024 && height == 1024) || (width == 1536 && height == 1024) ||
                          (width == 1024 && height == 1536);
    double price = 0.211;
    if (tier == "low") price = square ? 0.006 : 0.005;
    else if (tier == "medium") price = square ? 0.053 : 0.041;
    else price = square ? 0.211 : 0.165;
    // NOTE: other sizes are an estimate that scales the 1024x1024 price by
    // area; the provider bills output tokens, which the usage field settles.
    if (!standard) price = price * (static_cast<double>(width) * height) / (1024.0 * 1024.0);
    return price;
  }
  return 0.0;
}

namespace {

core::Result<std::unique_ptr<Backend>> make_openai(const config::BackendConfig& config) {
  if (config.api_key.empty()) {
    return core::Error::invalid("backends." + config.name + ".api_key_env: the environment variable " +
                                config.api_key.env_name + " is not set or empty");
  }
  return std::unique_ptr<Backend>(std::make_unique<OpenAIBackend>(config));
}

const bool kRegistered = register_backend_type("openai", &make_openai);

}  // namespace

OpenAIBackend::OpenAIBackend(config::BackendConfig config) : config_(std::move(config)) {}

std::optional<double> OpenAIBackend::list_price(const core::GenerationSpec& spec) const {
  const double price = openai_list_price(spec.model, spec.width, spec.height, spec.quality);
  if (price > 0) return price;
  return std::nullopt;
}

core::Status OpenAIBackend::validate(const core::GenerationSpec& spec) const {
  const OpenAIModelRules rules = openai_model_rules(spec.model);
  if (rules.family == Family::GptImageFlexible) {
    const bool multiples = spec.width % 16 == 0 && spec.height % 16 == 0;
    const bool ratio = spec.width <= 3 * spec.height && spec.height <= 3 * spec.width;
    const bool bounded = std::max(spec.width, spec.height) <= 3840 && std::min(spec.width, spec.height) <= 2160;
    if (!multiples || !ratio || !bounded) {
      return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not supported by " + spec.model +
                                      "; width and height must be multiples of 16, the aspect ratio between 1:3 "
                                      "and 3:1, and the size at most 3840x2160",
                                  "size");
    }
  }
  if (!rules.sizes.empty()) {
    bool allowed = false;
    std::string choices;
    for (const auto& [w, h] : rules.sizes) {
      allowed = allowed || (w == spec.width && h == spec.height);
      choices += (choices.empty() ? "" : ", ") + size_text(w, h);
    }
    if (!allowed) {
      return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not supported by " +
                                      spec.model + "; use one of " + choices,
                                  "size");
    }
  }
  if (!spec.quality.empty()) {
    if (rules.qualities.empty() && rules.family != Family::Compatible) {
      return core::Error::invalid(spec.model + " does not take a quality setting", "quality");
    }
    if (!rules.qualities.empty() &&
        std::find(rules.qualities.begin(), rules.qualities.end(), spec.quality) == rules.qualities.end()) {
      std::string choices;
      for (const auto& q : rules.qualities) choices += (choices.empty() ? "" : ", ") + q;
      return core::Error::invalid("quality \"" + spec.quality + "\" is not supported by " + spec.model +
                                      "; use one of " + choices,
                                  "quality");
    }
  }
  if (!spec.style.empty()) {
    if (rules.family != Family::DallE3 && rules.family != Family::Compatible) {
      return core::Error::invalid(spec.model + " does not take a style", "style");
    }
    if (spec.style != "vivid" && spec.style != "natural") {
      return core::Error::invalid("style must be \"vivid\" or \"natural\", got \"" + spec.style + "\"", "style");
    }
  }
  if (rules.max_prompt_chars > 0 && core::count_code_points(spec.prompt) > rules.max_prompt_chars) {
    return core::Error::invalid("prompt is longer than the " + std::to_string(rules.max_prompt_chars) +
                                    " characters " + spec.model + " accepts",
                                "prompt");
  }
  return core::Ok{};
}

std::string OpenAIBackend::request_body(const core::GenerationSpec& spec) const {
  const OpenAIModelRules rules = openai_model_rules(spec.model);
  Json body = {{"model", spec.model}, {"prompt", spec.prompt}, {"n", 1}, {"size", size_text(spec.width, spec.height)}};
  if (!spec.quality.empty()) body["quality"] = spec.quality;
  if (!spec.style.empty()) body["style"] = spec.style;
  // The gpt-image models always respond with base64 and reject
  // response_format; the others default to URLs, so ask for base64.
  if (rules.family == Family::GptImage || rules.family == Family::GptImageFlexible) {
    body["output_format"] = "png";
  } else {
    body["response_format"] = "b64_json";
  }
  return body.dump();
}

core::Result<std::string> OpenAIBackend::download(const std::string& url, const GenerateContext& context) {
  if (url.rfind("https://", 0) != 0 && url.rfind("http://", 0) != 0) {
    return core::Error::bad_gateway("the backend returned an image URL with an unsupported scheme");
  }
  OutboundRequest request;
  request.url = url;
  request.connect_timeout_ms = config_.connect_timeout_ms;
  request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.download_timeout_ms, remaining(context).count()));
  if (request.timeout_ms <= 0) return core::Error{core::ErrorCode::DeadlineExceeded, "generation timed out", {}, 0};
  auto response = perform(request);
  if (!response) return std::move(response).error();
  if (response->status != 200) {
    spdlog::warn("backend {}: downloading the image for request {} failed with HTTP {}", config_.name,
                 context.request_id, response->status);
    return core::Error::bad_gateway("downloading the generated image failed with HTTP " +
                                    std::to_string(response->status) + " (an expired URL answers 403)");
  }
  return std::move(response->body);
}

core::Result<GeneratedImage> OpenAIBackend::parse_success(const std::string& body, const GenerateContext& context,
                                                          const core::GenerationSpec& spec) {
  const Json json = Json::parse(body, nullptr, false);
  if (!json.is_object() || !json.contains("data") || !json["data"].is_array()) {
    return core::Error::bad_gateway("the backend's response is not the expected JSON (no \"data\" array)");
  }
  if (json["data"].empty()) return core::Error::bad_gateway("the backend returned no image (empty \"data\")");
  const Json& item = json["data"][0];

  GeneratedImage image;
  if (item.contains("b64_json") && item["b64_json"].is_string()) {
    auto decoded = core::base64_decode(item["b64_json"].get<std::string>());
    if (!decoded) return core::Error::bad_gateway("the backend's b64_json is not valid base64");
    image.bytes = std::move(*decoded);
  } else if (item.contains("url") && item["url"].is_string()) {
    // Provider URLs expire (OpenAI's after an hour), so the bytes are fetched
    // now and the URL is never passed on.
    auto bytes = download(item["url"].get<std::string>(), context);
    if (!bytes) return std::move(bytes).error();
    image.bytes = std::move(bytes).value();
  } else {
    return core::Error::bad_gateway("the backend's response has neither b64_json nor url");
  }
  if (item.contains("revised_prompt") && item["revised_prompt"].is_string()) image.revised_prompt = item["revised_prompt"];

  image.cost_usd = openai_list_price(spec.model, spec.width, spec.height, spec.quality);
  // GPT image responses report token usage. Text input costs $5 per million
  // tokens. Image output costs $40 per million for gpt-image-1 and $30 for
  // gpt-image-2 (OpenAI's price list at each model's launch).
  const double output_rate = spec.model == "gpt-image-1" ? 40e-6 : spec.model.rfind("gpt-image-2", 0) == 0 ? 30e-6 : 0;
  if (output_rate > 0 && json.contains("usage") && json["usage"].is_object()) {
    const Json& usage = json["usage"];
    const double input = usage.value("input_tokens", 0.0);
    const double output = usage.value("output_tokens", 0.0);
    if (input + output > 0) image.cost_usd = input * 5e-6 + output * output_rate;
  }
  return image;
}

core::Result<GeneratedImage> OpenAIBackend::generate(const core::GenerationSpec& spec, const GenerateContext& context) {
  OutboundRequest request;
  request.method = "POST";
  request.url = config_.base_url + "/images/generations";
  request.headers = {"Content-Type: application/json", "Accept: application/json",
                     "Authorization: Bearer " + config_.api_key.value};
  request.body = request_body(spec);
  request.connect_timeout_ms = config_.connect_timeout_ms;

  const int max_attempts = 1 + config_.max_retries;
  for (int attempt = 1;; ++attempt) {
    const auto left = remaining(context);
    if (left.count() <= 0) {
      return core::Error{core::ErrorCode::DeadlineExceeded, "generation timed out before the backend responded", {}, 0};
    }
    request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.timeout_ms, left.count()));

    AttemptOutcome outcome;
    auto response = perform(request);
    if (!response) {
      outcome.retry = true;
      outcome.error = std::move(response).error();
      spdlog::warn("backend {}: attempt {} of {} for request {} failed: {}", config_.name, attempt, max_attempts,
                   context.request_id, outcome.error.message);
    } else if (response->status == 200) {
      auto image = parse_success(response->body, context, spec);
      if (image) {
        image->attempts = attempt;
        if (auto id = response->header("x-request-id")) image->provider_request_id = *id;
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
