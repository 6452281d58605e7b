#include "backends/comfyui_backend.hpp"

#include <fstream>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "backends/http_client.hpp"
#include "backends/registry.hpp"
#include "backends/retry.hpp"
#include "core/text.hpp"

namespace pixelgate::backends {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr const char* kPrompt = "{{prompt}}";
constexpr const char* kNegativePrompt = "{{negative_prompt}}";
constexpr const char* kSeed = "{{seed}}";
constexpr const char* kWidth = "{{width}}";
constexpr const char* kHeight = "{{height}}";
constexpr const char* kSteps = "{{steps}}";
constexpr const char* kCfg = "{{cfg}}";
// EmptyLatentImage takes 16 to 16384 pixels in steps of 8 (MAX_RESOLUTION).
constexpr int kMinSide = 16;
constexpr int kMaxSide = 16384;
// KSampler's limits: steps 1 to 10000, cfg 0 to 100.
constexpr int kMaxSteps = 10000;
constexpr double kMaxCfg = 100.0;
// Bounds for the calls that only read or cancel, which return at once.
constexpr int kShortCallTimeoutMs = 10'000;

std::chrono::milliseconds remaining(const GenerateContext& context) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(context.deadline - Clock::now());
}

core::Error deadline_error(const std::string& stage) {
  return core::Error{core::ErrorCode::DeadlineExceeded, "generation timed out " + stage, {}, 0};
}

// Counts string values equal to `placeholder`, or containing it when
// `inside_text` is set, anywhere in `node`.
int count_placeholder(const Json& node, const std::string& placeholder, bool inside_text) {
  if (node.is_string()) {
    const auto& text = node.get_ref<const std::string&>();
    return inside_text ? (text.find(placeholder) != std::string::npos ? 1 : 0) : (text == placeholder ? 1 : 0);
  }
  int count = 0;
  if (node.is_object() || node.is_array()) {
    for (const auto& child : node) count += count_placeholder(child, placeholder, inside_text);
  }
  return count;
}

void replace_all(std::string& text, const std::string& from, const std::string& to) {
  for (auto at = text.find(from); at != std::string::npos; at = text.find(from, at + to.size())) {
    text.replace(at, from.size(), to);
  }
}

// Replaces placeholders in place. A value that is exactly a numeric
// placeholder becomes a number; the prompts may also sit inside longer text.
void fill(Json& node, const std::map<std::string, Json>& typed, const std::string& prompt,
          const std::string& negative_prompt) {
  if (node.is_string()) {
    const std::string text = node.get<std::string>();
    if (auto it = typed.find(text); it != typed.end()) {
      node = it->second;
      return;
    }
    if (text.find("{{") == std::string::npos) return;
    std::string filled = text;
    replace_all(filled, kNegativePrompt, negative_prompt);
    replace_all(filled, kPrompt, prompt);
    node = filled;
    return;
  }
  if (node.is_object() || node.is_array()) {
    for (auto& child : node) fill(child, typed, prompt, negative_prompt);
  }
}

// Maps a node-error input name back to the pixelgate field it came from.
std::string field_for_input(const std::string& input) {
  if (input == "width" || input == "height" || input == "steps" || input == "seed") return input;
  if (input == "cfg") return "guidance";
  if (input == "noise_seed") return "seed";
  return {};
}

core::Result<std::unique_ptr<Backend>> make_comfyui(const config::BackendConfig& config) {
  std::ifstream file(config.workflow, std::ios::binary);
  if (!file) {
    return core::Error::invalid("backends." + config.name + ".workflow: cannot read \"" + config.workflow +
                                "\"; give the path of a workflow exported with \"Export (API)\"");
  }
  std::ostringstream text;
  text << file.rdbuf();
  auto workflow = parse_comfy_workflow(text.str(), config.workflow);
  if (!workflow) {
    core::Error error = std::move(workflow).error();
    error.message = "backends." + config.name + ".workflow: " + error.message;
    return error;
  }
  return std::unique_ptr<Backend>(std::make_unique<ComfyUIBackend>(config, std::move(workflow).value()));
}

const bool kRegistered = register_backend_type("comfyui", &make_comfyui);

}  // namespace

