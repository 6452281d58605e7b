#include "backends/stability_backend.hpp"

#include <algorithm>
#include <array>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "backends/registry.hpp"
#include "backends/retry.hpp"
#include "core/hash.hpp"
#include "core/text.hpp"

namespace pixelgate::backends {
namespace {

using Json = nlohmann::json;
using Endpoint = StabilityModelRules::Endpoint;
using Clock = std::chrono::steady_clock;

// Limits from the v2beta API reference: prompt and negative_prompt take at
// most 10000 characters, and seed is a number in [0, 4294967294].
constexpr std::size_t kMaxPromptChars = 10000;
constexpr std::uint64_t kMaxSeed = 4294967294u;

// The aspect_ratio enum of all three endpoints, as width and height terms.
struct Ratio {
  const char* text;
  int width;
  int height;
};
constexpr std::array<Ratio, 9> kRatios = {{{"16:9", 16, 9},
                                           {"1:1", 1, 1},
                                           {"21:9", 21, 9},
                                           {"2:3", 2, 3},
                                           {"3:2", 3, 2},
                                           {"4:5", 4, 5},
                                           {"5:4", 5, 4},
                                           {"9:16", 9, 16},
                                           {"9:21", 9, 21}}};

// Core's style_preset enum.
constexpr std::array<const char*, 17> kStylePresets = {
    "3d-model",   "analog-film", "anime",    "cinematic",         "comic-book", "digital-art",
    "enhance",    "fantasy-art", "isometric", "line-art",         "low-poly",   "modeling-compound",
    "neon-punk",  "origami",     "photographic", "pixel-art",     "tile-texture"};

std::string size_text(int width, int height) { return std::to_string(width) + "x" + std::to_string(height); }

std::chrono::milliseconds remaining(const GenerateContext& context) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(context.deadline - Clock::now());
}

std::string lower(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// Returns the field that a Stability error message starts with, as "prompt"
// in "prompt: is required", or an empty string.
std::string field_of(const std::string& message) {
  const auto colon = message.find(':');
  if (colon == std::string::npos || colon == 0 || colon > 40) return {};
  const std::string field = message.substr(0, colon);
  const bool identifier = std::all_of(field.begin(), field.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '_';
  });
  return identifier ? field : std::string{};
}

core::Result<std::unique_ptr<Backend>> make_stability(const config::BackendConfig& config) {
  if (config.api_key.empty()) {
    return core::Error::invalid("backends." + config.name + ".api_key_env: the environment variable " +
                                config.api_key.env_name + " is not set or empty; set it to a Stability API key");
  }
  if (stability_model_rules(config.model).endpoint == Endpoint::Unknown) {
    return core::Error::invalid("backends." + config.name + ".model: \"" + config.model +
                                "\" is not a Stability model pixelgate supports; use ultra, core, sd3.5-large, "
                                "sd3.5-large-turbo, sd3.5-medium, sd3-large, sd3-large-turbo or sd3-medium");
  }
  return std::unique_ptr<Backend>(std::make_unique<StabilityBackend>(config));
}

const bool kRegistered = register_backend_type("stability", &make_stability);

}  // namespace

StabilityModelRules stability_model_rules(const std::string& model) {
  StabilityModelRules rules;
  // Credits per successful image from the API reference's "Credits" sections:
  // Ultra 8, Core 3, SD 3.5 and 3.0 Large 6.5, Large Turbo 4, Medium 3.5.
  if (model == "ultra") {
    rules.endpoint = Endpoint::Ultra;
    rules.path = "/v2beta/stable-image/generate/ultra";
    rules.negative_prompt = true;
    rules.credits_tenths = 80;
  } else if (model == "core") {
    rules.endpoint = Endpoint::Core;
    rules.path = "/v2beta/stable-image/generate/core";
    rules.negative_prompt = true;
    rules.style_preset = true;
    rules.credits_tenths = 30;
  } else if (model == "sd3.5-large" || model == "sd3-large" || model == "sd3.5-large-turbo" ||
             model == "sd3-large-turbo" || model == "sd3.5-medium" || model == "sd3-medium") {
    rules.endpoint = Endpoint::SD3;
    rules.path = "/v2beta/stable-image/generate/sd3";
    rules.sd3_model = model;
    const bool turbo = model.find("turbo") != std::string::npos;
    // Copies of the reference note that negative_prompt does not work with
    // the Large Turbo models, so it is never sent to them.
    rules.negative_prompt = !turbo;
    rules.credits_tenths = turbo ? 40 : model.find("medium") != std::string::npos ? 35 : 65;
  }
  return rules;
}

