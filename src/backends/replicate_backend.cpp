#include "backends/replicate_backend.hpp"

#include <algorithm>
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
using Family = ReplicateModelRules::Family;
using Clock = std::chrono::steady_clock;

// Replicate's sync mode keeps a create call open for 1 to 60 seconds, set
// with "Prefer: wait=n" (replicate.com/docs/topics/predictions/create-a-prediction).
constexpr std::int64_t kMaxPreferWaitSeconds = 60;
// A cancel is sent after the deadline has passed, so it gets a short budget of
// its own instead of the request's.
constexpr int kCancelTimeoutMs = 2'000;
// A response to a create or poll call is at most a few kilobytes of JSON.
constexpr std::size_t kMaxJsonBytes = 4 * 1024 * 1024;

std::chrono::milliseconds remaining(const GenerateContext& context) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(context.deadline - Clock::now());
}

core::Error deadline_error(const std::string& what) {
  return core::Error{core::ErrorCode::DeadlineExceeded, "generation timed out " + what, {}, 0};
}

std::string size_text(int width, int height) { return std::to_string(width) + "x" + std::to_string(height); }

// Prediction ids are lower-case base32 strings. Any other id in a response is
// rejected before it becomes part of a URL.
bool is_valid_prediction_id(const std::string& id) {
  return !id.empty() && id.size() <= 128 && std::all_of(id.begin(), id.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_';
  });
}

struct AttemptOutcome {
  bool retry = false;
  std::optional<std::chrono::milliseconds> retry_after;
  core::Error error;
};

