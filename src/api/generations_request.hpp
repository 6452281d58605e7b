// The body of POST /v1/images/generations (OpenAI's Images API request),
// shared by that route and by jobs, which accept the same body.
#pragma once

#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "config/config.hpp"
#include "core/error.hpp"
#include "generation/request.hpp"
#include "generation/resolver.hpp"

namespace pixelgate::api {

// Everything the route needs from the JSON body, checked.
struct GenerationsRequest {
  generation::ImageRequest image;
  int n = 1;
  bool b64 = false;
};

// Parses `text` and checks that it is a JSON object.
core::Result<nlohmann::json> parse_json_object(const std::string& text);

// Checks the body's fields and turns them into an ImageRequest. Unknown
// fields are rejected, as OpenAI does.
core::Result<GenerationsRequest> parse_generations_body(const nlohmann::json& body, const config::Config& config,
                                                        const generation::Resolver& resolver);

// Resolves the n images of a request; image i > 0 uses the seed plus i.
core::Result<std::vector<generation::ResolvedRequest>> resolve_generations(const GenerationsRequest& request,
                                                                           const generation::Resolver& resolver);

}  // namespace pixelgate::api