core::Result<ComfyWorkflow> parse_comfy_workflow(const std::string& text, const std::string& path) {
  ComfyWorkflow workflow;
  workflow.graph = Json::parse(text, nullptr, false);
  if (workflow.graph.is_discarded()) return core::Error::invalid("\"" + path + "\" is not valid JSON");
  if (!workflow.graph.is_object() || workflow.graph.empty()) {
    return core::Error::invalid("\"" + path + "\" is not a workflow in API format (expected an object of nodes)");
  }
  // The UI format has "nodes" and "links" arrays; the server only runs the API format.
  if (workflow.graph.contains("nodes") && workflow.graph["nodes"].is_array()) {
    return core::Error::invalid("\"" + path + "\" is in ComfyUI's UI format; export it again with \"Export (API)\"");
  }
  for (const auto& [id, node] : workflow.graph.items()) {
    if (!node.is_object() || !node.contains("class_type") || !node["class_type"].is_string() ||
        !node.contains("inputs") || !node["inputs"].is_object()) {
      return core::Error::invalid("\"" + path + "\": node \"" + id +
                                  "\" lacks \"class_type\" or \"inputs\", so the file is not in API format");
    }
  }
  const Json& graph = workflow.graph;
  if (count_placeholder(graph, kPrompt, true) == 0) {
    return core::Error::invalid("\"" + path + "\" has no \"{{prompt}}\" placeholder; put it in the positive "
                                "prompt's text input");
  }
  for (const char* required : {kWidth, kHeight}) {
    if (count_placeholder(graph, required, false) == 0) {
      return core::Error::invalid("\"" + path + "\" has no \"" + required +
                                  "\" placeholder; put it in the latent image node's input");
    }
  }
  workflow.has_negative_prompt = count_placeholder(graph, kNegativePrompt, true) > 0;
  workflow.has_seed = count_placeholder(graph, kSeed, false) > 0;
  workflow.has_steps = count_placeholder(graph, kSteps, false) > 0;
  workflow.has_cfg = count_placeholder(graph, kCfg, false) > 0;
  return workflow;
}

Json fill_comfy_workflow(const ComfyWorkflow& workflow, const core::GenerationSpec& spec) {
  const std::map<std::string, Json> typed = {
      {kSeed, spec.seed},
      {kWidth, spec.width},
      {kHeight, spec.height},
      {kSteps, spec.steps > 0 ? spec.steps : kComfyDefaultSteps},
      {kCfg, spec.guidance > 0 ? spec.guidance : kComfyDefaultCfg},
  };
  Json graph = workflow.graph;
  fill(graph, typed, spec.prompt, spec.negative_prompt);
  return graph;
}

std::string summarise_node_errors(const Json& node_errors) {
  if (!node_errors.is_object()) return {};
  std::string text;
  for (const auto& [id, node] : node_errors.items()) {
    if (!node.is_object()) continue;
    const std::string class_type = node.value("class_type", std::string("?"));
    if (!node.contains("errors") || !node["errors"].is_array()) continue;
    for (const Json& error : node["errors"]) {
      if (!error.is_object()) continue;
      std::string item = "node " + id + " (" + class_type + "): " + error.value("message", std::string("error"));
      const std::string details = error.value("details", std::string());
      if (!details.empty()) item += ": " + details;
      text += (text.empty() ? "" : "; ") + item;
    }
  }
  return text;
}

ComfyUIBackend::ComfyUIBackend(config::BackendConfig config, ComfyWorkflow workflow)
    : config_(std::move(config)), workflow_(std::move(workflow)) {}

