#include "api/jobs_route.hpp"

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "api/app.hpp"
#include "api/errors.hpp"
#include "api/generations_request.hpp"
#include "api/image_query.hpp"
#include "core/text.hpp"
#include "jobs/address_guard.hpp"

namespace pixelgate::api {
namespace {

using Json = nlohmann::json;

std::string_view trim(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

http::Response json_reply(int status, const Json& body) {
  http::Response response;
  response.status = status;
  response.set_body(body.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n", "application/json");
  response.set_header("Cache-Control", "no-store");
  return response;
}

std::string status_url(const std::string& base, const std::string& job_id) { return base + "/v1/jobs/" + job_id; }

// The job as GET /v1/jobs/{id} and POST /v1/jobs return it.
Json job_json(const jobs::Job& job, std::optional<std::int64_t> position, const std::string& base) {
  Json body = {{"id", job.id},
               {"status", std::string(jobs::to_string(job.status))},
               {"status_url", status_url(base, job.id)},
               {"created_at", job.created_unix},
               {"updated_at", job.updated_unix}};
  if (position) body["position"] = *position;
  // A job that a rate limit sent back to the queue waits until then.
  if (job.status == jobs::JobStatus::Queued && job.deferrals > 0) {
    body["not_before"] = job.not_before_unix;
  }
  if (job.status == jobs::JobStatus::Succeeded) {
    Json images = Json::array();
    for (const auto& image : job.images) {
      images.push_back({{"key", image.key}, {"url", jobs::stored_image_url(base, image)}});
    }
    body["images"] = std::move(images);
  }
  if (job.status == jobs::JobStatus::Failed) {
    const Json error = Json::parse(job.error_json, nullptr, false);
    body["error"] = error.is_object() ? error : Json{{"code", "internal"}, {"message", "unknown error"}, {"param", nullptr}};
  }
  if (!job.webhook_url.empty()) body["webhook"] = {{"state", std::string(jobs::to_string(job.webhook_state))},
                                                   {"attempts", job.webhook_attempts}};
  return body;
}

// Readers of GET /v1/jobs are admitted like JSON API callers: with an API
// key, or anyone in open mode. Other callers could not read a job, so they
// get no 202 either.
bool can_read_jobs(const core::GenerationCaller& caller, const config::Config& config) {
  return caller.principal.rfind("key:", 0) == 0 || config.security.mode == "open";
}

core::Result<std::vector<generation::ResolvedRequest>> resolve_image_route(const Json& request,
                                                                           const generation::Resolver& resolver,
                                                                           const admission::Gate& gate) {
  const std::string template_name = request.value("template", "");
  core::QueryParams params;
  const Json list = request.value("params", Json::array());
  for (const auto& pair : list) {
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string()) {
      return core::Error::internal("the stored job request is damaged");
    }
    params.emplace_back(pair[0].get<std::string>(), pair[1].get<std::string>());
  }
  auto parsed = parse_image_params(params, template_name.empty());
  if (!parsed) return std::move(parsed).error();
  if (!template_name.empty()) parsed->template_name = template_name;
  auto resolved = resolver.resolve(*parsed);
  if (!resolved) return std::move(resolved).error();
  if (request.value("public_templates_only", false) && !gate.is_public_template(resolved->spec.template_name)) {
    return core::Error{core::ErrorCode::PermissionDenied,
                       "template \"" + resolved->spec.template_name + "\" is no longer public", "template", 0};
  }
  std::vector<generation::ResolvedRequest> list_out;
  list_out.push_back(std::move(*resolved));
  return list_out;
}

}  // namespace

std::optional<int> parse_prefer_wait(std::string_view header) {
  // Prefer: preference *( "," preference ), each `token [= word] *(; param)`.
  while (!header.empty()) {
    const std::size_t comma = header.find(',');
    std::string_view element = header.substr(0, comma);
    header = comma == std::string_view::npos ? std::string_view{} : header.substr(comma + 1);
    element = element.substr(0, element.find(';'));
    const std::size_t equals = element.find('=');
    if (equals == std::string_view::npos) continue;
    if (core::to_lower_ascii(trim(element.substr(0, equals))) != "wait") continue;
    std::string_view value = trim(element.substr(equals + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"') value = value.substr(1, value.size() - 2);
    if (value.empty() || value.size() > 9) return std::nullopt;
    int seconds = 0;
    for (char c : value) {
      if (c < '0' || c > '9') return std::nullopt;
      seconds = seconds * 10 + (c - '0');
    }
    return seconds;
  }
  return std::nullopt;
}

core::Result<std::string> parse_idempotency_key(std::string_view header) {
  std::string_view value = trim(header);
  std::string key;
  if (!value.empty() && value.front() == '"') {
    // A structured-field string (RFC 8941): quotes, with \" and \\ escapes.
    if (value.size() < 2 || value.back() != '"') {
      return core::Error::invalid("Idempotency-Key: the quoted string has no closing quote", "Idempotency-Key");
    }
    value = value.substr(1, value.size() - 2);
    for (std::size_t i = 0; i < value.size(); ++i) {
      if (value[i] == '\\' && i + 1 < value.size() && (value[i + 1] == '"' || value[i + 1] == '\\')) ++i;
      key.push_back(value[i]);
    }
  } else {
    key = std::string(value);
  }
  if (key.empty() || key.size() > 255) {
    return core::Error::invalid("Idempotency-Key must be 1 to 255 characters, got " + std::to_string(key.size()),
                                "Idempotency-Key");
  }
  for (char c : key) {
    if (c < 0x20 || c > 0x7E) {
      return core::Error::invalid("Idempotency-Key may contain printable ASCII characters only", "Idempotency-Key");
    }
  }
  return key;
}

jobs::JobResolver make_job_resolver(const config::Config& config, const generation::Resolver& resolver,
                                    const admission::Gate& gate) {
  return [&config, &resolver, &gate](const jobs::Job& job) -> core::Result<std::vector<generation::ResolvedRequest>> {
    const Json request = Json::parse(job.request_json, nullptr, false);
    if (!request.is_object()) return core::Error::internal("the stored job request is not JSON");
    const std::string route = request.value("route", "");
    if (route == "image") return resolve_image_route(request, resolver, gate);
    if (route != "generations" || !request.contains("body") || !request["body"].is_object()) {
      return core::Error::internal("the stored job request has an unknown shape");
    }
    auto parsed = parse_generations_body(request["body"], config, resolver);
    if (!parsed) return std::move(parsed).error();
    return resolve_generations(*parsed, resolver);
  };
}

core::Result<std::vector<jobs::JobImage>> to_job_images(const core::Result<generation::ImageOutcome>& outcome) {
  if (!outcome) return outcome.error();
  return std::vector<jobs::JobImage>{{outcome->image->key, outcome->image->content_type}};
}

DeferredReply::DeferredReply(jobs::JobRunner& runner, jobs::NewJob job, int wait_seconds, std::string status_base,
                             http::Responder responder, std::string request_id)
    : runner_(runner),
      job_(std::move(job)),
      wait_seconds_(wait_seconds),
      status_base_(std::move(status_base)),
      responder_(std::move(responder)),
      request_id_(std::move(request_id)) {}

void DeferredReply::arm() {
  const auto due = std::chrono::steady_clock::now() + std::chrono::seconds(wait_seconds_);
  if (!runner_.schedule(due, [self = shared_from_this()] { self->on_deadline(); })) {
    spdlog::warn("jobs: cannot schedule the Prefer: wait of request {}; it gets the image when it is ready",
                 request_id_);
  }
}

void DeferredReply::on_deadline() {
  std::lock_guard lock(mutex_);
  if (finished_) return;
  auto job = runner_.attach(job_);
  if (!job) {
    // The request keeps waiting for its image, as without the header.
    spdlog::error("jobs: storing a job for request {} after its Prefer: wait failed: {}", request_id_,
                  job.error().message);
    return;
  }
  job_id_ = job->id;
  spdlog::info("jobs: request {} waited {} s; replying 202 with job {}", request_id_, wait_seconds_, job_id_);
  const std::string url = status_url(status_base_, job_id_);
  auto response = json_reply(202, {{"id", job_id_}, {"status", "running"}, {"status_url", url}});
  response.set_header("Location", url);
  response.set_header("Preference-Applied", "wait=" + std::to_string(wait_seconds_));
  response.set_header("Retry-After", "1");
  responder_.send(std::move(response));
}

bool DeferredReply::hand_over(const core::Result<std::vector<jobs::JobImage>>& outcome) {
  std::string job_id;
  {
    std::lock_guard lock(mutex_);
    finished_ = true;
    if (job_id_.empty()) return false;
    job_id = job_id_;
  }
  runner_.complete(job_id, outcome);
  return true;
}

std::shared_ptr<DeferredReply> App::defer_after_wait(const http::Request& request, const admission::Admission& admitted,
                                                     std::string stored_request, const http::Responder& responder) {
  if (!context_.jobs || request.method == "HEAD") return nullptr;
  const auto prefer = request.header("Prefer");
  if (!prefer) return nullptr;
  const auto wait = parse_prefer_wait(*prefer);
  if (!wait || !can_read_jobs(admitted.caller, context_.config)) return nullptr;
  const int seconds = std::min(*wait, context_.config.jobs.max_wait_seconds);

  const std::string base = base_url(request.header("Host").value_or(""));
  jobs::NewJob job;
  job.principal = admitted.caller.principal;
  job.client_address = admitted.caller.client_address;
  job.request_json = std::move(stored_request);
  job.base_url = base;
  return std::make_shared<DeferredReply>(*context_.jobs, std::move(job), seconds, base, responder,
                                         request.request_id);
}

void App::handle_job_create(const http::Request& request, http::Responder responder) {
  auto admitted = admit(request, admission::RouteKind::JsonApi, responder);
  if (!admitted) return;
  const auto content_type = request.header("Content-Type").value_or("");
  if (content_type.find("application/json") == std::string_view::npos) {
    return responder.send(error_response(core::Error::invalid("Content-Type must be application/json")));
  }
  auto body = parse_json_object(request.body);
  if (!body) return responder.send(error_response(body.error()));

  std::string idempotency_key;
  if (auto header = request.header("Idempotency-Key")) {
    auto key = parse_idempotency_key(*header);
    if (!key) return responder.send(error_response(key.error()));
    idempotency_key = std::move(*key);
  }

  std::string webhook_url;
  if (body->contains("webhook_url")) {
    const Json& value = (*body)["webhook_url"];
    if (!value.is_null() && !value.is_string()) {
      return responder.send(error_response(core::Error::invalid("webhook_url must be a string", "webhook_url")));
    }
    if (value.is_string()) webhook_url = value.get<std::string>();
    body->erase("webhook_url");
  }
  if (!webhook_url.empty() && context_.config.webhooks.secret.empty()) {
    return responder.send(error_response(core::Error::invalid(
        "this server sends no webhooks: [webhooks] secret_env is not configured", "webhook_url")));
  }

  // The request is checked now, so a bad one fails here with 400 and not
  // later as a failed job.
  auto parsed = parse_generations_body(*body, context_.config, context_.resolver);
  if (!parsed) return responder.send(error_response(parsed.error()));
  auto resolved = resolve_generations(*parsed, context_.resolver);
  if (!resolved) return responder.send(error_response(resolved.error()));

  jobs::NewJob job;
  job.principal = admitted->caller.principal;
  job.client_address = admitted->caller.client_address;
  job.idempotency_key = std::move(idempotency_key);
  job.request_json = Json{{"route", "generations"}, {"body", std::move(*body)}}.dump();
  job.webhook_url = webhook_url;
  job.base_url = base_url(request.header("Host").value_or(""));

  // Checking the webhook URL resolves its host, which blocks, so the rest
  // runs on a worker.
  auto create = [this, job = std::move(job), responder, rate_headers = admitted->headers,
                 request_id = request.request_id]() {
    if (!job.webhook_url.empty()) {
      const auto& webhooks = context_.config.webhooks;
      auto target = jobs::resolve_webhook_url(job.webhook_url, webhooks.allow_private_addresses,
                                              std::chrono::milliseconds(webhooks.timeout_ms));
      if (!target) {
        spdlog::info("jobs: rejected the webhook URL of request {}: {}", request_id, target.error().message);
        core::Error error = target.error();
        if (error.code != core::ErrorCode::InvalidArgument) {
          error = core::Error::invalid("webhook_url cannot be used: " + error.message, "webhook_url");
        }
        return responder.send(error_response(error));
      }
    }
    auto created = context_.jobs->submit(job);
    if (!created) return responder.send(error_response(created.error()));
    auto current = context_.jobs->store().find(created->job.id);
    const jobs::Job& shown = current && *current ? **current : created->job;
    std::optional<std::int64_t> position;
    if (shown.status == jobs::JobStatus::Queued) {
      auto place = context_.jobs->store().queue_position(shown);
      if (place) position = *place;
    }
    const bool finished = shown.status == jobs::JobStatus::Succeeded || shown.status == jobs::JobStatus::Failed;
    auto response = json_reply(created->replayed && finished ? 200 : 202, job_json(shown, position, job.base_url));
    response.set_header("Location", status_url(job.base_url, shown.id));
    for (const auto& [name, value] : rate_headers) response.set_header(name, value);
    responder.send(std::move(response));
  };
  if (webhook_url.empty()) return create();
  if (!context_.workers.try_submit(std::move(create))) {
    responder.send(error_response(core::Error::unavailable("the server is busy: the worker queue is full", 2)));
  }
}

void App::handle_job_get(const http::Request& request, http::Responder responder, std::string_view id) {
  auto admitted = admit(request, admission::RouteKind::JsonApi, responder);
  if (!admitted) return;
  const std::string job_id(id);
  auto job = context_.jobs->store().find(job_id);
  if (!job) return responder.send(error_response(job.error()));
  // Another principal's job gets the same 404 as a missing one, so ids cannot be probed.
  if (!*job || (*job)->principal != admitted->caller.principal) {
    return responder.send(error_response(core::Error::not_found("no job \"" + job_id + "\"; jobs are kept for " +
                                                                std::to_string(context_.config.jobs.retention_hours) +
                                                                " hours after they finish")));
  }
  std::optional<std::int64_t> position;
  if ((*job)->status == jobs::JobStatus::Queued) {
    auto place = context_.jobs->store().queue_position(**job);
    if (!place) return responder.send(error_response(place.error()));
    position = *place;
  }
  auto response = json_reply(200, job_json(**job, position, base_url(request.header("Host").value_or(""))));
  for (const auto& [name, value] : admitted->headers) response.set_header(name, value);
  responder.send(std::move(response));
}

}  // namespace pixelgate::api