std::string stability_aspect_ratio(int width, int height) {
  if (width <= 0 || height <= 0) return {};
  for (const Ratio& ratio : kRatios) {
    if (static_cast<long long>(width) * ratio.height == static_cast<long long>(height) * ratio.width) return ratio.text;
  }
  return {};
}

std::optional<std::pair<int, int>> stability_documented_size(Endpoint endpoint, const std::string& ratio) {
  // The reference states only "1 megapixel, default resolution 1024x1024" for
  // Ultra and SD3, where the default aspect ratio is 1:1. It gives no pixel
  // size for the other ratios, nor any for Core ("1.5 megapixels"), and
  // pixelgate rejects an image whose size differs from the spec's.
  if ((endpoint == Endpoint::Ultra || endpoint == Endpoint::SD3) && ratio == "1:1") {
    return std::make_pair(1024, 1024);
  }
  return std::nullopt;
}

core::Result<StabilityAnswer> parse_stability_answer(const OutboundResponse& response) {
  const std::string content_type = lower(response.header("content-type").value_or(""));
  StabilityAnswer answer;
  if (content_type.rfind("application/json", 0) == 0) {
    const Json json = Json::parse(response.body, nullptr, false);
    if (!json.is_object()) return core::Error::bad_gateway("the backend's JSON response is not a JSON object");
    if (json.contains("finish_reason") && json["finish_reason"].is_string()) answer.finish_reason = json["finish_reason"];
    if (json.contains("seed") && json["seed"].is_number_integer()) answer.seed = std::to_string(json["seed"].get<std::int64_t>());
    if (!json.contains("image") || !json["image"].is_string()) {
      return core::Error::bad_gateway("the backend's JSON response has no \"image\" string");
    }
    auto decoded = core::base64_decode(json["image"].get<std::string>());
    if (!decoded) return core::Error::bad_gateway("the backend's \"image\" field is not valid base64");
    answer.bytes = std::move(*decoded);
  } else if (content_type.rfind("image/", 0) == 0) {
    answer.finish_reason = response.header("finish-reason").value_or("");
    answer.seed = response.header("seed").value_or("");
    answer.bytes = response.body;
  } else {
    return core::Error::bad_gateway("the backend returned 200 with content type \"" + content_type +
                                    "\" instead of an image or JSON");
  }
  if (answer.bytes.empty()) return core::Error::bad_gateway("the backend returned 200 with an empty image");
  return answer;
}

StabilityFailure classify_stability_error(const OutboundResponse& response, const std::string& backend_name,
                                          const std::string& request_id) {
  // The reference's error body is {"id", "name", "errors": [strings]}.
  std::string provider_id;
  std::string provider_name;
  std::string provider_message;
  std::string param;
  const Json body = Json::parse(response.body, nullptr, false);
  if (body.is_object()) {
    if (body.contains("id") && body["id"].is_string()) provider_id = body["id"];
    if (body.contains("name") && body["name"].is_string()) provider_name = body["name"];
    if (body.contains("errors") && body["errors"].is_array()) {
      for (const Json& item : body["errors"]) {
        if (!item.is_string()) continue;
        const std::string text = item.get<std::string>();
        if (param.empty()) param = field_of(text);
        provider_message += (provider_message.empty() ? "" : "; ") + text;
      }
    }
  }
  spdlog::warn("backend {}: HTTP {} for request {}: id={} name={} errors=\"{}\"", backend_name, response.status,
               request_id, provider_id.empty() ? "-" : provider_id, provider_name.empty() ? "-" : provider_name,
               provider_message);
  const std::string detail = provider_message.empty() ? "no details given" : provider_message;

  StabilityFailure failure;
  failure.retry_after = parse_retry_after(response.header("retry-after"), std::nullopt);
  const long status = response.status;
  if (status == 403 && (provider_name == "content_moderation" || provider_name.empty())) {
    failure.error = {core::ErrorCode::ContentRefused,
                     "the backend refused the request under its content moderation: " + detail, "prompt", 0};
  } else if (status == 401 || status == 403) {
    failure.error = core::Error::bad_gateway("the backend rejected pixelgate's credentials; the operator must check "
                                             "the API key");
  } else if (status == 402) {
    failure.error = core::Error::unavailable("the backend's quota is exhausted; the operator must buy credits, "
                                             "then retry later",
                                             60);
  } else if (status == 400 || status == 422) {
    failure.error = core::Error::invalid("the backend rejected the request: " + detail, param);
  } else if (status == 413) {
    failure.error = core::Error::invalid("the request is larger than the backend's 10 MiB limit; shorten the prompt",
                                         "prompt");
  } else if (status == 404) {
    failure.error = core::Error::bad_gateway("the backend does not know the requested route; the operator must "
                                             "check base_url: " + detail);
  } else if (status == 429) {
    failure.retry = true;
    // Per the reference, a client over the rate limit is locked out for 60 seconds.
    const int seconds = failure.retry_after ? static_cast<int>((failure.retry_after->count() + 999) / 1000) : 60;
    failure.error = core::Error::unavailable("the backend is rate limiting pixelgate; retry later", std::max(1, seconds));
  } else if (status >= 500) {
    failure.retry = true;
    failure.error = core::Error::bad_gateway("the backend failed with HTTP " + std::to_string(status) + ": " + detail);
  } else {
    failure.error = core::Error::bad_gateway("the backend returned unexpected HTTP " + std::to_string(status));
  }
  return failure;
}