core::Status ComfyUIBackend::validate(const core::GenerationSpec& spec) const {
  for (const auto& [field, value] : {std::pair{"width", spec.width}, std::pair{"height", spec.height}}) {
    if (value < kMinSide || value > kMaxSide || value % 8 != 0) {
      return core::Error::invalid(std::string(field) + " " + std::to_string(value) + " is not supported by " +
                                      config_.name + "; use a multiple of 8 from " + std::to_string(kMinSide) +
                                      " to " + std::to_string(kMaxSide),
                                  field);
    }
  }
  if (spec.steps != 0 && !workflow_.has_steps) {
    return core::Error::invalid("the workflow of " + config_.name + " fixes the steps; leave steps unset", "steps");
  }
  if (spec.steps < 0 || spec.steps > kMaxSteps) {
    return core::Error::invalid("steps must be from 1 to " + std::to_string(kMaxSteps) + ", got " +
                                    std::to_string(spec.steps),
                                "steps");
  }
  if (spec.guidance != 0.0 && !workflow_.has_cfg) {
    return core::Error::invalid("the workflow of " + config_.name + " fixes the guidance; leave guidance unset",
                                "guidance");
  }
  if (spec.guidance < 0.0 || spec.guidance > kMaxCfg) {
    return core::Error::invalid("guidance (cfg) must be from 0 to 100, got " + std::to_string(spec.guidance),
                                "guidance");
  }
  if (!spec.sampler.empty()) {
    return core::Error::invalid("the workflow of " + config_.name + " fixes the sampler; leave sampler unset",
                                "sampler");
  }
  return core::Ok{};
}

std::string ComfyUIBackend::request_body(const core::GenerationSpec& spec, const std::string& client_id) const {
  return Json{{"prompt", fill_comfy_workflow(workflow_, spec)}, {"client_id", client_id}}.dump();
}

core::Result<std::string> ComfyUIBackend::submit(const core::GenerationSpec& spec, const GenerateContext& context) {
  OutboundRequest request;
  request.method = "POST";
  request.url = config_.base_url + "/prompt";
  request.headers = {"Content-Type: application/json", "Accept: application/json"};
  request.body = request_body(spec, "pixelgate-" + context.request_id);
  request.connect_timeout_ms = config_.connect_timeout_ms;

  const int max_attempts = 1 + config_.max_retries;
  for (int attempt = 1;; ++attempt) {
    const auto left = remaining(context);
    if (left.count() <= 0) return deadline_error("before the backend accepted the workflow");
    request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.timeout_ms, left.count()));
    auto response = perform(request);
    if (!response) {
      core::Error error = std::move(response).error();
      spdlog::warn("backend {}: queueing request {} failed (attempt {} of {}): {}", config_.name,
                   context.request_id, attempt, max_attempts, error.message);
      // Only a failed connection is repeated: the workflow never reached the
      // queue then. After a timeout it may have been queued, and a second
      // POST would run it twice.
      if (error.code != core::ErrorCode::Unavailable) return error;
      if (attempt >= max_attempts) {
        return core::Error::unavailable("the backend is not accepting connections; retry later", 10);
      }
      if (!context.allow_retry()) {
        spdlog::warn("backend {}: not retrying request {}: the backend's retry budget is used up", config_.name,
                     context.request_id);
        return error;
      }
      const auto delay = backoff_delay(attempt, std::chrono::milliseconds(config_.retry_base_delay_ms),
                                       std::chrono::milliseconds(config_.retry_max_delay_ms), std::nullopt);
      if (delay >= remaining(context)) return error;
      spdlog::info("backend {}: retrying request {} in {} ms", config_.name, context.request_id, delay.count());
      std::this_thread::sleep_for(delay);
      continue;
    }

    const Json body = Json::parse(response->body, nullptr, false);
    if (response->status == 200) {
      if (!body.is_object() || !body.contains("prompt_id") || !body["prompt_id"].is_string() ||
          body["prompt_id"].get_ref<const std::string&>().empty()) {
        return core::Error::bad_gateway("the backend's response to POST /prompt has no \"prompt_id\"");
      }
      return body["prompt_id"].get<std::string>();
    }
    // A rejected workflow: {"error": {"type", "message", "details"}, "node_errors": {...}}.
    std::string type;
    std::string message;
    if (body.is_object() && body.contains("error") && body["error"].is_object()) {
      type = body["error"].value("type", std::string());
      message = body["error"].value("message", std::string());
      const std::string details = body["error"].value("details", std::string());
      if (!details.empty()) message += ": " + details;
    }
    const Json node_errors = body.is_object() && body.contains("node_errors") ? body["node_errors"] : Json::object();
    const std::string summary = summarise_node_errors(node_errors);
    spdlog::warn("backend {}: POST /prompt for request {} returned HTTP {}: {} {} {}", config_.name,
                 context.request_id, response->status, type, message, summary);
    if (response->status == 400) {
      // An out-of-range value on an input that pixelgate filled is the
      // caller's to fix. Any other node error, such as a missing model file or
      // an unknown node, means the workflow does not fit this server.
      if (node_errors.is_object()) {
        for (const auto& [id, node] : node_errors.items()) {
          if (!node.is_object() || !node.contains("errors") || !node["errors"].is_array()) continue;
          for (const Json& error : node["errors"]) {
            if (!error.is_object()) continue;
            const std::string error_type = error.value("type", std::string());
            std::string input;
            if (error.contains("extra_info") && error["extra_info"].is_object()) {
              input = error["extra_info"].value("input_name", std::string());
            }
            if ((error_type == "value_bigger_than_max" || error_type == "value_smaller_than_min") &&
                !field_for_input(input).empty()) {
              return core::Error::invalid("the backend rejected the request: " + summary, field_for_input(input));
            }
          }
        }
      }
      std::string reason = type.empty() ? "invalid" : type;
      if (!summary.empty()) {
        reason += ": " + summary;
      } else if (!message.empty()) {
        reason += ": " + message;
      }
      return core::Error::bad_gateway("the backend rejected the workflow (" + reason +
                                      "); the operator must fix the workflow file");
    }
    return core::Error::bad_gateway("the backend returned HTTP " + std::to_string(response->status) +
                                    " for POST /prompt; check the ComfyUI server's log");
  }
}

