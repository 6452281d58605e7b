// The HTTP endpoints: the only module that defines URLs and JSON shapes.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "admission/gate.hpp"
#include "config/config.hpp"
#include "core/worker_pool.hpp"
#include "delivery/image_response.hpp"
#include "generation/image_service.hpp"
#include "generation/resolution_cache.hpp"
#include "generation/resolver.hpp"
#include "http/message.hpp"
#include "storage/object_store.hpp"

namespace pixelgate::jobs {
class JobRunner;
}

namespace pixelgate::api {

class DeferredReply;

struct AppContext {
  const config::Config& config;
  const generation::BackendMap& backends;
  const generation::Resolver& resolver;
  generation::ImageService& images;
  storage::ObjectStore& store;
  core::WorkerPool& workers;
  admission::Gate& gate;
  generation::ResolutionCache& resolutions;
  // Checks shared state (Redis) for /readyz; empty when there is none.
  std::function<core::Status()> check_shared_state;
  // Asynchronous jobs; null when [jobs] enabled = false.
  jobs::JobRunner* jobs = nullptr;
};

// Thread-safety: handle() runs concurrently on every event-loop thread; the
// App keeps no mutable state of its own.
class App {
 public:
  explicit App(AppContext context);

  // Routes one request. Never throws; every failure becomes an error response.
  void handle(http::Request&& request, http::Responder responder);

 private:
  void handle_image(const http::Request& request, http::Responder responder, std::string_view template_name);
  void handle_stored_image(const http::Request& request, http::Responder responder, std::string_view name);
  // The response for GET /images/{key} once the image is at hand.
  http::Response stored_image_response(const std::shared_ptr<const storage::CachedImage>& image,
                                       std::string_view if_none_match);
  void handle_openai_generations(const http::Request& request, http::Responder responder);
  void handle_ready(http::Responder responder);
  void handle_admin_status(const http::Request& request, http::Responder responder);
  void handle_job_create(const http::Request& request, http::Responder responder);
  void handle_job_get(const http::Request& request, http::Responder responder, std::string_view id);

  // Returns, for a request with `Prefer: wait=N` whose caller may read jobs,
  // the reply that turns into a 202 with a job after N seconds. Returns null
  // otherwise. `stored_request` is the job request to store, as
  // make_job_resolver reads it.
  std::shared_ptr<DeferredReply> defer_after_wait(const http::Request& request, const admission::Admission& admitted,
                                                  std::string stored_request, const http::Responder& responder);

  // In delivery mode "redirect", returns the 302 to the image's public or
  // presigned URL; nullopt in mode "proxy" or when no URL can be made.
  std::optional<http::Response> redirect_to(const storage::CachedImage& image, delivery::CachePolicy policy) const;

  // Runs admission for a request; on rejection sends the error and returns
  // nullopt.
  std::optional<admission::Admission> admit(const http::Request& request, admission::RouteKind route,
                                            const http::Responder& responder);

  // Returns the absolute URL of a stored image for JSON responses: under
  // server.public_base_url, or else under the request's Host header.
  std::string image_url(std::string_view host_header, const std::string& key, const std::string& content_type) const;

  // Returns the origin of absolute URLs in JSON responses, e.g. "http://127.0.0.1:8080".
  std::string base_url(std::string_view host_header) const;

  // Lets the server send the image from its open file with sendfile(2).
  void attach_file(http::Response& response, const std::shared_ptr<const storage::CachedImage>& image);
  AppContext context_;
};

}  // namespace pixelgate::api
