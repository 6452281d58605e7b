#include "backends/a1111_backend.hpp"

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
using Clock = std::chrono::steady_clock;

// The web UI's sliders allow 64 to 2048 pixels in steps of 8, up to 150
// steps and a CFG scale from 1 to 30; the API itself checks none of these,
// so pixelgate limits requests to what the UI can produce.
constexpr int kMinSide = 64;
constexpr int kMaxSide = 2048;
constexpr int kMaxSteps = 150;
constexpr double kMinCfg = 1.0;
constexpr double kMaxCfg = 30.0;
// While the server starts (loading a checkpoint takes tens of seconds) it
// refuses connections; this is the retry delay given to the client then.
constexpr int kStartingRetryAfterSeconds = 10;

std::chrono::milliseconds remaining(const GenerateContext& context) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(context.deadline - Clock::now());
}

struct AttemptOutcome {
  bool retry = false;
  std::optional<std::chrono::milliseconds> retry_after;
  core::Error error;
};

// Returns FastAPI's "detail" as text: a string as is, a validation list as
// "field: message" items, and the first failing field in `param`.
std::string detail_text(const Json& body, std::string& param) {
  if (!body.is_object() || !body.contains("detail")) return {};
  const Json& detail = body["detail"];
  if (detail.is_string()) return detail.get<std::string>();
  if (!detail.is_array()) return detail.dump();
  std::string text;
  for (const Json& item : detail) {
    if (!item.is_object()) continue;
    std::string field;
    if (item.contains("loc") && item["loc"].is_array() && !item["loc"].empty()) {
      const Json& last = item["loc"].back();
      field = last.is_string() ? last.get<std::string>() : last.dump();
    }
    if (param.empty()) param = field;
    const std::string message = item.value("msg", std::string("invalid value"));
    text += (text.empty() ? "" : "; ") + (field.empty() ? message : field + ": " + message);
  }
  return text;
}

// Maps a txt2img error response onto the common error vocabulary. FastAPI
// returns 422 {"detail": [{"loc", "msg", "type"}]} for a malformed body; the
// web UI's exception handler returns 500 {"error", "detail", "body", "errors"}.
AttemptOutcome classify_error(const OutboundResponse& response, const std::string& backend_name,
                              const std::string& request_id) {
  const Json body = Json::parse(response.body, nullptr, false);
  std::string param;
  std::string detail = detail_text(body, param);
  if (body.is_object() && body.contains("errors") && body["errors"].is_string()) {
    const std::string kind = body.value("error", std::string("error"));
    detail = kind + ": " + body["errors"].get<std::string>();
  }
  spdlog::warn("backend {}: HTTP {} for request {}: {}", backend_name, response.status, request_id,
               detail.empty() ? response.body.substr(0, 300) : detail);

  AttemptOutcome outcome;
  outcome.retry_after = parse_retry_after(response.header("retry-after"), std::nullopt);
  const long status = response.status;
  if (status == 401 || status == 403) {
    outcome.error = core::Error::bad_gateway("the backend rejected pixelgate's credentials; the operator must check "
                                             "the API key (user:password for --api-auth)");
  } else if (status == 404 && detail.find("ampler") != std::string::npos) {
    outcome.error = core::Error::invalid("the backend does not know the sampler: " + detail +
                                             "; use a name from GET /sdapi/v1/samplers",
                                         "sampler");
  } else if (status == 404) {
    outcome.error = core::Error::bad_gateway("the backend has no /sdapi/v1/txt2img route; the operator must start "
                                             "the web UI with --api");
  } else if (status == 422 || status == 400) {
    outcome.error = core::Error::invalid("the backend rejected the request: " + detail, param);
  } else if (status == 429) {
    outcome.retry = true;
    const int seconds = outcome.retry_after ? static_cast<int>((outcome.retry_after->count() + 999) / 1000) : 5;
    outcome.error = core::Error::unavailable("the backend is rate limiting pixelgate; retry later", std::max(1, seconds));
  } else if (status >= 500) {
    outcome.retry = true;
    outcome.error = core::Error::bad_gateway("the backend failed with HTTP " + std::to_string(status) +
                                             (detail.empty() ? std::string() : ": " + detail));
  } else {
    outcome.error = core::Error::bad_gateway("the backend returned unexpected HTTP " + std::to_string(status));
  }
  return outcome;
}

core::Result<std::unique_ptr<Backend>> make_a1111(const config::BackendConfig& config) {
  // --api-auth takes "user:password"; any other shape cannot log in.
  if (!config.api_key.empty() && config.api_key.value.find(':') == std::string::npos) {
    return core::Error::invalid("backends." + config.name + ".api_key_env: the variable " + config.api_key.env_name +
                                " must hold \"user:password\" as given to the web UI's --api-auth");
  }
  return std::unique_ptr<Backend>(std::make_unique<A1111Backend>(config));
}

const bool kRegistered = register_backend_type("a1111", &make_a1111);

}  // namespace