core::Result<Json> ComfyUIBackend::wait_for_history(const std::string& prompt_id, const GenerateContext& context) {
  OutboundRequest request;
  request.url = config_.base_url + "/history/" + core::percent_encode(prompt_id);
  request.headers = {"Accept: application/json"};
  request.connect_timeout_ms = config_.connect_timeout_ms;
  const auto interval = std::chrono::milliseconds(std::max(1, config_.poll_interval_ms));
  // Bounded by the deadline; the count guards against a clock that does not advance.
  for (long poll = 1; poll < 10'000'000; ++poll) {
    const auto left = remaining(context);
    if (left.count() <= 0) break;
    request.timeout_ms = static_cast<int>(std::min<std::int64_t>(kShortCallTimeoutMs, left.count()));
    auto response = perform(request);
    if (!response) {
      spdlog::warn("backend {}: polling prompt {} for request {} failed: {}", config_.name, prompt_id,
                   context.request_id, response.error().message);
    } else if (response->status != 200) {
      spdlog::warn("backend {}: polling prompt {} for request {} returned HTTP {}", config_.name, prompt_id,
                   context.request_id, response->status);
    } else {
      const Json body = Json::parse(response->body, nullptr, false);
      if (!body.is_object()) {
        return core::Error::bad_gateway("the backend's response to GET /history is not a JSON object");
      }
      // An empty object means the prompt is still queued or running.
      if (body.contains(prompt_id)) {
        const Json& entry = body[prompt_id];
        const Json status = entry.is_object() && entry.contains("status") ? entry["status"] : Json();
        const std::string status_str = status.is_object() ? status.value("status_str", std::string()) : "";
        if (status_str == "error") {
          std::string reason = "the workflow failed";
          if (status.contains("messages") && status["messages"].is_array()) {
            for (const Json& message : status["messages"]) {
              if (!message.is_array() || message.size() < 2 || !message[1].is_object()) continue;
              const Json& data = message[1];
              if (message[0] == "execution_error") {
                reason = "node " + data.value("node_id", std::string("?")) + " (" +
                         data.value("node_type", std::string("?")) + ") raised " +
                         data.value("exception_type", std::string("an error")) + ": " +
                         data.value("exception_message", std::string());
              } else if (message[0] == "execution_interrupted") {
                reason = "the workflow was interrupted at node " + data.value("node_id", std::string("?"));
              }
            }
          }
          spdlog::warn("backend {}: prompt {} for request {} failed: {}", config_.name, prompt_id, context.request_id,
                       reason);
          return core::Error::bad_gateway("the backend failed to run the workflow: " + reason);
        }
        const bool completed = status.is_object() && status.value("completed", false);
        // Servers from before the history kept a status report a finished
        // prompt only through its outputs.
        const bool legacy_done = !status.is_object() && entry.is_object() && entry.contains("outputs") &&
                                 entry["outputs"].is_object() && !entry["outputs"].empty();
        if (completed || status_str == "success" || legacy_done) {
          if (!entry.contains("outputs") || !entry["outputs"].is_object()) {
            return core::Error::bad_gateway("the backend's history for the prompt has no \"outputs\"");
          }
          return entry["outputs"];
        }
      }
    }
    const auto wait = std::min(interval, remaining(context));
    if (wait.count() <= 0) break;
    std::this_thread::sleep_for(wait);
  }
  cancel(prompt_id, context);
  return deadline_error("while the backend ran the workflow");
}

