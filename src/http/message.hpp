// Plain request and response types that the rest of the program sees. Beast
// stays inside http/server.cpp, so business logic compiles without it.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

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

  void set_header(std::string name, std::string value);
  std::optional<std::string_view> header(std::string_view name) const;
  void set_body(std::string content, std::string content_type);
};

// Sends the one response for a request. Copies share state; the first send()
// wins and later calls are ignored. Thread-safe: send() may run on any thread,
// and the write happens on the connection's own executor. When the client has
// gone away, send() does nothing.
class Responder {
 public:
  using SendFunction = std::function<void(Response&&)>;
  explicit Responder(SendFunction send);
  void send(Response&& response) const;
  bool sent() const noexcept;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

using Handler = std::function<void(Request&& request, Responder responder)>;

bool iequals(std::string_view a, std::string_view b) noexcept;

}  // namespace pixelgate::http
