#include "api/cold_start_response.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "imaging/image.hpp"

namespace pixelgate::api {

std::optional<http::Response> cold_start_placeholder(const core::Error& error, const core::GenerationSpec& spec) {
  const int retry_after = std::max(1, error.retry_after_seconds);
  imaging::PlaceholderRequest request;
  request.prompt = spec.prompt;
  request.width = spec.width;
  request.height = spec.height;
  request.seed = spec.seed;
  request.label = "warming up, retry in " + std::to_string(retry_after) + " s";
  auto png = imaging::render_placeholder(request);
  if (!png) {
    spdlog::error("api: drawing the cold-start placeholder failed: {}", png.error().message);
    return std::nullopt;
  }

  // 503 with no-store keeps caches from storing the card as the image of
  // this URL, and Retry-After gives clients the time to try again.
  // NOTE: browsers are expected to draw an image body sent with an error
  // status, but no test here checks that.
  http::Response response;
  response.status = 503;
  response.set_body(std::move(png).value(), "image/png");
  response.set_header("Cache-Control", "no-store");
  response.set_header("Retry-After", std::to_string(retry_after));
  response.set_header("X-Pixelgate-Warning", "placeholder image while backend " + spec.backend +
                                                 " starts; retry in " + std::to_string(retry_after) + " s");
  return response;
}

}  // namespace pixelgate::api
