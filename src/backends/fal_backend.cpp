#include "backends/fal_backend.hpp"

#include <algorithm>
#include <cmath>
#include <thread>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "backends/http_client.hpp"
#include "backends/registry.hpp"
#include "backends/retry.hpp"
#include "core/text.hpp"

namespace pixelgate::backends {
namespace {

using Json = nlohmann::json;
using Family = FalModelRules::Family;
using Clock = std::chrono::steady_clock;

// A cancel is sent after the deadline has passed, so it gets a short budget of
// its own instead of the request's.
constexpr int kCancelTimeoutMs = 2'000;
constexpr std::size_t kMaxJsonBytes = 4 * 1024 * 1024;
// The largest edge fal's ImageSize schema accepts for FLUX models.
constexpr int kMaxEdge = 14142;

std::chrono::milliseconds remaining(const GenerateContext& context) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(context.deadline - Clock::now());
}

core::Error deadline_error(const std::string& what) {
  return core::Error{core::ErrorCode::DeadlineExceeded, "generation timed out " + what, {}, 0};
}

std::string size_text(int width, int height) { return std::to_string(width) + "x" + std::to_string(height); }

// Request ids are UUIDs. Any other id in a response is rejected before it
// becomes part of a URL.
bool is_valid_request_id(const std::string& id) {
  return !id.empty() && id.size() <= 128 && std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  });
}

struct AttemptOutcome {
  bool retry = false;
  std::optional<std::chrono::milliseconds> retry_after;
  core::Error error;
};

// Maps a fal error response onto the common vocabulary. fal returns
// {"detail": "text"}, and 422 validation errors return
// {"detail": [{"loc": ["body", "field"], "msg", "type"}]}.
AttemptOutcome classify_error(const OutboundResponse& response, const std::string& backend_name,
                              const std::string& request_id) {
  std::string detail;
  std::string param;
  const Json body = Json::parse(response.body, nullptr, false);
  if (body.is_object() && body.contains("detail")) {
    const Json& value = body["detail"];
    if (value.is_string()) {
      detail = value.get<std::string>();
    } else if (value.is_array() && !value.empty() && value[0].is_object()) {
      const Json& first = value[0];
      if (first.contains("msg") && first["msg"].is_string()) detail = first["msg"];
      if (first.contains("loc") && first["loc"].is_array() && !first["loc"].empty() && first["loc"].back().is_string()) {
        param = first["loc"].back().get<std::string>();
      }
    }
  }
  spdlog::warn("backend {}: HTTP {} for request {}: detail=\"{}\"", backend_name, response.status, request_id, detail);

  AttemptOutcome outcome;
  outcome.retry_after = parse_retry_after(response.header("retry-after"), std::nullopt);
  const long status = response.status;
  const std::string lower = core::to_lower_ascii(detail);
  if (status == 400 || status == 422) {
    outcome.error = core::Error::invalid("the backend rejected the request: " + detail, param);
  } else if (status == 403 && (lower.find("balance") != std::string::npos || lower.find("locked") != std::string::npos)) {
    // fal locks an account whose balance is exhausted and returns 403.
    outcome.error = core::Error::unavailable("the backend's quota is exhausted; retry later", 60);
  } else if (status == 401 || status == 403) {
    outcome.error = core::Error::bad_gateway("the backend rejected pixelgate's credentials; the operator must check "
                                             "the API key");
  } else if (status == 404) {
    outcome.error = core::Error::bad_gateway("the backend does not know the requested model or request: " + detail);
  } else if (status == 429) {
    outcome.retry = true;
    const int seconds = outcome.retry_after ? static_cast<int>((outcome.retry_after->count() + 999) / 1000) : 5;
    outcome.error = core::Error::unavailable("the backend is rate limiting pixelgate; retry later", std::max(1, seconds));
  } else if (status >= 500) {
    outcome.retry = true;
    outcome.error = core::Error::bad_gateway("the backend failed with HTTP " + std::to_string(status));
  } else {
    outcome.error = core::Error::bad_gateway("the backend returned unexpected HTTP " + std::to_string(status));
  }
  return outcome;
}

