#include "api/errors.hpp"

#include <nlohmann/json.hpp>

namespace pixelgate::api {

http::Response error_response(const core::Error& error) {
  const int status = core::http_status(error.code);
  nlohmann::json body;
  body["error"]["code"] = std::string(core::to_string(error.code));
  body["error"]["message"] = error.message;
  body["error"]["param"] = error.param.empty() ? nlohmann::json(nullptr) : nlohmann::json(error.param);
  body["error"]["type"] = status >= 500 ? "server_error" : "invalid_request_error";

  http::Response response;
  response.status = status;
  response.set_body(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n", "application/json");
  response.set_header("Cache-Control", "no-store");
  if (error.retry_after_seconds > 0) response.set_header("Retry-After", std::to_string(error.retry_after_seconds));
  for (const auto& [name, value] : error.response_headers) response.set_header(name, value);
  return response;
}

}  // namespace pixelgate::api
