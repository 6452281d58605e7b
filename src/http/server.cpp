#include "http/server.hpp"

#include <array>
#include <atomic>
#include <chrono>
#include <ctime>
#include <list>
#include <mutex>
#include <thread>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include "core/hash.hpp"

namespace pixelgate::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// Returns the IMF-fixdate for now, formatted at most once per second per thread.
const std::string& http_date() {
  thread_local std::time_t cached_second = 0;
  thread_local std::string cached;
  const std::time_t now = std::time(nullptr);
  if (now != cached_second) {
    std::tm parts{};
    gmtime_r(&now, &parts);
    char text[64];
    std::strftime(text, sizeof(text), "%a, %d %b %Y %H:%M:%S GMT", &parts);
    cached = text;
    cached_second = now;
  }
  return cached;
}

bool valid_request_id(std::string_view id) {
  if (id.empty() || id.size() > 64) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  }
  return true;
}

// Request ids need to be unique, not unpredictable: each thread seeds a
// xorshift generator once from OpenSSL instead of asking it per request.
std::string new_request_id() {
  thread_local std::uint64_t state = core::random_u64() | 1;
  state ^= state << 13;
  state ^= state >> 7;
  state ^= state << 17;
  const std::uint64_t value = state;
  return core::to_hex(reinterpret_cast<const unsigned char*>(&value), sizeof(value));
}

}  // namespace

using Strand = asio::strand<asio::io_context::executor_type>;
// Sockets and streams bound to a concrete strand type instead of
// any_io_executor, whose type erasure copied and allocated executors on
// every operation.
using StrandSocket = asio::basic_stream_socket<tcp, Strand>;
using StrandStream = beast::basic_stream<tcp, Strand>;

class Session;

struct Server::Impl {
  ServerOptions options;
  Handler handler;
  AccessLogger access_logger;
  asio::io_context io;
  tcp::acceptor acceptor{io};
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  std::atomic<int> connections{0};
  std::atomic<bool> stopping{false};
  int bound_port = 0;

  std::mutex sessions_mutex;
  std::list<std::weak_ptr<Session>> sessions;

  Impl(ServerOptions o, Handler h, AccessLogger a)
      : options(std::move(o)), handler(std::move(h)), access_logger(std::move(a)) {}

  void accept();
  void reject_connection(std::shared_ptr<StrandSocket> socket);
  std::list<std::weak_ptr<Session>>::iterator register_session(const std::shared_ptr<Session>& session);
  void unregister_session(std::list<std::weak_ptr<Session>>::iterator it);

  // Polls until every connection has closed or the deadline has passed, then
  // stops the event loop. Runs on the event loop, so requests in progress
  // keep being served meanwhile.
  void wait_for_connections(Clock::time_point deadline, int grace_ms) {
    if (connections.load() > 0 && Clock::now() < deadline) {
      auto timer = std::make_shared<asio::steady_timer>(io, std::chrono::milliseconds(20));
      timer->async_wait([this, timer, deadline, grace_ms](beast::error_code) {
        wait_for_connections(deadline, grace_ms);
      });
      return;
    }
    if (connections.load() > 0) {
      spdlog::warn("http: {} connections still open after the {} ms shutdown grace period; closing them",
                   connections.load(), grace_ms);
    }
    work.reset();
    io.stop();
  }
};

// One client connection. Reads one request at a time: the next request is
// read only after the response to the previous one has been written, so
// pipelined requests get their responses in order.
class Session : public std::enable_shared_from_this<Session> {
 public:
  Session(StrandSocket socket, Server::Impl& server)
      : stream_(std::move(socket)), strand_(stream_.get_executor()), server_(server) {
    beast::error_code ec;
    const auto endpoint = stream_.socket().remote_endpoint(ec);
    if (!ec) remote_address_ = endpoint.address().to_string();
  }

  ~Session() {
    server_.connections.fetch_sub(1);
    if (registered_) server_.unregister_session(registration_);
  }

