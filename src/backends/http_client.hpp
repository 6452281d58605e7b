// Blocking outbound HTTP through libcurl, for provider calls on worker threads.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/error.hpp"

namespace pixelgate::backends {

// One part of a multipart/form-data body.
struct MultipartField {
  std::string name;
  std::string value;
  std::string filename;      // set for file parts
  std::string content_type;  // set for file parts
};

struct OutboundRequest {
  std::string method = "GET";
  std::string url;
  std::vector<std::string> headers;  // "Name: value"
  std::string body;  // sent with every method except GET when non-empty
  // When non-empty, the body is sent as multipart/form-data built from these
  // parts (and `body` is ignored); libcurl sets the Content-Type boundary.
  std::vector<MultipartField> multipart;
  int connect_timeout_ms = 5'000;
  int timeout_ms = 60'000;  // whole transfer
  std::size_t max_response_bytes = 64 * 1024 * 1024;
};

struct OutboundResponse {
  long status = 0;
  std::vector<std::pair<std::string, std::string>> headers;  // names in lower case
  std::string body;

  std::optional<std::string> header(std::string_view lower_case_name) const;
};

// Calls curl_global_init once. Call before starting threads.
void initialize_http_client();

// Performs one request. Transport failures become errors: DeadlineExceeded
// for a timeout, Unavailable for a refused or failed connection, BadGateway
// for an oversized response. Any HTTP status is a success here. Only http and
// https URLs are followed, and redirects are not. Thread-safe: each thread
// reuses its own connection handle.
core::Result<OutboundResponse> perform(const OutboundRequest& request);

}  // namespace pixelgate::backends
