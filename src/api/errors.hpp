// The one JSON error shape of every route:
//   {"error": {"code": "...", "message": "...", "param": "..." | null, "type": "..."}}
// "type" mirrors OpenAI's error objects, so OpenAI client libraries can read
// pixelgate's errors too.
#pragma once

#include "core/error.hpp"
#include "http/message.hpp"

namespace pixelgate::api {

// Builds the error response: status from the code, Cache-Control: no-store,
// and Retry-After when the error carries a delay.
http::Response error_response(const core::Error& error);

}  // namespace pixelgate::api