StabilityBackend::StabilityBackend(config::BackendConfig config) : config_(std::move(config)) {}

bool StabilityBackend::supports_negative_prompt() const {
  return stability_model_rules(config_.model).negative_prompt;
}

std::optional<double> StabilityBackend::list_price(const core::GenerationSpec& spec) const {
  const StabilityModelRules rules = stability_model_rules(spec.model);
  if (rules.credits_tenths <= 0) return std::nullopt;
  // One credit is US$0.01 (Stability's pricing page, as quoted in June 2026).
  return rules.credits_tenths / 1000.0;
}

core::Status StabilityBackend::validate(const core::GenerationSpec& spec) const {
  const StabilityModelRules rules = stability_model_rules(spec.model);
  if (rules.endpoint == Endpoint::Unknown) {
    return core::Error::invalid("model \"" + spec.model + "\" is not a Stability model pixelgate supports; use ultra, "
                                    "core, sd3.5-large, sd3.5-large-turbo, sd3.5-medium, sd3-large, "
                                    "sd3-large-turbo or sd3-medium",
                                "model");
  }
  const std::size_t prompt_chars = core::count_code_points(spec.prompt);
  if (prompt_chars == 0) return core::Error::invalid("prompt is empty; Stability needs at least 1 character", "prompt");
  if (prompt_chars > kMaxPromptChars) {
    return core::Error::invalid("prompt is longer than the 10000 characters Stability accepts", "prompt");
  }
  if (!spec.negative_prompt.empty()) {
    if (!rules.negative_prompt) {
      return core::Error::invalid(spec.model + " does not take a negative prompt; remove it or use another model",
                                  "negative_prompt");
    }
    if (core::count_code_points(spec.negative_prompt) > kMaxPromptChars) {
      return core::Error::invalid("negative_prompt is longer than the 10000 characters Stability accepts",
                                  "negative_prompt");
    }
  }
  const std::string ratio = stability_aspect_ratio(spec.width, spec.height);
  if (ratio.empty()) {
    return core::Error::invalid("size " + size_text(spec.width, spec.height) +
                                    " has no aspect ratio Stability offers; width:height must be exactly one of "
                                    "16:9, 1:1, 21:9, 2:3, 3:2, 4:5, 5:4, 9:16 or 9:21",
                                "size");
  }
  const auto documented = stability_documented_size(rules.endpoint, ratio);
  if (!documented) {
    return core::Error::invalid("Stability does not document the pixel size " + spec.model + " returns for aspect ratio " +
                                    ratio + ", so pixelgate cannot promise " + size_text(spec.width, spec.height) +
                                    (rules.endpoint == Endpoint::Core ? "; use ultra or an sd3 model at 1024x1024"
                                                                      : "; use 1024x1024"),
                                "size");
  }
  if (documented->first != spec.width || documented->second != spec.height) {
    return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not what " + spec.model +
                                    " returns for aspect ratio " + ratio + "; use " +
                                    size_text(documented->first, documented->second),
                                "size");
  }
  if (spec.seed > kMaxSeed) {
    return core::Error::invalid("seed " + std::to_string(spec.seed) + " is above Stability's maximum of 4294967294",
                                "seed");
  }
  if (spec.steps != 0) return core::Error::invalid("Stability's generate endpoints do not take steps", "steps");
  if (spec.guidance != 0.0) {
    return core::Error::invalid("pixelgate does not send guidance to Stability; remove it", "guidance");
  }
  if (!spec.sampler.empty()) return core::Error::invalid("Stability's generate endpoints do not take a sampler", "sampler");
  if (!spec.quality.empty()) return core::Error::invalid("Stability's generate endpoints do not take a quality", "quality");
  if (!spec.style.empty()) {
    if (!rules.style_preset) return core::Error::invalid(spec.model + " does not take a style preset", "style");
    if (std::find_if(kStylePresets.begin(), kStylePresets.end(),
                     [&](const char* preset) { return spec.style == preset; }) == kStylePresets.end()) {
      return core::Error::invalid("style \"" + spec.style + "\" is not one of Stability's style presets, such as "
                                      "photographic, anime or digital-art",
                                  "style");
    }
  }
  return core::Ok{};
}

