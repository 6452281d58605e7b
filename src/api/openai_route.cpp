// POST /v1/images/generations, shaped like OpenAI's Images API so that
// OpenAI's client libraries work against pixelgate with another base URL.
#include <atomic>
#include <ctime>
#include <set>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "api/app.hpp"
#include "api/errors.hpp"
#include "api/generations_request.hpp"
#include "api/image_query.hpp"
#include "api/jobs_route.hpp"
#include "core/hash.hpp"
#include "generation/cache_key.hpp"

namespace pixelgate::api {
namespace {

using Json = nlohmann::json;

const std::set<std::string> kKnownFields = {"prompt", "model",  "n",    "size",          "response_format",
                                            "quality", "style", "user", "output_format", "seed"};

core::Result<std::string> string_field(const Json& body, const std::string& name) {
  if (!body.contains(name) || body[name].is_null()) return std::string{};
  if (!body[name].is_string()) return core::Error::invalid(name + " must be a string", name);
  return body[name].get<std::string>();
}

}  // namespace

core::Result<Json> parse_json_object(const std::string& text) {
  Json body = Json::parse(text, nullptr, false);
  if (body.is_discarded()) return core::Error::invalid("the request body is not valid JSON");
  if (!body.is_object()) return core::Error::invalid("the request body must be a JSON object");
  return body;
}

core::Result<GenerationsRequest> parse_generations_body(const Json& body, const config::Config& config,
                                                        const generation::Resolver& resolver) {
  for (const auto& [name, value] : body.items()) {
    if (!kKnownFields.count(name)) return core::Error::invalid("unrecognized request argument: " + name, name);
  }

  GenerationsRequest request;
  auto prompt = string_field(body, "prompt");
  if (!prompt) return std::move(prompt).error();
  request.image.prompt = std::move(*prompt);

  // "model" names a pixelgate template, or the default template's backend model.
  auto model = string_field(body, "model");
  if (!model) return std::move(model).error();
  if (!model->empty()) {
    if (resolver.has_template(*model)) {
      request.image.template_name = *model;
    } else {
      request.image.model = *model;
    }
  }

  if (body.contains("n") && !body["n"].is_null()) {
    if (!body["n"].is_number_integer()) return core::Error::invalid("n must be an integer", "n");
    const auto n = body["n"].get<std::int64_t>();
    if (n < 1 || n > config.limits.max_batch) {
      return core::Error::invalid("n must be between 1 and " + std::to_string(config.limits.max_batch) + ", got " +
                                      std::to_string(n),
                                  "n");
    }
    request.n = static_cast<int>(n);
  }

  auto size = string_field(body, "size");
  if (!size) return std::move(size).error();
  if (!size->empty() && *size != "auto") {
    int width = 0;
    int height = 0;
    if (!parse_size(*size, width, height)) {
      return core::Error::invalid("size must look like 1024x1024 or be \"auto\", got \"" + *size + "\"", "size");
    }
    request.image.width = width;
    request.image.height = height;
  }

  auto format = string_field(body, "response_format");
  if (!format) return std::move(format).error();
  if (!format->empty() && *format != "url" && *format != "b64_json") {
    return core::Error::invalid("response_format must be \"url\" or \"b64_json\", got \"" + *format + "\"",
                                "response_format");
  }
  request.b64 = *format == "b64_json";

  auto output_format = string_field(body, "output_format");
  if (!output_format) return std::move(output_format).error();
  if (!output_format->empty() && *output_format != "png") {
    return core::Error::invalid("output_format: only \"png\" is supported, got \"" + *output_format + "\"",
                                "output_format");
  }

  auto quality = string_field(body, "quality");
  if (!quality) return std::move(quality).error();
  if (*quality != "auto") request.image.quality = std::move(*quality);
  auto style = string_field(body, "style");
  if (!style) return std::move(style).error();
  request.image.style = std::move(*style);
  auto user = string_field(body, "user");
  if (!user) return std::move(user).error();

  if (body.contains("seed") && !body["seed"].is_null()) {
    if (!body["seed"].is_number_unsigned()) return core::Error::invalid("seed must be a non-negative integer", "seed");
    request.image.seed = body["seed"].get<std::uint64_t>();
  }
  return request;
}

core::Result<std::vector<generation::ResolvedRequest>> resolve_generations(const GenerationsRequest& request,
                                                                           const generation::Resolver& resolver) {
  // Image i > 0 of a batch gets the derived seed plus i, so a batch is as
  // reproducible as a single image and each of its images has its own key.
  std::vector<generation::ResolvedRequest> resolved_list;
  for (int i = 0; i < request.n; ++i) {
    generation::ImageRequest image = request.image;
    if (i > 0 && !image.seed) {
      auto first = resolver.resolve(request.image);
      if (!first) return std::move(first).error();
      image.seed = (first->spec.seed + static_cast<std::uint64_t>(i)) % 4294967295u;
    } else if (i > 0) {
      image.seed = (*image.seed + static_cast<std::uint64_t>(i)) % 4294967295u;
    }
    auto resolved = resolver.resolve(image);
    if (!resolved) return std::move(resolved).error();
    resolved_list.push_back(std::move(*resolved));
  }
  return resolved_list;
}

namespace {

// Collects the n images of one request and responds once all are in.
struct Batch {
  explicit Batch(int n) : items(static_cast<std::size_t>(n)), remaining(n) {}
  std::mutex mutex;
  std::vector<std::shared_ptr<const storage::CachedImage>> items;
  std::vector<std::string> revised_prompts;
  std::optional<core::Error> error;
  std::atomic<int> remaining;
};

}  // namespace

void App::handle_openai_generations(const http::Request& request, http::Responder responder) {
  auto admitted = admit(request, admission::RouteKind::JsonApi, responder);
  if (!admitted) return;
  const auto content_type = request.header("Content-Type").value_or("");
  if (content_type.find("application/json") == std::string_view::npos) {
    return responder.send(error_response(core::Error::invalid("Content-Type must be application/json")));
  }
  auto body = parse_json_object(request.body);
  if (!body) return responder.send(error_response(body.error()));
  auto parsed = parse_generations_body(*body, context_.config, context_.resolver);
  if (!parsed) return responder.send(error_response(parsed.error()));
  auto resolved = resolve_generations(*parsed, context_.resolver);
  if (!resolved) return responder.send(error_response(resolved.error()));
  std::vector<generation::ResolvedRequest> resolved_list = std::move(resolved).value();

  auto batch = std::make_shared<Batch>(parsed->n);
  const bool b64 = parsed->b64;
  const auto rate_headers = admitted->headers;
  const std::string base_request_id = request.request_id;
  // The URLs are built from this request's Host header, copied for the callbacks.
  auto url_for = [this, host = std::string(request.header("Host").value_or(""))](const storage::CachedImage& image) {
    return image_url(host, image.key, image.content_type);
  };
  // With `Prefer: wait=N`, a batch that takes longer becomes a job.
  std::shared_ptr<DeferredReply> deferral;
  if (request.header("Prefer")) {
    deferral = defer_after_wait(request, *admitted, Json{{"route", "generations"}, {"body", *body}}.dump(), responder);
  }

  for (std::size_t i = 0; i < resolved_list.size(); ++i) {
    context_.images.fetch_or_generate(
        resolved_list[i], base_request_id, admitted->caller,
        [batch, i, responder, b64, url_for, rate_headers, deferral](core::Result<generation::ImageOutcome> outcome) {
          {
            std::lock_guard lock(batch->mutex);
            if (!outcome) {
              if (!batch->error) batch->error = outcome.error();
            } else {
              batch->items[i] = outcome->image;
            }
          }
          if (batch->remaining.fetch_sub(1) != 1) return;

          if (deferral) {
            core::Result<std::vector<jobs::JobImage>> result = std::vector<jobs::JobImage>{};
            if (batch->error) {
              result = *batch->error;
            } else {
              for (const auto& image : batch->items) result->push_back({image->key, image->content_type});
            }
            if (deferral->hand_over(result)) return;
          }
          if (batch->error) return responder.send(error_response(*batch->error));
          Json data = Json::array();
          for (const auto& image : batch->items) {
            Json item;
            if (b64) {
              item["b64_json"] = core::base64_encode(*image->bytes);
            } else {
              item["url"] = url_for(*image);
            }
            const Json metadata = Json::parse(image->metadata_json, nullptr, false);
            if (metadata.is_object() && metadata.value("revised_prompt", "") != "") {
              item["revised_prompt"] = metadata["revised_prompt"];
            }
            data.push_back(std::move(item));
          }
          http::Response response;
          response.set_body(Json{{"created", static_cast<std::int64_t>(std::time(nullptr))}, {"data", data}}.dump(),
                            "application/json");
          response.set_header("Cache-Control", "no-store");
          for (const auto& [name, value] : rate_headers) response.set_header(name, value);
          responder.send(std::move(response));
        });
  }
  if (deferral) deferral->arm();
}

}  // namespace pixelgate::api