  void start() {
    registration_ = server_.register_session(shared_from_this());
    registered_ = true;
    asio::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->read_header(); });
  }

  // Closes the connection unless a request is in progress: one waiting
  // between keep-alive requests, or one that has not sent a byte yet. A
  // connection with a request in progress closes after its response. Runs on
  // the session's strand.
  void close_if_idle() {
    asio::post(stream_.get_executor(), [self = shared_from_this()] {
      self->closing_ = true;
      const bool nothing_received = self->reading_ && self->buffer_.size() == 0 &&
                                    !(self->parser_ && self->parser_->got_some());
      if (self->idle_ || nothing_received) {
        beast::error_code ec;
        self->stream_.socket().shutdown(tcp::socket::shutdown_both, ec);
        self->stream_.close();
      }
    });
  }

 private:
  // Waits for the first byte of the next request on a keep-alive connection
  // under the idle timeout; the header timeout starts with that byte.
  void wait_for_next_request() {
    idle_ = true;
    stream_.expires_after(std::chrono::milliseconds(server_.options.idle_timeout_ms));
    stream_.async_read_some(buffer_.prepare(4096), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->idle_ = false;
      if (ec) return self->close();
      self->buffer_.commit(n);
      self->read_header();
    });
  }

  // Starts the header timeout. It uses its own timer rather than the
  // stream's, because the stream's timeout closes the socket, and a client
  // that sent part of a request should still get its 408.
  void start_request_timer() {
    reading_ = true;
    timed_out_ = false;
    stream_.expires_never();
    request_timer_.expires_after(std::chrono::milliseconds(server_.options.header_timeout_ms));
    request_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || !self->reading_) return;
      self->timed_out_ = true;
      beast::error_code ignored;
      self->stream_.socket().cancel(ignored);
    });
  }

  void stop_request_timer() {
    reading_ = false;
    request_timer_.cancel();
  }

  void read_header() {
    if (closing_ && buffer_.size() == 0) return close();
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(server_.options.header_limit_bytes));
    parser_->body_limit(server_.options.body_limit_bytes);
    start_request_timer();
    bhttp::async_read_header(stream_, buffer_, *parser_,
                             [self = shared_from_this()](beast::error_code ec, std::size_t) {
                               self->on_header(ec);
                             });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    request_started_ = Clock::now();
    if (parser_->is_done()) {
      stop_request_timer();
      return dispatch();
    }
    // The body gets a fresh header_timeout_ms of its own.
    start_request_timer();
    bhttp::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->on_read_error(ec);
      self->stop_request_timer();
      self->dispatch();
    });
  }

  void on_read_error(beast::error_code ec) {
    const bool timed_out = timed_out_;
    stop_request_timer();
    if (timed_out) {
      // Some bytes arrived but not a whole request in time: send 408, then close.
      const bool partial = buffer_.size() > 0 || (parser_ && parser_->got_some());
      if (partial && !closing_) {
        return send_error_and_close(408, "request headers or body not received within " +
                                             std::to_string(server_.options.header_timeout_ms) + " ms");
      }
      return close();
    }
    if (ec == bhttp::error::end_of_stream || ec == asio::error::eof || ec == asio::error::connection_reset ||
        ec == asio::error::operation_aborted || ec == asio::error::bad_descriptor) {
      return close();
    }
    if (ec == bhttp::error::header_limit) {
      return send_error_and_close(431, "request headers exceed " +
                                           std::to_string(server_.options.header_limit_bytes) + " bytes");
    }
    if (ec == bhttp::error::body_limit) {
      return send_error_and_close(413, "request body exceeds " + std::to_string(server_.options.body_limit_bytes) +
                                           " bytes");
    }
    spdlog::debug("http: malformed request from {}: {}", remote_address_, ec.message());
    send_error_and_close(400, "malformed HTTP request: " + ec.message());
  }

  void send_error_and_close(int status, const std::string& message) {
    Response response;
    response.status = status;
    response.set_body(nlohmann_free_error_json(status, message), "application/json");
    response.set_header("Cache-Control", "no-store");
    keep_alive_ = false;
    head_ = false;
    request_.method.clear();
    request_.path.clear();
    request_.request_id = new_request_id();
    request_started_ = Clock::now();
    write(std::move(response));
  }

  // Builds the error body without nlohmann here, to keep this file's includes
  // small; `message` never contains quotes or backslashes from user input.
  static std::string nlohmann_free_error_json(int status, const std::string& message) {
    std::string code = status == 408 ? "timed_out"
                       : status == 413 || status == 431 ? "payload_too_large"
                                                        : "invalid_argument";
    std::string escaped;
    for (char c : message) {
      if (c == '"' || c == '\\') escaped.push_back('\\');
      if (static_cast<unsigned char>(c) >= 0x20) escaped.push_back(c);
    }
    const std::string type = status >= 500 ? "server_error" : "invalid_request_error";
    return "{\"error\":{\"code\":\"" + code + "\",\"message\":\"" + escaped + "\",\"param\":null,\"type\":\"" +
           type + "\"}}";
  }

  void dispatch() {
    auto& message = parser_->get();
    keep_alive_ = message.keep_alive() && !server_.stopping.load();
    head_ = message.method() == bhttp::verb::head;

    Request request;
    request.method = std::string(message.method_string());
    request.target = std::string(message.target());
    const std::size_t question = request.target.find('?');
    request.path = request.target.substr(0, question);
    if (question != std::string::npos) request.query = request.target.substr(question + 1);
    request.headers.reserve(std::distance(message.begin(), message.end()));
    for (const auto& field : message) {
      request.headers.push_back({std::string(field.name_string()), std::string(field.value())});
    }
    request.body = std::move(message.body());
    request.remote_address = remote_address_;
    const auto client_id = request.header("X-Request-Id");
    request.request_id = client_id && valid_request_id(*client_id) ? std::string(*client_id) : new_request_id();
    request.received_at = request_started_;
    request_.method = request.method;
    request_.path = request.path;
    request_.request_id = request.request_id;
    request_.remote_address = remote_address_;
    request_.received_at = request.received_at;
    parser_.reset();

    // The handler may respond inline, on this strand, or later from another
    // thread. dispatch() writes at once in the first case and queues the
    // write onto the strand in the second.
    std::weak_ptr<Session> weak = shared_from_this();
    Responder responder([weak, strand = strand_](Response&& response) {
      asio::dispatch(strand, [weak, response = std::move(response)]() mutable {
        if (auto self = weak.lock()) self->write(std::move(response));
      });
    });
    // Hold a reference while the request is in progress, so a response that
    // arrives late still finds the connection (or learns it is gone).
    in_flight_ = shared_from_this();
    try {
      server_.handler(std::move(request), responder);
    } catch (const std::exception& error) {
      spdlog::error("http: handler threw for request {}: {}", request_.request_id, error.what());
      Response response;
      response.status = 500;
      response.set_body(nlohmann_free_error_json(500, "internal error"), "application/json");
      responder.send(std::move(response));
    }
  }

  void write(Response&& response) {
    in_flight_.reset();
    if (server_.stopping.load() || closing_) keep_alive_ = false;
    const std::uint64_t body_bytes = response.body ? response.body->size() : 0;

    // The head is serialized into one reused buffer. Beast's serializer
    // allocates a node per field and walks many small buffers, which was the
    // largest cost of a cache hit.
    std::string& head = head_buffer_;
    head.clear();
    head += "HTTP/1.1 ";
    head += std::to_string(response.status);
    head += ' ';
    head += bhttp::obsolete_reason(static_cast<bhttp::status>(response.status));
    head += "\r\nServer: pixelgate\r\nDate: ";
    head += http_date();
    head += "\r\n";
    bool has_request_id = false;
    for (const auto& header : response.headers) {
      if (!is_valid_field(header.name, header.value)) {
        spdlog::error("http: dropped response header \"{}\" of request {}: it contains a line break or is empty",
                      header.name, request_.request_id);
        continue;
      }
      has_request_id = has_request_id || iequals(header.name, "X-Request-Id");
      append_field(head, header.name, header.value);
    }
    if (!has_request_id) append_field(head, "X-Request-Id", request_.request_id);
    if (!keep_alive_) append_field(head, "Connection", "close");
    // A 304 must not claim a length other than the 200's, and 204 has none,
    // so neither gets Content-Length. HEAD gets the length of the GET body.
    if (response.status != 304 && response.status != 204) {
      append_field(head, "Content-Length", std::to_string(body_bytes));
    }
    head += "\r\n";

    record_.status = response.status;
    record_.body_bytes = head_ ? 0 : body_bytes;
    const auto cache = response.header("X-Pixelgate-Cache");
    record_.cache_state = cache ? std::string(*cache) : std::string{};

    // The body stays alive in the session until the write completes.
    body_ = head_ ? nullptr : std::move(response.body);
    std::array<asio::const_buffer, 2> buffers{asio::buffer(head), asio::const_buffer()};
    if (body_) buffers[1] = asio::buffer(*body_);
    stream_.expires_after(std::chrono::milliseconds(server_.options.write_timeout_ms));
    asio::async_write(stream_, buffers, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->body_.reset();
      self->on_write(ec);
    });
  }

  // Header names and values come from this program, but a value built from
  // configuration could still hold a line break and split the response. Such
  // a field is dropped.
  static bool is_valid_field(std::string_view name, std::string_view value) {
    if (name.empty()) return false;
    for (char c : name) {
      if (c == '\r' || c == '\n' || c == ':' || c == ' ') return false;
    }
    for (char c : value) {
      if (c == '\r' || c == '\n') return false;
    }
    return true;
  }

  static void append_field(std::string& head, std::string_view name, std::string_view value) {
    head += name;
    head += ": ";
    head += value;
    head += "\r\n";
  }

  void on_write(beast::error_code ec) {
    if (server_.access_logger && !request_.method.empty()) {
      record_.request = &request_;
      record_.duration_ms = std::chrono::duration<double, std::milli>(Clock::now() - request_started_).count();
      server_.access_logger(record_);
    }
    if (ec) {
      spdlog::debug("http: write to {} failed for request {}: {}", remote_address_, request_.request_id,
                    ec.message());
      return close();
    }
    if (!keep_alive_) return close();
    if (buffer_.size() > 0) return read_header();  // a pipelined request is already buffered
    wait_for_next_request();
  }

  void close() {
    beast::error_code ec;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ec);
    stream_.close();
  }

  StrandStream stream_;
  Strand strand_;
  asio::steady_timer request_timer_{strand_};
  Server::Impl& server_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::shared_ptr<Session> in_flight_;
  std::string head_buffer_;                  // the response head being written
  std::shared_ptr<const std::string> body_;  // the response body being written
  std::string remote_address_;
  Request request_;  // method, path and id of the request in progress, for the access log
  AccessRecord record_;
  Clock::time_point request_started_{};
  bool keep_alive_ = false;
  bool head_ = false;
  bool idle_ = false;
  bool reading_ = false;    // between the first byte of a request and its end
  bool timed_out_ = false;  // the request timer fired during the current read
  bool closing_ = false;
  bool registered_ = false;
  std::list<std::weak_ptr<Session>>::iterator registration_;
};