// Maps a Replicate error response onto the common vocabulary. Replicate
// returns problem JSON (RFC 7807), {"title", "detail", "status"}, and 422
// validation errors add "invalid_fields": [{"type", "field", "description"}].
AttemptOutcome classify_error(const OutboundResponse& response, const std::string& backend_name,
                              const std::string& request_id) {
  std::string title;
  std::string detail;
  std::string param;
  const Json body = Json::parse(response.body, nullptr, false);
  if (body.is_object()) {
    if (body.contains("title") && body["title"].is_string()) title = body["title"];
    if (body.contains("detail") && body["detail"].is_string()) detail = body["detail"];
    if (body.contains("invalid_fields") && body["invalid_fields"].is_array() && !body["invalid_fields"].empty()) {
      const Json& field = body["invalid_fields"][0];
      if (field.is_object() && field.contains("field") && field["field"].is_string()) {
        param = field["field"].get<std::string>();
        // Fields are reported as "input.NAME"; pixelgate's callers know NAME.
        if (param.rfind("input.", 0) == 0) param = param.substr(6);
      }
    }
  }
  spdlog::warn("backend {}: HTTP {} for request {}: title=\"{}\" detail=\"{}\"", backend_name, response.status,
               request_id, title, detail);

  AttemptOutcome outcome;
  outcome.retry_after = parse_retry_after(response.header("retry-after"), std::nullopt);
  const long status = response.status;
  const std::string text = detail.empty() ? title : detail;
  if (status == 400 || status == 422) {
    outcome.error = core::Error::invalid("the backend rejected the request: " + text, param);
  } else if (status == 401 || status == 403) {
    outcome.error = core::Error::bad_gateway("the backend rejected pixelgate's credentials; the operator must check "
                                             "the API key");
  } else if (status == 402) {
    outcome.error = core::Error::unavailable("the backend's quota is exhausted; retry later", 60);
  } else if (status == 404) {
    outcome.error = core::Error::bad_gateway("the backend does not know the requested model or version: " + text);
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

// Returns true when a failed prediction's error shows that the safety
// checker rejected the output. FLUX models fail with "All generated images contained NSFW
// content..." and Replicate's own filter with "...flagged as sensitive... (E005)".
bool is_content_refusal(const std::string& error) {
  const std::string lower = core::to_lower_ascii(error);
  return lower.find("nsfw") != std::string::npos || lower.find("flagged as sensitive") != std::string::npos ||
         lower.find("(e005)") != std::string::npos;
}

// Splits "owner/name:version" into the model and the version, if any.
std::pair<std::string, std::string> split_version(const std::string& model) {
  const auto colon = model.find(':');
  if (colon == std::string::npos) return {model, ""};
  return {model.substr(0, colon), model.substr(colon + 1)};
}

std::string flux_output_format(const std::string& configured) {
  // FLUX takes "webp", "jpg" or "png", and pixelgate's config spells "jpeg".
  if (configured == "jpeg") return "jpg";
  return configured.empty() ? "png" : configured;
}

}  // namespace

ReplicateModelRules replicate_model_rules(const std::string& model) {
  ReplicateModelRules rules;
  const std::string name = split_version(model).first;
  if (name == "black-forest-labs/flux-schnell" || name == "black-forest-labs/flux-dev") {
    rules.family = name == "black-forest-labs/flux-schnell" ? Family::FluxSchnell : Family::FluxDev;
    // The sizes each ratio produces, from aspect_ratio_to_width_height() in
    // replicate/cog-flux's predict.py.
    rules.aspect_ratios = {{"1:1", {1024, 1024}}, {"16:9", {1344, 768}}, {"21:9", {1536, 640}},
                           {"3:2", {1216, 832}},  {"2:3", {832, 1216}},  {"4:5", {896, 1088}},
                           {"5:4", {1088, 896}},  {"9:16", {768, 1344}}, {"9:21", {640, 1536}}};
  }
  return rules;
}

namespace {

core::Result<std::unique_ptr<Backend>> make_replicate(const config::BackendConfig& config) {
  if (config.api_key.empty()) {
    return core::Error::invalid("backends." + config.name + ".api_key_env: the environment variable " +
                                config.api_key.env_name + " is not set or empty; set it to a Replicate API token");
  }
  if (config.model.empty() && config.model_version.empty()) {
    return core::Error::invalid("backends." + config.name +
                                ".model: set model = \"owner/name\" for an official model, or model_version to a "
                                "version id");
  }
  if (!config.model.empty() && split_version(config.model).first.find('/') == std::string::npos) {
    return core::Error::invalid("backends." + config.name + ".model: \"" + config.model +
                                "\" is not of the form \"owner/name\"");
  }
  return std::unique_ptr<Backend>(std::make_unique<ReplicateBackend>(config));
}

const bool kRegistered = register_backend_type("replicate", &make_replicate);

}  // namespace

ReplicateBackend::ReplicateBackend(config::BackendConfig config) : config_(std::move(config)) {}

bool ReplicateBackend::supports_negative_prompt() const {
  return replicate_model_rules(config_.model).family == Family::Generic;
}

std::optional<double> ReplicateBackend::list_price(const core::GenerationSpec& spec) const {
  // Replicate bills these official models per output image: flux-schnell
  // $0.003 and flux-dev $0.025 (replicate.com/pricing as quoted by
  // third-party price comparisons, May 2026). Other models are billed by
  // hardware time, which is not known ahead.
  switch (replicate_model_rules(spec.model).family) {
    case Family::FluxSchnell: return 0.003;
    case Family::FluxDev: return 0.025;
    case Family::Generic: return std::nullopt;
  }
  return std::nullopt;
}

core::Status ReplicateBackend::validate(const core::GenerationSpec& spec) const {
  const ReplicateModelRules rules = replicate_model_rules(spec.model);
  if (spec.width <= 0 || spec.height <= 0) {
    return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not a valid image size", "size");
  }
  if (!spec.quality.empty()) return core::Error::invalid(spec.model + " on Replicate does not take a quality", "quality");
  if (!spec.style.empty()) return core::Error::invalid(spec.model + " on Replicate does not take a style", "style");
  if (rules.family == Family::Generic) return core::Ok{};

  bool allowed = false;
  std::string choices;
  for (const auto& [ratio, size] : rules.aspect_ratios) {
    allowed = allowed || (size.first == spec.width && size.second == spec.height);
    choices += (choices.empty() ? "" : ", ") + size_text(size.first, size.second);
  }
  if (!allowed) {
    return core::Error::invalid("size " + size_text(spec.width, spec.height) + " is not supported by " + spec.model +
                                    ", which takes an aspect ratio; use one of " + choices,
                                "size");
  }
  if (!spec.negative_prompt.empty()) {
    return core::Error::invalid(spec.model + " does not take a negative prompt", "negative_prompt");
  }
  if (!spec.sampler.empty()) return core::Error::invalid(spec.model + " does not take a sampler", "sampler");
  if (rules.family == Family::FluxSchnell) {
    if (spec.steps < 0 || spec.steps > 4) return core::Error::invalid("steps must be between 1 and 4 for " + spec.model, "steps");
    if (spec.guidance != 0.0) return core::Error::invalid(spec.model + " does not take a guidance", "guidance");
  } else {
    if (spec.steps < 0 || spec.steps > 50) {
      return core::Error::invalid("steps must be between 1 and 50 for " + spec.model, "steps");
    }
    if (spec.guidance < 0.0 || spec.guidance > 10.0) {
      return core::Error::invalid("guidance must be between 0 and 10 for " + spec.model, "guidance");
    }
  }
  return core::Ok{};
}

ReplicateCreateRequest ReplicateBackend::create_request(const core::GenerationSpec& spec) const {
  const ReplicateModelRules rules = replicate_model_rules(spec.model);
  Json input = {{"prompt", spec.prompt}};
  if (rules.family == Family::Generic) {
    input["width"] = spec.width;
    input["height"] = spec.height;
    if (!spec.negative_prompt.empty()) input["negative_prompt"] = spec.negative_prompt;
    if (spec.steps > 0) input["num_inference_steps"] = spec.steps;
    if (spec.guidance > 0.0) input["guidance_scale"] = spec.guidance;
    if (!spec.sampler.empty()) input["scheduler"] = spec.sampler;
  } else {
    for (const auto& [ratio, size] : rules.aspect_ratios) {
      if (size.first == spec.width && size.second == spec.height) input["aspect_ratio"] = ratio;
    }
    input["num_outputs"] = 1;
    input["output_format"] = flux_output_format(config_.output_format);
    if (spec.steps > 0) input["num_inference_steps"] = spec.steps;
    if (rules.family == Family::FluxDev && spec.guidance > 0.0) input["guidance"] = spec.guidance;
  }
  input["seed"] = spec.seed;

  // A version comes from "owner/name:version" in the spec's model, or from
  // model_version when the spec uses the configured model.
  auto [model, version] = split_version(spec.model);
  if (version.empty() && (model == config_.model || model.empty())) version = config_.model_version;
  ReplicateCreateRequest request;
  if (!version.empty()) {
    request.path = "/v1/predictions";
    request.body = Json{{"version", version}, {"input", input}}.dump();
  } else {
    request.path = "/v1/models/" + model + "/predictions";
    request.body = Json{{"input", input}}.dump();
  }
  return request;
}

std::string ReplicateBackend::prefer_header(std::int64_t remaining_ms) {
  // One second is kept back so that the response arrives before pixelgate's
  // own timeout for the call.
  const std::int64_t seconds = std::min<std::int64_t>(kMaxPreferWaitSeconds, (remaining_ms - 1000) / 1000);
  if (seconds < 1) return "";
  return "wait=" + std::to_string(seconds);
}

std::vector<std::string> ReplicateBackend::auth_headers() const {
  return {"Accept: application/json", "Authorization: Bearer " + config_.api_key.value};
}

core::Result<std::string> ReplicateBackend::download(const std::string& url, const GenerateContext& context) {
  if (url.rfind("https://", 0) != 0 && url.rfind("http://", 0) != 0) {
    return core::Error::bad_gateway("the backend returned an output URL with an unsupported scheme");
  }
  OutboundRequest request;
  request.url = url;
  request.connect_timeout_ms = config_.connect_timeout_ms;
  request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.download_timeout_ms, remaining(context).count()));
  if (request.timeout_ms <= 0) return deadline_error("before the output could be downloaded");
  auto response = perform(request);
  if (!response) {
    spdlog::warn("backend {}: downloading the output for request {} failed: {}", config_.name, context.request_id,
                 response.error().message);
    return std::move(response).error();
  }
  if (response->status != 200) {
    spdlog::warn("backend {}: downloading the output for request {} failed with HTTP {}", config_.name,
                 context.request_id, response->status);
    return core::Error::bad_gateway("downloading the generated image failed with HTTP " +
                                    std::to_string(response->status) + "; the output URL may have expired");
  }
  return std::move(response->body);
}

