// GET /admin/status: what an operator needs to see at a glance, for an API
// key with the admin scope (or anyone in open mode).
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "api/app.hpp"
#include "api/errors.hpp"
#include "pool/worker_pool_backend.hpp"

namespace pixelgate::api {

void App::handle_admin_status(const http::Request& request, http::Responder responder) {
  auto allowed = context_.gate.authorize_admin(request.header("Authorization").value_or(""));
  if (!allowed) {
    spdlog::info("api: request {} to {} rejected: {}", request.request_id, request.path, allowed.error().message);
    return responder.send(error_response(allowed.error()));
  }

  nlohmann::json pools = nlohmann::json::object();
  for (const auto& [name, backend] : context_.backends) {
    if (const auto* pool = dynamic_cast<const pool::PoolBackend*>(backend.get())) pools[name] = pool->status();
  }
  const storage::HotCache& hot_cache = context_.images.hot_cache();
  nlohmann::json body = {
      {"version", PIXELGATE_VERSION},
      {"pools", std::move(pools)},
      {"hot_cache",
       {{"entries", hot_cache.entry_count()},
        {"bytes", hot_cache.size_bytes()},
        {"capacity_bytes", context_.config.storage.hot_cache_bytes}}},
      {"generations_in_flight", context_.images.in_flight()},
      {"workers", {{"busy", context_.workers.busy()}, {"queued", context_.workers.queued()}}},
  };

  http::Response response;
  response.set_body(body.dump() + "\n", "application/json");
  response.set_header("Cache-Control", "no-store");
  responder.send(std::move(response));
}

}  // namespace pixelgate::api