// fal's image_size presets, from the ImageSize enum of the FLUX models' API
// schema.
const std::vector<std::pair<std::string, std::pair<int, int>>>& presets() {
  static const std::vector<std::pair<std::string, std::pair<int, int>>> kPresets = {
      {"square_hd", {1024, 1024}},     {"square", {512, 512}},          {"portrait_4_3", {768, 1024}},
      {"portrait_16_9", {576, 1024}}, {"landscape_4_3", {1024, 768}}, {"landscape_16_9", {1024, 576}}};
  return kPresets;
}

}  // namespace

FalModelRules fal_model_rules(const std::string& model) {
  FalModelRules rules;
  if (model == "fal-ai/flux/schnell") {
    rules.family = Family::FluxSchnell;
    rules.max_steps = 12;
  } else if (model == "fal-ai/flux/dev") {
    rules.family = Family::FluxDev;
    rules.max_steps = 50;
  }
  return rules;
}

std::string fal_image_size_preset(int width, int height) {
  for (const auto& [name, size] : presets()) {
    if (size.first == width && size.second == height) return name;
  }
  return "";
}

std::string fal_queue_app(const std::string& model) {
  const auto first = model.find('/');
  if (first == std::string::npos) return model;
  const auto second = model.find('/', first + 1);
  return second == std::string::npos ? model : model.substr(0, second);
}

namespace {

core::Result<std::unique_ptr<Backend>> make_fal(const config::BackendConfig& config) {
  if (config.api_key.empty()) {
    return core::Error::invalid("backends." + config.name + ".api_key_env: the environment variable " +
                                config.api_key.env_name + " is not set or empty; set it to a fal API key");
  }
  if (config.model.empty() || config.model.find('/') == std::string::npos) {
    return core::Error::invalid("backends." + config.name + ".model: set it to a fal model id such as "
                                "\"fal-ai/flux/schnell\" (got \"" + config.model + "\")");
  }
  if (config.output_format == "webp") {
    return core::Error::invalid("backends." + config.name +
                                ".output_format: fal's FLUX models produce \"png\" or \"jpeg\", not \"webp\"");
  }
  return std::unique_ptr<Backend>(std::make_unique<FalBackend>(config));
}

const bool kRegistered = register_backend_type("fal", &make_fal);

}  // namespace

FalBackend::FalBackend(config::BackendConfig config) : config_(std::move(config)) {}

bool FalBackend::supports_negative_prompt() const { return fal_model_rules(config_.model).family == Family::Generic; }

std::optional<double> FalBackend::list_price(const core::GenerationSpec& spec) const {
  // fal prices FLUX per output megapixel, rounded up: $0.003 for schnell and
  // $0.025 for dev (fal.ai/pricing as quoted by third-party price
  // comparisons, May 2026). Those quotes bill 1024x1024 as one megapixel, so
  // a megapixel here is 1024 * 1024 pixels.
  const double megapixels = std::ceil(static_cast<double>(spec.width) * spec.height / (1024.0 * 1024.0));
  switch (fal_model_rules(spec.model).family) {
    case Family::FluxSchnell: return 0.003 * megapixels;
    case Family::FluxDev: return 0.025 * megapixels;
    case Family::Generic: return std::nullopt;
  }
  return std::nullopt;
}