core::Result<std::string> parse_a1111_images(const std::string& body) {
  const Json json = Json::parse(body, nullptr, false);
  if (!json.is_object() || !json.contains("images") || !json["images"].is_array()) {
    return core::Error::bad_gateway("the backend's response is not the expected JSON (no \"images\" array)");
  }
  if (json["images"].empty() || !json["images"][0].is_string()) {
    return core::Error::bad_gateway("the backend returned no image (empty \"images\")");
  }
  std::string_view encoded = json["images"][0].get_ref<const std::string&>();
  // Some forks return a data URL; the payload after the comma is the same base64.
  if (encoded.rfind("data:", 0) == 0) {
    const auto comma = encoded.find(',');
    encoded = comma == std::string_view::npos ? std::string_view{} : encoded.substr(comma + 1);
  }
  auto decoded = core::base64_decode(encoded);
  if (!decoded || decoded->empty()) return core::Error::bad_gateway("the backend's image is not valid base64");
  return std::move(*decoded);
}

A1111Backend::A1111Backend(config::BackendConfig config)
    : config_(std::move(config)), instance_(config_.queue_size) {}

core::Status A1111Backend::validate(const core::GenerationSpec& spec) const {
  for (const auto& [field, value] : {std::pair{"width", spec.width}, std::pair{"height", spec.height}}) {
    if (value < kMinSide || value > kMaxSide || value % 8 != 0) {
      return core::Error::invalid(std::string(field) + " " + std::to_string(value) + " is not supported by " +
                                      config_.name + "; use a multiple of 8 from " + std::to_string(kMinSide) +
                                      " to " + std::to_string(kMaxSide),
                                  field);
    }
  }
  if (spec.steps < 0 || spec.steps > kMaxSteps) {
    return core::Error::invalid("steps must be from 1 to " + std::to_string(kMaxSteps) + ", got " +
                                    std::to_string(spec.steps),
                                "steps");
  }
  if (spec.guidance != 0.0 && (spec.guidance < kMinCfg || spec.guidance > kMaxCfg)) {
    return core::Error::invalid("guidance (cfg_scale) must be from 1 to 30, got " + std::to_string(spec.guidance),
                                "guidance");
  }
  return core::Ok{};
}

std::string A1111Backend::request_body(const core::GenerationSpec& spec) const {
  Json body = {
      {"prompt", spec.prompt},
      {"negative_prompt", spec.negative_prompt},
      {"width", spec.width},
      {"height", spec.height},
      {"steps", spec.steps > 0 ? spec.steps : kA1111DefaultSteps},
      {"cfg_scale", spec.guidance > 0 ? spec.guidance : kA1111DefaultCfgScale},
      {"sampler_name", spec.sampler.empty() ? std::string(kA1111DefaultSampler) : spec.sampler},
      {"seed", spec.seed},
      {"batch_size", 1},
      {"n_iter", 1},
  };
  // The checkpoint is chosen per request through override_settings; without
  // a model the server's loaded checkpoint is used.
  if (!spec.model.empty()) body["override_settings"] = {{"sd_model_checkpoint", spec.model}};
  return body.dump();
}

core::Result<GeneratedImage> A1111Backend::generate(const core::GenerationSpec& spec, const GenerateContext& context) {
  // The server runs one job at a time; holding the instance for the whole
  // call, retries included, keeps pixelgate's calls from overlapping there.
  auto guard = instance_.acquire(context.deadline);
  if (!guard) {
    spdlog::warn("backend {}: request {} did not get the instance: {}", config_.name, context.request_id,
                 guard.error().message);
    return std::move(guard).error();
  }
  return call(spec, context);
}

core::Result<GeneratedImage> A1111Backend::call(const core::GenerationSpec& spec, const GenerateContext& context) {
  OutboundRequest request;
  request.method = "POST";
  request.url = config_.base_url + "/sdapi/v1/txt2img";
  request.headers = {"Content-Type: application/json", "Accept: application/json"};
  if (!config_.api_key.empty()) {
    request.headers.push_back("Authorization: Basic " + core::base64_encode(config_.api_key.value));
  }
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
      // A refused connection is the usual state while the web UI loads its
      // checkpoint, and nothing was started, so the call is safe to repeat.
      outcome.retry = true;
      outcome.error = std::move(response).error();
      if (outcome.error.code == core::ErrorCode::Unavailable) {
        outcome.error = core::Error::unavailable("the backend is not accepting connections (it may still be "
                                                 "starting); retry later",
                                                 kStartingRetryAfterSeconds);
      }
      spdlog::warn("backend {}: attempt {} of {} for request {} failed: {}", config_.name, attempt, max_attempts,
                   context.request_id, outcome.error.message);
    } else if (response->status == 200) {
      auto bytes = parse_a1111_images(response->body);
      if (!bytes) {
        spdlog::warn("backend {}: request {}: {}", config_.name, context.request_id, bytes.error().message);
        return std::move(bytes).error();
      }
      GeneratedImage image;
      image.bytes = std::move(bytes).value();
      image.attempts = attempt;
      return image;
    } else {
      outcome = classify_error(*response, config_.name, context.request_id);
    }

    if (!outcome.retry || attempt >= max_attempts) return outcome.error;
    if (!sleep_before_retry(config_, context, attempt, max_attempts, outcome.retry_after)) return outcome.error;
  }
}

}  // namespace pixelgate::backends
