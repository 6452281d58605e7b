#include "backends/sdcpp_backend.hpp"

#include <thread>

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

// GET /sdcpp/v1/capabilities reports limits of 64 to 4096 pixels per side.
constexpr int kMinSide = 64;
constexpr int kMaxSide = 4096;
// Bounds for the calls that only read or cancel, which return at once.
constexpr int kShortCallTimeoutMs = 10'000;

std::chrono::milliseconds remaining(const GenerateContext& context) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(context.deadline - Clock::now());
}

core::Error deadline_error(const std::string& stage) {
  return core::Error{core::ErrorCode::DeadlineExceeded, "generation timed out " + stage, {}, 0};
}

// sd-server's errors are {"error": "text"} with an optional "message".
std::string error_text(const std::string& body) {
  const Json json = Json::parse(body, nullptr, false);
  if (!json.is_object()) return body.substr(0, 300);
  std::string text;
  if (json.contains("error") && json["error"].is_string()) text = json["error"].get<std::string>();
  if (json.contains("message") && json["message"].is_string()) {
    text += (text.empty() ? "" : ": ") + json["message"].get<std::string>();
  }
  return text;
}

core::Result<std::unique_ptr<Backend>> make_sdcpp(const config::BackendConfig& config) {
  return std::unique_ptr<Backend>(std::make_unique<SdCppBackend>(config));
}

const bool kRegistered = register_backend_type("sdcpp", &make_sdcpp);

}  // namespace

core::Result<std::string> parse_sdcpp_result(const Json& job) {
  if (!job.contains("result") || !job["result"].is_object() || !job["result"].contains("images") ||
      !job["result"]["images"].is_array() || job["result"]["images"].empty()) {
    return core::Error::bad_gateway("the backend's completed job has no \"result.images\"");
  }
  const Json& first = job["result"]["images"][0];
  if (!first.is_object() || !first.contains("b64_json") || !first["b64_json"].is_string()) {
    return core::Error::bad_gateway("the backend's completed job has no \"b64_json\" image");
  }
  auto decoded = core::base64_decode(first["b64_json"].get_ref<const std::string&>());
  if (!decoded || decoded->empty()) return core::Error::bad_gateway("the backend's image is not valid base64");
  return std::move(*decoded);
}

SdCppBackend::SdCppBackend(config::BackendConfig config)
    : config_(std::move(config)), instance_(config_.queue_size) {}

core::Status SdCppBackend::validate(const core::GenerationSpec& spec) const {
  for (const auto& [field, value] : {std::pair{"width", spec.width}, std::pair{"height", spec.height}}) {
    if (value < kMinSide || value > kMaxSide || value % 8 != 0) {
      return core::Error::invalid(std::string(field) + " " + std::to_string(value) + " is not supported by " +
                                      config_.name + "; use a multiple of 8 from " + std::to_string(kMinSide) +
                                      " to " + std::to_string(kMaxSide),
                                  field);
    }
  }
  if (spec.steps < 0 || spec.steps > 1000) {
    return core::Error::invalid("steps must be from 1 to 1000, got " + std::to_string(spec.steps), "steps");
  }
  if (spec.guidance < 0.0 || spec.guidance > 100.0) {
    return core::Error::invalid("guidance must be from 0 to 100, got " + std::to_string(spec.guidance), "guidance");
  }
  return core::Ok{};
}

std::string SdCppBackend::request_body(const core::GenerationSpec& spec) const {
  // Fields left out keep the defaults sd-server was started with (its
  // --steps, --cfg-scale and --sampling-method), which suit its model.
  Json sample_params = Json::object();
  if (spec.steps > 0) sample_params["sample_steps"] = spec.steps;
  if (!spec.sampler.empty()) sample_params["sample_method"] = spec.sampler;
  if (spec.guidance > 0) sample_params["guidance"] = {{"txt_cfg", spec.guidance}};
  Json body = {
      {"prompt", spec.prompt},
      {"negative_prompt", spec.negative_prompt},
      {"width", spec.width},
      {"height", spec.height},
      {"seed", spec.seed},
      {"batch_count", 1},
      {"output_format", "png"},
  };
  if (!sample_params.empty()) body["sample_params"] = std::move(sample_params);
  return body.dump();
}