std::list<std::weak_ptr<Session>>::iterator Server::Impl::register_session(const std::shared_ptr<Session>& session) {
  std::lock_guard lock(sessions_mutex);
  sessions.push_front(session);
  return sessions.begin();
}

void Server::Impl::unregister_session(std::list<std::weak_ptr<Session>>::iterator it) {
  std::lock_guard lock(sessions_mutex);
  sessions.erase(it);
}

void Server::Impl::reject_connection(std::shared_ptr<StrandSocket> shared) {
  static const std::string kBusy = [] {
    const std::string body =
        "{\"error\":{\"code\":\"unavailable\",\"message\":\"too many open connections; retry later\","
        "\"param\":null,\"type\":\"server_error\"}}";
    return "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nCache-Control: no-store\r\n"
           "Content-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  }();
  asio::async_write(*shared, asio::buffer(kBusy), [shared](beast::error_code, std::size_t) {
    beast::error_code ignored;
    shared->shutdown(tcp::socket::shutdown_both, ignored);
    shared->close(ignored);
  });
}

void Server::Impl::accept() {
  auto socket = std::make_shared<StrandSocket>(asio::make_strand(io.get_executor()));
  acceptor.async_accept(*socket, [this, socket](beast::error_code ec) {
    if (ec == asio::error::operation_aborted || !acceptor.is_open()) return;
    if (ec) {
      spdlog::warn("http: accept failed: {}", ec.message());
    } else if (connections.fetch_add(1) >= options.max_connections) {
      connections.fetch_sub(1);
      spdlog::warn("http: rejected a connection: {} connections are open (server.max_connections)",
                   options.max_connections);
      reject_connection(std::move(socket));
    } else {
      beast::error_code ignored;
      socket->set_option(tcp::no_delay(true), ignored);
      std::make_shared<Session>(std::move(*socket), *this)->start();
    }
    accept();
  });
}

Server::Server(ServerOptions options, Handler handler, AccessLogger access_logger)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler), std::move(access_logger))) {}