void ReplicateBackend::cancel(const std::string& id, const GenerateContext& context) {
  OutboundRequest request;
  request.method = "POST";
  request.url = config_.base_url + "/v1/predictions/" + id + "/cancel";
  request.headers = auth_headers();
  request.connect_timeout_ms = std::min(config_.connect_timeout_ms, kCancelTimeoutMs);
  request.timeout_ms = kCancelTimeoutMs;
  request.max_response_bytes = kMaxJsonBytes;
  auto response = perform(request);
  if (!response) {
    spdlog::warn("backend {}: canceling prediction {} for request {} failed: {}", config_.name, id, context.request_id,
                 response.error().message);
  } else {
    spdlog::info("backend {}: canceled prediction {} for request {} (HTTP {})", config_.name, id, context.request_id,
                 response->status);
  }
}

core::Result<GeneratedImage> ReplicateBackend::finish(const std::string& prediction_body,
                                                      const GenerateContext& context,
                                                      const core::GenerationSpec& spec, int attempts) {
  const Json prediction = Json::parse(prediction_body, nullptr, false);
  const std::string id = prediction.value("id", std::string());
  const Json output = prediction.is_object() && prediction.contains("output") ? prediction["output"] : Json();
  std::string url;
  if (output.is_string()) {
    url = output.get<std::string>();
  } else if (output.is_array() && !output.empty() && output[0].is_string()) {
    url = output[0].get<std::string>();
  } else {
    spdlog::warn("backend {}: prediction {} for request {} succeeded without an output URL", config_.name, id,
                 context.request_id);
    return core::Error::bad_gateway("the backend's prediction succeeded but has no output URL");
  }
  // Output URLs expire (after an hour), so the bytes are fetched now.
  auto bytes = download(url, context);
  if (!bytes) return std::move(bytes).error();
  GeneratedImage image;
  image.bytes = std::move(bytes).value();
  image.provider_request_id = id;
  image.attempts = attempts;
  // Predictions report no price; the list price is the best known cost.
  image.cost_usd = list_price(spec).value_or(0.0);
  return image;
}