core::Result<std::string> SdCppBackend::submit(const core::GenerationSpec& spec, const GenerateContext& context) {
  OutboundRequest request;
  request.method = "POST";
  request.url = config_.base_url + "/sdcpp/v1/img_gen";
  request.headers = {"Content-Type: application/json", "Accept: application/json"};
  if (!config_.api_key.empty()) request.headers.push_back("Authorization: Bearer " + config_.api_key.value);
  request.body = request_body(spec);
  request.connect_timeout_ms = config_.connect_timeout_ms;

  const int max_attempts = 1 + config_.max_retries;
  for (int attempt = 1;; ++attempt) {
    const auto left = remaining(context);
    if (left.count() <= 0) return deadline_error("before the backend accepted the job");
    request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.timeout_ms, left.count()));
    auto response = perform(request);
    core::Error error;
    std::optional<std::chrono::milliseconds> retry_after;
    if (!response) {
      error = std::move(response).error();
      spdlog::warn("backend {}: submitting request {} failed (attempt {} of {}): {}", config_.name,
                   context.request_id, attempt, max_attempts, error.message);
      // Only a failed connection is repeated: after a timeout the job may
      // have been queued, and a second submission would run it twice.
      if (error.code != core::ErrorCode::Unavailable) return error;
      error = core::Error::unavailable("the backend is not accepting connections (it may still be loading its "
                                       "model); retry later",
                                       10);
    } else if (response->status == 202 || response->status == 200) {
      const Json body = Json::parse(response->body, nullptr, false);
      if (!body.is_object() || !body.contains("id") || !body["id"].is_string() ||
          body["id"].get_ref<const std::string&>().empty()) {
        return core::Error::bad_gateway("the backend's response to POST /sdcpp/v1/img_gen has no job \"id\"");
      }
      return body["id"].get<std::string>();
    } else {
      const std::string text = error_text(response->body);
      spdlog::warn("backend {}: POST /sdcpp/v1/img_gen for request {} returned HTTP {}: {}", config_.name,
                   context.request_id, response->status, text);
      if (response->status == 400) return core::Error::invalid("the backend rejected the request: " + text);
      if (response->status == 401 || response->status == 403) {
        return core::Error::bad_gateway("the backend rejected pixelgate's credentials; the operator must check the "
                                        "API key");
      }
      if (response->status == 404) {
        return core::Error::bad_gateway("the backend has no /sdcpp/v1/img_gen route; the operator must run an "
                                        "sd-server with the native API");
      }
      if (response->status != 429) {
        return core::Error::bad_gateway("the backend failed to accept the job with HTTP " +
                                        std::to_string(response->status) + ": " + text);
      }
      // 429: the server's job queue is full and nothing was queued.
      retry_after = parse_retry_after(response->header("retry-after"), std::nullopt);
      error = core::Error::unavailable("the backend's job queue is full; retry later", 5);
    }
    if (attempt >= max_attempts) return error;
    if (!context.allow_retry()) {
      spdlog::warn("backend {}: not retrying request {}: the backend's retry budget is used up", config_.name,
                   context.request_id);
      return error;
    }
    const auto delay = backoff_delay(attempt, std::chrono::milliseconds(config_.retry_base_delay_ms),
                                     std::chrono::milliseconds(config_.retry_max_delay_ms), retry_after);
    if (delay >= remaining(context)) {
      spdlog::warn("backend {}: not retrying request {}: the {} ms delay would pass its deadline", config_.name,
                   context.request_id, delay.count());
      return error;
    }
    spdlog::info("backend {}: retrying request {} in {} ms (attempt {} of {})", config_.name, context.request_id,
                 delay.count(), attempt + 1, max_attempts);
    std::this_thread::sleep_for(delay);
  }
}