OutboundRequest StabilityBackend::build_request(const core::GenerationSpec& spec) const {
  const StabilityModelRules rules = stability_model_rules(spec.model);
  OutboundRequest request;
  request.method = "POST";
  request.url = config_.base_url + rules.path;
  // With image/* the response body is the image itself, a quarter smaller than base64.
  request.headers = {"Authorization: Bearer " + config_.api_key.value, "Accept: image/*"};
  request.multipart.push_back({"prompt", spec.prompt, {}, {}});
  if (!spec.negative_prompt.empty()) request.multipart.push_back({"negative_prompt", spec.negative_prompt, {}, {}});
  request.multipart.push_back({"aspect_ratio", stability_aspect_ratio(spec.width, spec.height), {}, {}});
  // The resolver draws the seed for ?seed=random too, so it is always sent.
  // Stability reads seed 0 as "pick one at random".
  request.multipart.push_back({"seed", std::to_string(spec.seed), {}, {}});
  // PNG always: the pipeline probes and stores lossless bytes.
  request.multipart.push_back({"output_format", "png", {}, {}});
  if (!rules.sd3_model.empty()) request.multipart.push_back({"model", rules.sd3_model, {}, {}});
  if (!spec.style.empty()) request.multipart.push_back({"style_preset", spec.style, {}, {}});
  request.connect_timeout_ms = config_.connect_timeout_ms;
  return request;
}

core::Result<GeneratedImage> StabilityBackend::generate(const core::GenerationSpec& spec,
                                                        const GenerateContext& context) {
  OutboundRequest request = build_request(spec);
  const StabilityModelRules rules = stability_model_rules(spec.model);
  const int max_attempts = 1 + std::max(0, config_.max_retries);
  for (int attempt = 1;; ++attempt) {
    const auto left = remaining(context);
    if (left.count() <= 0) {
      spdlog::warn("backend {}: request {} passed its deadline before attempt {}", config_.name, context.request_id,
                   attempt);
      return core::Error{core::ErrorCode::DeadlineExceeded, "generation timed out before the backend responded", {}, 0};
    }
    request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.timeout_ms, left.count()));

    StabilityFailure failure;
    auto response = perform(request);
    if (!response) {
      core::Error error = std::move(response).error();
      spdlog::warn("backend {}: attempt {} of {} for request {} failed: {}", config_.name, attempt, max_attempts,
                   context.request_id, error.message);
      // A timed-out call may still finish and be billed at Stability, and the
      // API has no idempotency key, so only a failed connection is retried.
      if (error.code != core::ErrorCode::Unavailable) return error;
      failure.retry = true;
      failure.error = std::move(error);
    } else if (response->status == 200) {
      auto answer = parse_stability_answer(*response);
      if (!answer) {
        spdlog::warn("backend {}: unusable response for request {}: {}", config_.name, context.request_id,
                     answer.error().message);
        return std::move(answer).error();
      }
      if (answer->finish_reason == "CONTENT_FILTERED") {
        spdlog::warn("backend {}: request {} was filtered by the backend's content moderation", config_.name,
                     context.request_id);
        return core::Error{core::ErrorCode::ContentRefused,
                           "the backend's content moderation filtered the generated image; change the prompt",
                           "prompt", 0};
      }
      if (!answer->finish_reason.empty() && answer->finish_reason != "SUCCESS") {
        spdlog::warn("backend {}: request {} finished with reason {}", config_.name, context.request_id,
                     answer->finish_reason);
        return core::Error::bad_gateway("the backend finished with reason \"" + answer->finish_reason +
                                        "\" instead of SUCCESS");
      }
      GeneratedImage image;
      image.bytes = std::move(answer->bytes);
      image.attempts = attempt;
      image.cost_usd = rules.credits_tenths / 1000.0;
      return image;
    } else {
      failure = classify_stability_error(*response, config_.name, context.request_id);
    }

    if (!failure.retry || attempt >= max_attempts) return failure.error;
    if (!sleep_before_retry(config_, context, attempt, max_attempts, failure.retry_after)) return failure.error;
  }
}

}  // namespace pixelgate::backends