core::Result<GeneratedImage> ReplicateBackend::generate(const core::GenerationSpec& spec,
                                                        const GenerateContext& context) {
  const ReplicateCreateRequest create = create_request(spec);
  OutboundRequest request;
  request.method = "POST";
  request.url = config_.base_url + create.path;
  request.body = create.body;
  request.connect_timeout_ms = config_.connect_timeout_ms;
  request.max_response_bytes = kMaxJsonBytes;

  // Step 1: create the prediction. A create is not idempotent, so only
  // outcomes that prove Replicate did not accept it are retried: 429, and a
  // connection that could not be made (Unavailable).
  const int max_attempts = 1 + config_.max_retries;
  int attempt = 1;
  std::string body;
  for (;; ++attempt) {
    const auto left = remaining(context);
    if (left.count() <= 0) return deadline_error("before the backend accepted the prediction");
    const auto call_ms = std::min<std::int64_t>(config_.timeout_ms, left.count());
    request.timeout_ms = static_cast<int>(call_ms);
    request.headers = auth_headers();
    request.headers.push_back("Content-Type: application/json");
    if (const std::string prefer = prefer_header(call_ms); !prefer.empty()) request.headers.push_back("Prefer: " + prefer);

    AttemptOutcome outcome;
    auto response = perform(request);
    if (!response) {
      outcome.error = std::move(response).error();
      outcome.retry = outcome.error.code == core::ErrorCode::Unavailable;
      spdlog::warn("backend {}: creating a prediction for request {} failed (attempt {} of {}): {}", config_.name,
                   context.request_id, attempt, max_attempts, outcome.error.message);
    } else if (response->status == 200 || response->status == 201 || response->status == 202) {
      body = std::move(response->body);
      break;
    } else {
      outcome = classify_error(*response, config_.name, context.request_id);
      outcome.retry = response->status == 429;
    }
    if (!outcome.retry || attempt >= max_attempts) return outcome.error;
    if (!sleep_before_retry(config_, context, attempt, max_attempts, outcome.retry_after)) return outcome.error;
  }

  // Step 2: poll until the prediction reaches a terminal state. Polls are
  // reads, so failed ones are retried up to max_retries times in a row.
  int failed_polls = 0;
  std::string id;
  for (int poll = 0;; ++poll) {
    const Json prediction = Json::parse(body, nullptr, false);
    if (!prediction.is_object() || !prediction.contains("status") || !prediction["status"].is_string()) {
      spdlog::warn("backend {}: the prediction for request {} is not the expected JSON", config_.name,
                   context.request_id);
      if (!id.empty()) cancel(id, context);
      return core::Error::bad_gateway("the backend's response is not a prediction (no \"status\")");
    }
    const std::string status = prediction["status"];
    if (id.empty()) {
      id = prediction.value("id", std::string());
      if (!is_valid_prediction_id(id)) {
        spdlog::warn("backend {}: the prediction for request {} has a missing or malformed id", config_.name,
                     context.request_id);
        return core::Error::bad_gateway("the backend's prediction has a missing or malformed \"id\"");
      }
    }
    if (status == "succeeded") return finish(body, context, spec, attempt);
    if (status == "failed") {
      const std::string error = prediction.contains("error") && prediction["error"].is_string()
                                    ? prediction["error"].get<std::string>()
                                    : std::string("no error message");
      spdlog::warn("backend {}: prediction {} for request {} failed: {}", config_.name, id, context.request_id, error);
      if (is_content_refusal(error)) {
        return core::Error{core::ErrorCode::ContentRefused,
                           "the backend's safety checker refused the image; change the prompt", "prompt", 0};
      }
      return core::Error::bad_gateway("the backend's prediction failed: " + error);
    }
    if (status == "canceled" || status == "aborted") {
      spdlog::warn("backend {}: prediction {} for request {} ended as {}", config_.name, id, context.request_id, status);
      return core::Error::bad_gateway("the backend's prediction was " + status + " before it finished");
    }
    if (status != "starting" && status != "processing") {
      spdlog::warn("backend {}: prediction {} for request {} has the unknown status \"{}\"", config_.name, id,
                   context.request_id, status);
      cancel(id, context);
      return core::Error::bad_gateway("the backend's prediction has an unknown status \"" + status + "\"");
    }

    const auto wait = std::chrono::milliseconds(config_.poll_interval_ms);
    if (wait >= remaining(context)) {
      spdlog::warn("backend {}: request {} reached its deadline while prediction {} was {}; canceling it",
                   config_.name, context.request_id, id, status);
      cancel(id, context);
      return deadline_error("while the backend's prediction was " + status);
    }
    std::this_thread::sleep_for(wait);

    OutboundRequest get;
    get.url = config_.base_url + "/v1/predictions/" + id;
    get.headers = auth_headers();
    get.connect_timeout_ms = config_.connect_timeout_ms;
    get.max_response_bytes = kMaxJsonBytes;
    get.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.timeout_ms, remaining(context).count()));
    if (get.timeout_ms <= 0) {
      cancel(id, context);
      return deadline_error("while the backend's prediction was " + status);
    }
    auto response = perform(get);
    AttemptOutcome outcome;
    if (response && response->status == 200) {
      failed_polls = 0;
      body = std::move(response->body);
      continue;
    }
    if (!response) {
      outcome.error = std::move(response).error();
      outcome.retry = true;
    } else {
      outcome = classify_error(*response, config_.name, context.request_id);
    }
    ++failed_polls;
    spdlog::warn("backend {}: poll {} of prediction {} for request {} failed ({} in a row): {}", config_.name, poll + 1,
                 id, context.request_id, failed_polls, outcome.error.message);
    if (!outcome.retry || failed_polls > config_.max_retries) {
      cancel(id, context);
      return outcome.error;
    }
    if (outcome.retry_after && *outcome.retry_after < remaining(context)) std::this_thread::sleep_for(*outcome.retry_after);
  }
}

}  // namespace pixelgate::backends