core::Status FalBackend::validate(const core::GenerationSpec& spec) const {
  const FalModelRules rules = fal_model_rules(spec.model);
  if (spec.width <= 0 || spec.height <= 0 || spec.width > kMaxEdge || spec.height > kMaxEdge) {
    return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not supported; fal takes edges "
                                    "from 1 to " + std::to_string(kMaxEdge) + " pixels",
                                "size");
  }
  if (!spec.quality.empty()) return core::Error::invalid(spec.model + " on fal does not take a quality", "quality");
  if (!spec.style.empty()) return core::Error::invalid(spec.model + " on fal does not take a style", "style");
  if (rules.family == Family::Generic) return core::Ok{};

  // FLUX works on 16-pixel patches, so other edges would come back rounded
  // and no longer match the requested size.
  if (fal_image_size_preset(spec.width, spec.height).empty() && (spec.width % 16 != 0 || spec.height % 16 != 0)) {
    return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not supported by " + spec.model +
                                    "; width and height must be multiples of 16",
                                "size");
  }
  if (!spec.negative_prompt.empty()) {
    return core::Error::invalid(spec.model + " does not take a negative prompt", "negative_prompt");
  }
  if (!spec.sampler.empty()) return core::Error::invalid(spec.model + " does not take a sampler", "sampler");
  if (spec.steps < 0 || spec.steps > rules.max_steps) {
    return core::Error::invalid("steps must be between 1 and " + std::to_string(rules.max_steps) + " for " +
                                    spec.model,
                                "steps");
  }
  if (rules.family == Family::FluxSchnell && spec.guidance != 0.0) {
    return core::Error::invalid(spec.model + " does not take a guidance", "guidance");
  }
  if (rules.family == Family::FluxDev && (spec.guidance < 0.0 || spec.guidance > 20.0)) {
    return core::Error::invalid("guidance must be between 1 and 20 for " + spec.model, "guidance");
  }
  return core::Ok{};
}

std::string FalBackend::request_body(const core::GenerationSpec& spec) const {
  const FalModelRules rules = fal_model_rules(spec.model);
  Json body = {{"prompt", spec.prompt}, {"num_images", 1}, {"seed", spec.seed}, {"enable_safety_checker", true}};
  const std::string preset = fal_image_size_preset(spec.width, spec.height);
  if (!preset.empty()) {
    body["image_size"] = preset;
  } else {
    body["image_size"] = {{"width", spec.width}, {"height", spec.height}};
  }
  body["output_format"] = config_.output_format == "jpeg" ? "jpeg" : "png";
  if (spec.steps > 0) body["num_inference_steps"] = spec.steps;
  if (rules.family != Family::FluxSchnell && spec.guidance > 0.0) body["guidance_scale"] = spec.guidance;
  if (rules.family == Family::Generic && !spec.negative_prompt.empty()) body["negative_prompt"] = spec.negative_prompt;
  return body.dump();
}

std::vector<std::string> FalBackend::auth_headers() const {
  return {"Accept: application/json", "Authorization: Key " + config_.api_key.value};
}

core::Result<std::string> FalBackend::download(const std::string& url, const GenerateContext& context) {
  if (url.rfind("https://", 0) != 0 && url.rfind("http://", 0) != 0) {
    return core::Error::bad_gateway("the backend returned an image URL with an unsupported scheme");
  }
  OutboundRequest request;
  request.url = url;
  request.connect_timeout_ms = config_.connect_timeout_ms;
  request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.download_timeout_ms, remaining(context).count()));
  if (request.timeout_ms <= 0) return deadline_error("before the image could be downloaded");
  auto response = perform(request);
  if (!response) {
    spdlog::warn("backend {}: downloading the image for request {} failed: {}", config_.name, context.request_id,
                 response.error().message);
    return std::move(response).error();
  }
  if (response->status != 200) {
    spdlog::warn("backend {}: downloading the image for request {} failed with HTTP {}", config_.name,
                 context.request_id, response->status);
    return core::Error::bad_gateway("downloading the generated image failed with HTTP " +
                                    std::to_string(response->status) + "; the image URL may have expired");
  }
  return std::move(response->body);
}

void FalBackend::cancel(const std::string& app, const std::string& id, const GenerateContext& context) {
  OutboundRequest request;
  request.method = "PUT";
  request.url = config_.base_url + "/" + app + "/requests/" + id + "/cancel";
  request.headers = auth_headers();
  request.connect_timeout_ms = std::min(config_.connect_timeout_ms, kCancelTimeoutMs);
  request.timeout_ms = kCancelTimeoutMs;
  request.max_response_bytes = kMaxJsonBytes;
  auto response = perform(request);
  if (!response) {
    spdlog::warn("backend {}: canceling fal request {} for request {} failed: {}", config_.name, id,
                 context.request_id, response.error().message);
  } else {
    spdlog::info("backend {}: canceled fal request {} for request {} (HTTP {})", config_.name, id, context.request_id,
                 response->status);
  }
}

