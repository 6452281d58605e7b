// Reading image requests from URL query strings.
#pragma once

#include <string>

#include "core/error.hpp"
#include "core/text.hpp"
#include "generation/request.hpp"

namespace pixelgate::api {

// Parses the query of an image URL into an ImageRequest. Accepted parameters:
// prompt, width, height, size (WxH), seed (a number or "random"), template
// variables (lower-case names, checked later against the template) and, when
// `template_from_query` is true, template (alias: style). Repeated parameters
// and names that cannot be variables are errors that name the parameter, so
// one image never has two spellings that a CDN would cache separately.
core::Result<generation::ImageRequest> parse_image_query(std::string_view query, bool template_from_query);

// The same for parameters that are already decoded, e.g. by signature
// verification, which removes sig, kid and exp.
core::Result<generation::ImageRequest> parse_image_params(const core::QueryParams& params, bool template_from_query);

// Parses "1024x768" into width and height; returns false when malformed.
bool parse_size(std::string_view text, int& width, int& height);

// Parses a non-negative decimal integer with no sign, spaces or leading '+'.
bool parse_unsigned(std::string_view text, std::uint64_t& value);

}  // namespace pixelgate::api