Server::~Server() = default;

core::Status Server::start() {
  auto& acceptor = impl_->acceptor;
  beast::error_code ec;
  const auto address = asio::ip::make_address(impl_->options.host, ec);
  if (ec) return core::Error::invalid("server.host: invalid IP address \"" + impl_->options.host + "\"");
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(impl_->options.port));

  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    return core::Error::unavailable("cannot listen on " + impl_->options.host + ":" +
                                        std::to_string(impl_->options.port) + ": " + ec.message(),
                                    0);
  }
  impl_->bound_port = acceptor.local_endpoint().port();
  impl_->accept();
  return core::Ok{};
}

int Server::port() const noexcept { return impl_->bound_port; }

int Server::connection_count() const noexcept { return impl_->connections.load(); }

void Server::run() {
  const int count = std::max(1, impl_->options.threads);
  std::vector<std::thread> threads;
  threads.reserve(count - 1);
  for (int i = 1; i < count; ++i) threads.emplace_back([this] { impl_->io.run(); });
  impl_->io.run();
  for (auto& thread : threads) thread.join();
}

void Server::shutdown(int grace_ms) {
  if (impl_->stopping.exchange(true)) return;
  asio::post(impl_->io, [impl = impl_.get(), grace_ms] {
    beast::error_code ignored;
    impl->acceptor.close(ignored);
    // Collect strong references under the lock and use them after it: the
    // last reference to a session may drop here, and its destructor takes
    // the same lock to unregister.
    std::vector<std::shared_ptr<Session>> open_sessions;
    {
      std::lock_guard lock(impl->sessions_mutex);
      for (auto& weak : impl->sessions) {
        if (auto session = weak.lock()) open_sessions.push_back(std::move(session));
      }
    }
    for (auto& session : open_sessions) session->close_if_idle();
    open_sessions.clear();
    impl->wait_for_connections(Clock::now() + std::chrono::milliseconds(grace_ms), grace_ms);
  });
}

}  // namespace pixelgate::http