core::Result<GeneratedImage> FalBackend::fetch_result(const std::string& app, const std::string& id,
                                                      const GenerateContext& context,
                                                      const core::GenerationSpec& spec, int attempts) {
  OutboundRequest request;
  request.url = config_.base_url + "/" + app + "/requests/" + id;
  request.headers = auth_headers();
  request.connect_timeout_ms = config_.connect_timeout_ms;
  request.max_response_bytes = kMaxJsonBytes;
  for (int attempt = 1;; ++attempt) {
    request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.timeout_ms, remaining(context).count()));
    if (request.timeout_ms <= 0) return deadline_error("before the backend's result was fetched");
    auto response = perform(request);
    AttemptOutcome outcome;
    if (response && response->status == 200) {
      const Json json = Json::parse(response->body, nullptr, false);
      if (!json.is_object() || !json.contains("images") || !json["images"].is_array()) {
        spdlog::warn("backend {}: the result of fal request {} for request {} has no \"images\" array", config_.name,
                     id, context.request_id);
        return core::Error::bad_gateway("the backend's result is not the expected JSON (no \"images\" array)");
      }
      if (json.contains("has_nsfw_concepts") && json["has_nsfw_concepts"].is_array() &&
          !json["has_nsfw_concepts"].empty() && json["has_nsfw_concepts"][0].is_boolean() &&
          json["has_nsfw_concepts"][0].get<bool>()) {
        spdlog::warn("backend {}: fal request {} for request {} was flagged by the safety checker", config_.name, id,
                     context.request_id);
        return core::Error{core::ErrorCode::ContentRefused,
                           "the backend's safety checker refused the image; change the prompt", "prompt", 0};
      }
      const Json& images = json["images"];
      if (images.empty() || !images[0].is_object() || !images[0].contains("url") || !images[0]["url"].is_string()) {
        spdlog::warn("backend {}: the result of fal request {} for request {} has no image URL", config_.name, id,
                     context.request_id);
        return core::Error::bad_gateway("the backend's result has no image URL");
      }
      // Result URLs point at fal's media storage and are fetched now, as
      // they are not guaranteed to last.
      auto bytes = download(images[0]["url"].get<std::string>(), context);
      if (!bytes) return std::move(bytes).error();
      GeneratedImage image;
      image.bytes = std::move(bytes).value();
      image.provider_request_id = id;
      image.attempts = attempts;
      image.cost_usd = list_price(spec).value_or(0.0);
      return image;
    }
    if (!response) {
      outcome.error = std::move(response).error();
      outcome.retry = true;
      spdlog::warn("backend {}: fetching the result of fal request {} for request {} failed: {}", config_.name, id,
                   context.request_id, outcome.error.message);
    } else {
      // The result endpoint returns the runner's own error status when
      // the generation failed.
      outcome = classify_error(*response, config_.name, context.request_id);
    }
    if (!outcome.retry || attempt > config_.max_retries) return outcome.error;
    const auto delay = backoff_delay(attempt, std::chrono::milliseconds(config_.retry_base_delay_ms),
                                     std::chrono::milliseconds(config_.retry_max_delay_ms), outcome.retry_after);
    if (delay >= remaining(context)) return outcome.error;
    std::this_thread::sleep_for(delay);
  }
}

