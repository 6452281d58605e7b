#include "api/app.hpp"

#include <charconv>
#include <sstream>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "api/cold_start_response.hpp"
#include "api/errors.hpp"
#include "api/image_query.hpp"
#include "api/jobs_route.hpp"
#include "api/playground.hpp"
#include "core/text.hpp"
#include "delivery/image_response.hpp"
#include "generation/resolution_cache.hpp"
#include "storage/object_store.hpp"

namespace pixelgate::api {
namespace {

using Clock = std::chrono::steady_clock;

double elapsed_ms(Clock::time_point since) {
  return std::chrono::duration<double, std::milli>(Clock::now() - since).count();
}

// Appends `ms` with two decimals. It uses std::to_chars, because snprintf
// with "%.2f" took about 13% of the instructions of a cache hit.
void append_ms(std::string& out, double ms) {
  char text[32];
  const auto end = std::to_chars(text, text + sizeof(text), ms, std::chars_format::fixed, 2).ptr;
  out.append(text, end);
}

std::string server_timing(double resolve_ms, const generation::StageTimings& t, double total_ms) {
  std::string out;
  out.reserve(96);
  out += "resolve;dur=";
  append_ms(out, resolve_ms);
  auto add = [&out](std::string_view name, double ms) {
    if (ms <= 0) return;
    out += ", ";
    out += name;
    out += ";dur=";
    append_ms(out, ms);
  };
  add("queue", t.queue_ms);
  add("lookup", t.lookup_ms);
  add("generate", t.generate_ms);
  add("validate", t.validate_ms);
  add("store", t.store_ms);
  out += ", total;dur=";
  append_ms(out, total_ms);
  return out;
}

http::Response to_http(delivery::ImageResponse&& image) {
  http::Response response;
  response.status = image.status;
  response.headers.reserve(image.headers.size() + 6);
  for (auto& [name, value] : image.headers) response.headers.push_back({std::move(name), std::move(value)});
  response.body = std::move(image.body);
  return response;
}

http::Response json_response(int status, const nlohmann::json& body) {
  http::Response response;
  response.status = status;
  response.set_body(body.dump() + "\n", "application/json");
  response.set_header("Cache-Control", "no-store");
  return response;
}

http::Response method_not_allowed(const std::string& allowed) {
  auto response = error_response({core::ErrorCode::MethodNotAllowed, "method not allowed; use " + allowed, {}, 0});
  response.set_header("Allow", allowed);
  return response;
}

std::string_view extension_for(const std::string& content_type) {
  if (content_type == "image/png") return ".png";
  if (content_type == "image/jpeg") return ".jpg";
  if (content_type == "image/webp") return ".webp";
  return "";
}

// Percent-encodes an object name for a URL path, keeping its slashes.
std::string encode_path(std::string_view name) {
  std::string out;
  std::size_t start = 0;
  while (true) {
    const std::size_t slash = name.find('/', start);
    out += core::percent_encode(name.substr(start, slash - start));
    if (slash == std::string_view::npos) break;
    out += '/';
    start = slash + 1;
  }
  return out;
}

// Tags for CDNs that purge by tag (Fastly's Surrogate-Key, Varnish xkey):
// "key:<image key>" and, for template responses, "template:<name>", which
// `pixelgate cache purge` prints. Names with other characters get no tag.
std::string surrogate_keys(const std::string& key, const std::string& template_name) {
  std::string out;
  out.reserve(4 + key.size() + 10 + template_name.size());
  out += "key:";
  out += key;
  bool safe = !template_name.empty() && template_name.size() <= 100;
  for (char c : template_name) {
    safe = safe && (std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.');
  }
  if (safe) {
    out += " template:";
    out += template_name;
  }
  return out;
}

}  // namespace

App::App(AppContext context) : context_(context) {}

void App::handle(http::Request&& request, http::Responder responder) {
  try {
    const std::string& path = request.path;
    const bool read_method = request.method == "GET" || request.method == "HEAD";

    if (path == "/generate-image") {
      if (!read_method) return responder.send(method_not_allowed("GET, HEAD"));
      return handle_image(request, responder, {});
    }
    if (path.rfind("/v1/images/", 0) == 0 && path != "/v1/images/generations") {
      if (!read_method) return responder.send(method_not_allowed("GET, HEAD"));
      auto name = core::percent_decode(std::string_view(path).substr(11), false);
      if (!name || name->empty() || name->find('/') != std::string::npos) {
        return responder.send(error_response(core::Error::not_found("no such route: " + path)));
      }
      return handle_image(request, responder, *name);
    }
    if (path.rfind("/images/", 0) == 0) {
      if (!read_method) return responder.send(method_not_allowed("GET, HEAD"));
      return handle_stored_image(request, responder, std::string_view(path).substr(8));
    }
    if (path == "/v1/images/generations") {
      if (request.method != "POST") return responder.send(method_not_allowed("POST"));
      return handle_openai_generations(request, responder);
    }
    if (path == "/v1/jobs" || path.rfind("/v1/jobs/", 0) == 0) {
      if (!context_.jobs) {
        return responder.send(
            error_response(core::Error::not_found("jobs are disabled on this server ([jobs] enabled = false)")));
      }
      if (path == "/v1/jobs") {
        if (request.method != "POST") return responder.send(method_not_allowed("POST"));
        return handle_job_create(request, responder);
      }
      if (!read_method) return responder.send(method_not_allowed("GET, HEAD"));
      return handle_job_get(request, responder, std::string_view(path).substr(9));
    }
    if (path == "/admin/status") {
      if (!read_method) return responder.send(method_not_allowed("GET, HEAD"));
      return handle_admin_status(request, responder);
    }
    if (path == "/healthz") {
      if (!read_method) return responder.send(method_not_allowed("GET, HEAD"));
      return responder.send(json_response(200, {{"status", "ok"}}));
    }
    if (path == "/readyz") {
      if (!read_method) return responder.send(method_not_allowed("GET, HEAD"));
      return handle_ready(responder);
    }
    if (path == "/") {
      if (!read_method) return responder.send(method_not_allowed("GET, HEAD"));
      http::Response response;
      response.set_body(std::string(playground_html()), "text/html; charset=utf-8");
      response.set_header("Cache-Control", "no-cache");
      return responder.send(std::move(response));
    }
    responder.send(error_response(core::Error::not_found("no such route: " + path)));
  } catch (const std::exception& error) {
    spdlog::error("api: request {} to {} failed with an exception: {}", request.request_id, request.path, error.what());
    responder.send(error_response(core::Error::internal("internal error; the request id is " + request.request_id)));
  }
}

std::optional<admission::Admission> App::admit(const http::Request& request, admission::RouteKind route,
                                               const http::Responder& responder) {
  admission::RequestInfo info;
  info.path = request.path;
  info.query = request.query;
  info.authorization = request.header("Authorization").value_or("");
  info.x_forwarded_for = request.header("X-Forwarded-For").value_or("");
  info.forwarded = request.header("Forwarded").value_or("");
  info.remote_address = request.remote_address;
  admission::Admission admission = context_.gate.admit(info, route);
  if (!admission.error) return admission;

  auto response = error_response(*admission.error);
  for (auto& [name, value] : admission.headers) response.set_header(name, value);
  responder.send(std::move(response));
  return std::nullopt;
}

void App::handle_image(const http::Request& request, http::Responder responder, std::string_view template_name) {
  const auto started = Clock::now();
  auto admitted = admit(request, admission::RouteKind::ImageUrl, responder);
  if (!admitted) return;

  // The raw query is the cache id: admission has already checked it, and
  // the same URL always resolves the same way.
  const std::string resolution_id = std::string(template_name) + "?" + request.query;
  std::shared_ptr<const generation::ResolvedRequest> resolved = context_.resolutions.find(resolution_id);
  if (!resolved) {
    if (auto loaded = admission::load_params(*admitted, request.query); !loaded) {
      return responder.send(error_response(loaded.error()));
    }
    auto parsed = parse_image_params(admitted->params, template_name.empty());
    if (!parsed) return responder.send(error_response(parsed.error()));
    if (!template_name.empty()) parsed->template_name = std::string(template_name);
    auto fresh = context_.resolver.resolve(*parsed);
    if (!fresh) return responder.send(error_response(fresh.error()));
    resolved = std::make_shared<const generation::ResolvedRequest>(std::move(fresh).value());
    if (!resolved->spec.random_seed) context_.resolutions.insert(resolution_id, resolved);
  }
  if (admitted->public_templates_only && !context_.gate.is_public_template(resolved->spec.template_name)) {
    return responder.send(error_response({core::ErrorCode::PermissionDenied,
                                          "template \"" + resolved->spec.template_name +
                                              "\" needs a signed URL or an API key; only the public templates "
                                              "may be used without one",
                                          "template", 0}));
  }
  const double resolve_ms = elapsed_ms(started);

  const bool random = resolved->spec.random_seed;
  const auto policy = random ? delivery::CachePolicy::NoStore : delivery::CachePolicy::Immutable;
  const std::string_view if_none_match = request.header("If-None-Match").value_or("");
  const bool placeholder = resolved->backend->is_placeholder();
  const std::string& key = resolved->key;

  // The key fixes the bytes, so a client that has this ETag already has
  // them: respond 304 without touching the cache.
  if (!random && !if_none_match.empty()) {
    std::string etag = delivery::etag_for_key(key);
    if (delivery::if_none_match_matches(if_none_match, etag)) {
      http::Response response;
      response.status = 304;
      response.headers.reserve(3);
      response.headers.push_back({"ETag", std::move(etag)});
      response.headers.push_back({"Cache-Control", request.header("Authorization").value_or("").empty()
                                                       ? "public, max-age=31536000, immutable"
                                                       : "private, max-age=31536000, immutable"});
      response.headers.push_back({"X-Pixelgate-Cache", "hit"});
      return responder.send(std::move(response));
    }
  }

  // With `Prefer: wait=N`, a generation that takes longer becomes a job.
  std::shared_ptr<DeferredReply> deferral;
  if (request.header("Prefer")) {
    if (auto loaded = admission::load_params(*admitted, request.query); !loaded) {
      return responder.send(error_response(loaded.error()));
    }
    nlohmann::json stored_params = nlohmann::json::array();
    for (const auto& [name, value] : admitted->params) stored_params.push_back({name, value});
    const nlohmann::json stored_request = {{"route", "image"},
                                           {"template", std::string(template_name)},
                                           {"params", std::move(stored_params)},
                                           {"public_templates_only", admitted->public_templates_only}};
    deferral = defer_after_wait(request, *admitted, stored_request.dump(), responder);
  }

  context_.images.fetch_or_generate(
      *resolved, request.request_id, admitted->caller,
      [this, responder, policy, if_none_match = std::string(if_none_match), placeholder, resolve_ms, started, key, deferral,
       template_tag = resolved->spec.template_name,
       cold_start_placeholder_spec = resolved->cold_start == "placeholder" ? std::optional(resolved->spec) : std::nullopt,
       private_response = !request.header("Authorization").value_or("").empty()](core::Result<generation::ImageOutcome> outcome) {
        if (deferral && deferral->hand_over(to_job_images(outcome))) return;
        if (!outcome && cold_start_placeholder_spec && outcome.error().code == core::ErrorCode::ColdStart) {
          if (auto card = cold_start_placeholder(outcome.error(), *cold_start_placeholder_spec)) {
            return responder.send(std::move(*card));
          }
        }
        if (!outcome) return responder.send(error_response(outcome.error()));
        // A fallback's image is not the one this URL names, so no cache may
        // keep it as the response. The next request tries the primary again.
        const bool fallback = !outcome->fallback_backend.empty();
        const auto effective_policy = fallback ? delivery::CachePolicy::NoStore : policy;
        auto redirect = redirect_to(*outcome->image, effective_policy);
        auto response = redirect ? std::move(*redirect)
                                 : to_http(delivery::build_image_response(*outcome->image, effective_policy, if_none_match));
        attach_file(response, outcome->image);
        // None of these are set by the image or redirect response above.
        response.headers.push_back({"X-Pixelgate-Cache", std::string(generation::to_string(outcome->state))});
        response.headers.push_back({"X-Pixelgate-Key", outcome->image->key});
        response.headers.push_back({"Surrogate-Key", surrogate_keys(outcome->image->key, template_tag)});
        if (fallback) response.headers.push_back({"X-Pixelgate-Fallback", outcome->fallback_backend});
        response.headers.push_back(
            {"Server-Timing", server_timing(resolve_ms, outcome->timings, elapsed_ms(started))});
        if (outcome->state == generation::CacheState::Miss) {
          char cost[32];
          std::snprintf(cost, sizeof(cost), "%.6f", outcome->cost_usd);
          response.set_header("X-Pixelgate-Cost-USD", cost);
        }
        if (placeholder) response.set_header("X-Pixelgate-Warning", "placeholder image, not AI-generated");
        // A shared cache must not hand a response that needed an API key to
        // callers without one; the browser may still keep it.
        if (private_response) {
          for (auto& header : response.headers) {
            if (header.name == "Cache-Control" && header.value.rfind("public", 0) == 0) {
              header.value.replace(0, 6, "private");
            }
          }
        }
        responder.send(std::move(response));
      });
  if (deferral) deferral->arm();
}

void App::handle_stored_image(const http::Request& request, http::Responder responder, std::string_view name) {
  // Accept "<key>" and "<key>.<extension>"; the extension is for humans and
  // file names, the content type comes from the bytes.
  std::string key(name);
  if (key.size() > 64 && key[64] == '.') {
    const std::string extension = key.substr(65);
    if (extension == "png" || extension == "jpg" || extension == "jpeg" || extension == "webp") key.resize(64);
  }
  if (!storage::is_valid_key(key)) {
    return responder.send(error_response(core::Error::not_found("no image is stored under \"" + std::string(name) + "\"")));
  }
  const std::string_view if_none_match = request.header("If-None-Match").value_or("");
  // A hit in memory gets its response here, without a trip through the service.
  if (auto image = context_.images.find_hot(key)) {
    return responder.send(stored_image_response(image, if_none_match));
  }
  context_.images.fetch_stored(key, [this, responder, if_none_match = std::string(if_none_match)](
                                        core::Result<generation::ImageOutcome> outcome) {
    if (!outcome) return responder.send(error_response(outcome.error()));
    responder.send(stored_image_response(outcome->image, if_none_match));
  });
}

http::Response App::stored_image_response(const std::shared_ptr<const storage::CachedImage>& image,
                                          std::string_view if_none_match) {
  auto redirect = redirect_to(*image, delivery::CachePolicy::Immutable);
  auto response = redirect ? std::move(*redirect)
                           : to_http(delivery::build_image_response(*image, delivery::CachePolicy::Immutable,
                                                                    if_none_match));
  attach_file(response, image);
  response.headers.push_back({"X-Pixelgate-Cache", "hit"});
  response.headers.push_back({"X-Pixelgate-Key", image->key});
  response.headers.push_back({"Surrogate-Key", surrogate_keys(image->key, {})});
  if (image->placeholder) response.headers.push_back({"X-Pixelgate-Warning", "placeholder image, not AI-generated"});
  return response;
}

void App::attach_file(http::Response& response, const std::shared_ptr<const storage::CachedImage>& image) {
  // Only a response whose body is the image itself may be sent from its file.
  if (response.status == 200 && response.body && response.body == image->bytes) {
    response.file = context_.images.sendable_file(image);
  }
}

std::optional<http::Response> App::redirect_to(const storage::CachedImage& image,
                                               delivery::CachePolicy policy) const {
  const auto& storage = context_.config.storage;
  if (storage.delivery != "redirect") return std::nullopt;
  http::Response response;
  response.status = 302;
  if (!storage.redirect_base_url.empty()) {
    // A CDN or public bucket serves the object under its store name forever.
    std::string name = context_.store.object_name(image.key);
    response.set_header("Location", storage.redirect_base_url + "/" + encode_path(name));
    response.set_header("Cache-Control", policy == delivery::CachePolicy::Immutable
                                             ? "public, max-age=31536000, immutable"
                                             : "no-store");
  } else {
    const auto expires = std::chrono::seconds(storage.presign_seconds);
    auto url = context_.store.presigned_url(image.key, expires);
    if (!url) return std::nullopt;
    response.set_header("Location", *url);
    // A cached redirect must not outlive the URL it points at.
    response.set_header("Cache-Control", policy == delivery::CachePolicy::Immutable
                                             ? "public, max-age=" + std::to_string(storage.presign_seconds / 2)
                                             : "no-store");
  }
  return response;
}

void App::handle_ready(http::Responder responder) {
  auto& store = context_.store;
  const std::size_t backend_count = context_.backends.size();
  const auto shared_state = context_.check_shared_state;
  const bool submitted = context_.workers.try_submit([&store, backend_count, shared_state, responder] {
    auto writable = store.check_writable();
    nlohmann::json body = {{"storage", store.describe()}, {"backends", backend_count}};
    if (writable && shared_state) {
      writable = shared_state();
      body["shared_state"] = writable ? "ok" : "unreachable";
    }
    if (!writable) {
      spdlog::warn("readyz: not ready: {}", writable.error().message);
      body["status"] = "not ready";
      body["reason"] = writable.error().message;
      auto response = json_response(503, body);
      response.set_header("Retry-After", "5");
      return responder.send(std::move(response));
    }
    if (backend_count == 0) {
      body["status"] = "not ready";
      body["reason"] = "no backend is configured";
      return responder.send(json_response(503, body));
    }
    body["status"] = "ready";
    responder.send(json_response(200, body));
  });
  if (!submitted) responder.send(error_response(core::Error::unavailable("the worker queue is full", 1)));
}

std::string App::image_url(std::string_view host_header, const std::string& key,
                           const std::string& content_type) const {
  return base_url(host_header) + "/images/" + key + std::string(extension_for(content_type));
}

std::string App::base_url(std::string_view host_header) const {
  std::string base = context_.config.server.public_base_url;
  if (!base.empty()) return base;
  const std::string host(host_header);
  bool host_ok = !host.empty() && host.size() < 256;
  for (char c : host) {
    host_ok = host_ok && (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == ':' ||
                          c == '[' || c == ']');
  }
  return "http://" + (host_ok ? host : context_.config.server.host + ":" + std::to_string(context_.config.server.port));
}

}  // namespace pixelgate::api
