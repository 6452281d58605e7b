// An HTTP/1.1 server on Boost.Beast: keep-alive, HEAD, limits, timeouts and
// graceful shutdown. It has no image logic: every request goes to the
// one Handler it was given.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "core/error.hpp"
#include "http/message.hpp"

namespace pixelgate::http {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;  // 0 = an ephemeral port, see Server::port()
  int threads = 1;
  int max_connections = 10000;
  std::uint64_t header_limit_bytes = 64 * 1024;  // room for a long percent-encoded prompt in the URL
  std::uint64_t body_limit_bytes = 1024 * 1024;
  int header_timeout_ms = 10'000;
  int idle_timeout_ms = 60'000;
  int write_timeout_ms = 60'000;
};

// One line of the access log, handed to the callback after the response has
// been written (or the connection failed while writing it).
struct AccessRecord {
  const Request* request = nullptr;
  int status = 0;
  std::uint64_t body_bytes = 0;
  double duration_ms = 0;
  std::string cache_state;  // the X-Pixelgate-Cache response header, if any
};

using AccessLogger = std::function<void(const AccessRecord&)>;

// Thread-safety: start() and run() are called once from the owning thread;
// shutdown() may be called from any thread, including a signal handler's
// asio handler.
class Server {
 public:
  Server(ServerOptions options, Handler handler, AccessLogger access_logger);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds and listens. Returns an error when the address cannot be used.
  core::Status start();

  // The port actually bound; valid after start().
  int port() const noexcept;

  // Runs the event loop on the configured number of threads and returns after
  // shutdown() has finished.
  void run();

  // Stops accepting, closes idle keep-alive connections, lets requests in
  // progress finish for up to `grace_ms`, then stops the event loop.
  void shutdown(int grace_ms);

  // Connections open now.
  int connection_count() const noexcept;

  // Public only so that the connection class in server.cpp can name it.
  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace pixelgate::http