core::Result<GeneratedImage> FalBackend::generate(const core::GenerationSpec& spec, const GenerateContext& context) {
  OutboundRequest request;
  request.method = "POST";
  request.url = config_.base_url + "/" + spec.model;
  request.headers = auth_headers();
  request.headers.push_back("Content-Type: application/json");
  request.body = request_body(spec);
  request.connect_timeout_ms = config_.connect_timeout_ms;
  request.max_response_bytes = kMaxJsonBytes;

  // Step 1: submit. A submit is not idempotent, so only outcomes that prove
  // fal did not enqueue it are retried: 429, and a connection that could not
  // be made (Unavailable).
  const int max_attempts = 1 + config_.max_retries;
  int attempt = 1;
  std::string id;
  for (;; ++attempt) {
    const auto left = remaining(context);
    if (left.count() <= 0) return deadline_error("before the backend accepted the request");
    request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.timeout_ms, left.count()));
    AttemptOutcome outcome;
    auto response = perform(request);
    if (!response) {
      outcome.error = std::move(response).error();
      outcome.retry = outcome.error.code == core::ErrorCode::Unavailable;
      spdlog::warn("backend {}: submitting request {} failed (attempt {} of {}): {}", config_.name, context.request_id,
                   attempt, max_attempts, outcome.error.message);
    } else if (response->status == 200 || response->status == 201 || response->status == 202) {
      const Json json = Json::parse(response->body, nullptr, false);
      if (json.is_object() && json.contains("request_id") && json["request_id"].is_string()) id = json["request_id"];
      if (!is_valid_request_id(id)) {
        spdlog::warn("backend {}: the submit response for request {} has no valid request_id", config_.name,
                     context.request_id);
        return core::Error::bad_gateway("the backend's queue response has a missing or malformed \"request_id\"");
      }
      break;
    } else {
      outcome = classify_error(*response, config_.name, context.request_id);
      outcome.retry = response->status == 429;
    }
    if (!outcome.retry || attempt >= max_attempts) return outcome.error;
    if (!sleep_before_retry(config_, context, attempt, max_attempts, outcome.retry_after)) return outcome.error;
  }

  // Step 2: poll the status until COMPLETED. Polls are reads, so failed ones
  // are retried up to max_retries times in a row.
  const std::string app = fal_queue_app(spec.model);
  OutboundRequest status_request;
  status_request.url = config_.base_url + "/" + app + "/requests/" + id + "/status";
  status_request.headers = auth_headers();
  status_request.connect_timeout_ms = config_.connect_timeout_ms;
  status_request.max_response_bytes = kMaxJsonBytes;
  int failed_polls = 0;
  std::string last_status = "IN_QUEUE";
  for (int poll = 1;; ++poll) {
    const auto wait = std::chrono::milliseconds(config_.poll_interval_ms);
    if (wait >= remaining(context)) {
      spdlog::warn("backend {}: request {} reached its deadline while fal request {} was {}; canceling it",
                   config_.name, context.request_id, id, last_status);
      cancel(app, id, context);
      return deadline_error("while the backend's request was " + last_status);
    }
    std::this_thread::sleep_for(wait);
    status_request.timeout_ms =
        static_cast<int>(std::min<std::int64_t>(config_.timeout_ms, remaining(context).count()));
    if (status_request.timeout_ms <= 0) continue;  // the check above cancels and returns

    auto response = perform(status_request);
    AttemptOutcome outcome;
    if (response && (response->status == 200 || response->status == 202)) {
      failed_polls = 0;
      const Json json = Json::parse(response->body, nullptr, false);
      if (!json.is_object() || !json.contains("status") || !json["status"].is_string()) {
        spdlog::warn("backend {}: the status of fal request {} for request {} is not the expected JSON", config_.name,
                     id, context.request_id);
        cancel(app, id, context);
        return core::Error::bad_gateway("the backend's status response is not the expected JSON (no \"status\")");
      }
      last_status = json["status"].get<std::string>();
      if (last_status == "COMPLETED") return fetch_result(app, id, context, spec, attempt);
      if (last_status != "IN_QUEUE" && last_status != "IN_PROGRESS") {
        spdlog::warn("backend {}: fal request {} for request {} has the unknown status \"{}\"", config_.name, id,
                     context.request_id, last_status);
        cancel(app, id, context);
        return core::Error::bad_gateway("the backend's request has an unknown status \"" + last_status + "\"");
      }
      continue;
    }
    if (!response) {
      outcome.error = std::move(response).error();
      outcome.retry = true;
    } else {
      outcome = classify_error(*response, config_.name, context.request_id);
    }
    ++failed_polls;
    spdlog::warn("backend {}: status poll {} of fal request {} for request {} failed ({} in a row): {}", config_.name,
                 poll, id, context.request_id, failed_polls, outcome.error.message);
    if (!outcome.retry || failed_polls > config_.max_retries) {
      cancel(app, id, context);
      return outcome.error;
    }
    if (outcome.retry_after && *outcome.retry_after < remaining(context)) std::this_thread::sleep_for(*outcome.retry_after);
  }
}

}  // namespace pixelgate::backends