core::Result<std::string> ComfyUIBackend::fetch_image(const Json& outputs, const GenerateContext& context) {
  // The first image of type "output" (saved by SaveImage) wins; previews
  // ("temp") are used only when the workflow saves nothing.
  const Json* chosen = nullptr;
  for (const auto& [id, output] : outputs.items()) {
    if (!output.is_object() || !output.contains("images") || !output["images"].is_array()) continue;
    for (const Json& image : output["images"]) {
      if (!image.is_object() || !image.contains("filename") || !image["filename"].is_string()) continue;
      if (image.value("type", std::string()) == "output") {
        chosen = &image;
        break;
      }
      if (chosen == nullptr) chosen = &image;
    }
    if (chosen != nullptr && chosen->value("type", std::string()) == "output") break;
  }
  if (chosen == nullptr) return core::Error::bad_gateway("the backend's workflow produced no image output");

  OutboundRequest request;
  request.url = config_.base_url + "/view?filename=" + core::percent_encode(chosen->value("filename", std::string())) +
                "&subfolder=" + core::percent_encode(chosen->value("subfolder", std::string())) +
                "&type=" + core::percent_encode(chosen->value("type", std::string("output")));
  request.connect_timeout_ms = config_.connect_timeout_ms;
  request.timeout_ms = static_cast<int>(std::min<std::int64_t>(config_.download_timeout_ms, remaining(context).count()));
  if (request.timeout_ms <= 0) return deadline_error("before the image was fetched");
  auto response = perform(request);
  if (!response) return std::move(response).error();
  if (response->status != 200) {
    spdlog::warn("backend {}: fetching the image for request {} returned HTTP {}", config_.name, context.request_id,
                 response->status);
    return core::Error::bad_gateway("fetching the generated image from /view failed with HTTP " +
                                    std::to_string(response->status));
  }
  return std::move(response->body);
}

void ComfyUIBackend::cancel(const std::string& prompt_id, const GenerateContext& context) {
  // Drop the prompt from the queue, and stop it if it already runs; the
  // prompt_id keeps /interrupt from stopping another client's prompt.
  for (const auto& [path, body] : {std::pair{"/queue", Json{{"delete", Json::array({prompt_id})}}},
                                   std::pair{"/interrupt", Json{{"prompt_id", prompt_id}}}}) {
    OutboundRequest request;
    request.method = "POST";
    request.url = config_.base_url + path;
    request.headers = {"Content-Type: application/json"};
    request.body = body.dump();
    request.connect_timeout_ms = config_.connect_timeout_ms;
    request.timeout_ms = 2'000;
    auto response = perform(request);
    spdlog::info("backend {}: cancelled prompt {} for request {} through {}: {}", config_.name, prompt_id,
                 context.request_id, path,
                 response ? "HTTP " + std::to_string(response->status) : response.error().message);
  }
}

core::Result<GeneratedImage> ComfyUIBackend::generate(const core::GenerationSpec& spec, const GenerateContext& context) {
  auto prompt_id = submit(spec, context);
  if (!prompt_id) return std::move(prompt_id).error();
  auto outputs = wait_for_history(*prompt_id, context);
  if (!outputs) return std::move(outputs).error();
  auto bytes = fetch_image(*outputs, context);
  if (!bytes) {
    spdlog::warn("backend {}: request {}: {}", config_.name, context.request_id, bytes.error().message);
    return std::move(bytes).error();
  }
  GeneratedImage image;
  image.bytes = std::move(bytes).value();
  image.provider_request_id = *prompt_id;
  return image;
}

}  // namespace pixelgate::backends
