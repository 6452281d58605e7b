// The response sent while a template's pool starts, for templates with
// cold_start = "placeholder": a card with the retry delay, never cached.
#pragma once

#include <optional>

#include "core/error.hpp"
#include "core/generation_spec.hpp"
#include "http/message.hpp"

namespace pixelgate::api {

// Builds a 503 PNG of the requested size labelled "warming up, retry in N
// s", with Retry-After, Cache-Control: no-store and X-Pixelgate-Warning.
// Returns nullopt when the image cannot be drawn.
std::optional<http::Response> cold_start_placeholder(const core::Error& error, const core::GenerationSpec& spec);

}  // namespace pixelgate::api
