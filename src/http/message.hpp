// Plain request and response types that the rest of the program sees. Beast
// stays inside http/server.cpp, so business logic compiles without it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/open_file.hpp"

namespace pixelgate::http {

struct Header {
  std::string name;
  std::string value;
};

struct Request {
  std::string method;  // upper case, e.g. "GET"
  std::string target;  // as received: path and query, still percent-encoded
  std::string path;    // the target before '?', still percent-encoded
  std::string query;   // the target after '?', without the '?'
  std::vector<Header> headers;
  std::string body;
  std::string remote_address;
  std::string request_id;
  std::chrono::steady_clock::time_point received_at;

  // Returns the first header with this name (case-insensitive), if any.
  std::optional<std::string_view> header(std::string_view name) const;
};

struct Response {
  int status = 200;
  std::vector<Header> headers;
  // Shared so that cached image bytes go out without a copy. May be null.
  std::shared_ptr<const std::string> body;
  // Optional: an open file that contains exactly the bytes of `body`. The
  // server sends it with sendfile(2), which skips one copy through user
  // memory. `body` still gives the size and is the fallback.
  std::shared_ptr<const core::OpenFile> file;

  void set_header(std::string name, std::string value);
  std::optional<std::string_view> header(std::string_view name) const;
  void set_body(std::string content, std::string content_type);
};

// Receives the response to one request. The server's connection implements
// it. `ticket` identifies the request on its connection, so a late response
// to an earlier request is never sent in place of a later one's.
class ResponseSink {
 public:
  virtual ~ResponseSink() = default;
  // Only the first call for a ticket counts. May be called on any thread.
  virtual void deliver(std::uint64_t ticket, Response&& response) = 0;
};

// Sends the one response for a request. Copies share state; the first send()
// wins and later calls are ignored. Thread-safe: send() may run on any thread,
// and the write happens on the connection's own thread. When the client has
// gone away, send() does nothing.
class Responder {
 public:
  using SendFunction = std::function<void(Response&&)>;
  // Wraps a function, for callers outside the server such as tests.
  explicit Responder(SendFunction send);
  Responder(std::shared_ptr<ResponseSink> sink, std::uint64_t ticket) noexcept;
  void send(Response&& response) const;

 private:
  std::shared_ptr<ResponseSink> sink_;
  std::uint64_t ticket_ = 0;
};

using Handler = std::function<void(Request&& request, Responder responder)>;

bool iequals(std::string_view a, std::string_view b) noexcept;

}  // namespace pixelgate::http