core::Result<std::string> SdCppBackend::wait_for_job(const std::string& job_id, const GenerateContext& context) {
  OutboundRequest request;
  request.url = config_.base_url + "/sdcpp/v1/jobs/" + core::percent_encode(job_id);
  request.headers = {"Accept: application/json"};
  if (!config_.api_key.empty()) request.headers.push_back("Authorization: Bearer " + config_.api_key.value);
  request.connect_timeout_ms = config_.connect_timeout_ms;
  const auto interval = std::chrono::milliseconds(std::max(1, config_.poll_interval_ms));
  // Bounded by the deadline; the count guards against a clock that does not advance.
  for (long poll = 1; poll < 10'000'000; ++poll) {
    const auto left = remaining(context);
    if (left.count() <= 0) break;
    request.timeout_ms = static_cast<int>(std::min<std::int64_t>(kShortCallTimeoutMs, left.count()));
    auto response = perform(request);
    if (!response) {
      spdlog::warn("backend {}: polling job {} for request {} failed: {}", config_.name, job_id, context.request_id,
                   response.error().message);
    } else if (response->status == 404 || response->status == 410) {
      // The server forgot the job: it restarted, or the finished job expired.
      spdlog::warn("backend {}: job {} for request {} is gone (HTTP {})", config_.name, job_id, context.request_id,
                   response->status);
      return core::Error::bad_gateway("the backend no longer knows job " + job_id + " (HTTP " +
                                      std::to_string(response->status) + "); it may have restarted");
    } else if (response->status != 200) {
      spdlog::warn("backend {}: polling job {} for request {} returned HTTP {}", config_.name, job_id,
                   context.request_id, response->status);
    } else {
      const Json job = Json::parse(response->body, nullptr, false);
      const std::string status = job.is_object() ? job.value("status", std::string()) : "";
      if (status == "completed") return parse_sdcpp_result(job);
      if (status == "failed" || status == "cancelled") {
        std::string reason = status;
        if (job.contains("error") && job["error"].is_object()) {
          reason = job["error"].value("code", status) + ": " + job["error"].value("message", std::string());
        }
        spdlog::warn("backend {}: job {} for request {} ended {}: {}", config_.name, job_id, context.request_id,
                     status, reason);
        return core::Error::bad_gateway("the backend's job " + status + " (" + reason + ")");
      }
      if (status != "queued" && status != "generating") {
        return core::Error::bad_gateway("the backend's job has an unknown status \"" + status + "\"");
      }
    }
    const auto wait = std::min(interval, remaining(context));
    if (wait.count() <= 0) break;
    std::this_thread::sleep_for(wait);
  }
  cancel(job_id, context);
  return deadline_error("while the backend ran the job");
}

void SdCppBackend::cancel(const std::string& job_id, const GenerateContext& context) {
  OutboundRequest request;
  request.method = "POST";
  request.url = config_.base_url + "/sdcpp/v1/jobs/" + core::percent_encode(job_id) + "/cancel";
  if (!config_.api_key.empty()) request.headers.push_back("Authorization: Bearer " + config_.api_key.value);
  request.connect_timeout_ms = config_.connect_timeout_ms;
  request.timeout_ms = 2'000;
  auto response = perform(request);
  // 409 means the job is already generating, which sd-server cannot stop.
  spdlog::info("backend {}: cancelling job {} for request {}: {}", config_.name, job_id, context.request_id,
               response ? "HTTP " + std::to_string(response->status) : response.error().message);
}

core::Result<GeneratedImage> SdCppBackend::generate(const core::GenerationSpec& spec, const GenerateContext& context) {
  // sd-server runs one job at a time; holding the instance from submission
  // to the result keeps pixelgate's jobs from queueing there unseen.
  auto guard = instance_.acquire(context.deadline);
  if (!guard) {
    spdlog::warn("backend {}: request {} did not get the instance: {}", config_.name, context.request_id,
                 guard.error().message);
    return std::move(guard).error();
  }
  auto job_id = submit(spec, context);
  if (!job_id) return std::move(job_id).error();
  auto bytes = wait_for_job(*job_id, context);
  if (!bytes) return std::move(bytes).error();
  GeneratedImage image;
  image.bytes = std::move(bytes).value();
  image.provider_request_id = *job_id;
  return image;
}

}  // namespace pixelgate::backends
