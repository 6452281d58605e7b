#include "http/server.hpp"

#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <charconv>
#include <chrono>
#include <ctime>
#include <list>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/status.hpp>
#include <spdlog/spdlog.h>

#include "core/hash.hpp"

// Design notes, from profiling cache hits with callgrind:
// - One io_context per thread. A connection lives on one of them for its
//   whole life, so its handlers never run concurrently and need no strand.
// - Timeouts are deadlines checked by one sweep timer per thread, not a timer
//   per connection: arming and cancelling timers on every request cost more
//   than serving a cached image.
// - Requests are parsed by Beast's parser into our Request directly, and
//   responses are written with sendmsg(2) (and sendfile(2) for files) as far
//   as the socket takes them, waiting on the reactor only when it is full.

namespace pixelgate::http {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
using tcp = asio::ip::tcp;
using Clock = std::chrono::steady_clock;
using Socket = asio::basic_stream_socket<tcp, asio::io_context::executor_type>;

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

// Beast's HTTP/1 parser, filling our Request instead of a Beast message, so
// fields are copied once.
class RequestParser final : public bhttp::basic_parser<true> {
 public:
  Request request;
  int version = 11;  // 10 for HTTP/1.0, 11 for HTTP/1.1

 private:
  void on_request_impl(bhttp::verb, beast::string_view method, beast::string_view target, int http_version,
                       beast::error_code&) override {
    request.method.assign(method.data(), method.size());
    request.target.assign(target.data(), target.size());
    version = http_version;
  }
  void on_response_impl(int, beast::string_view, int, beast::error_code&) override {}
  void on_field_impl(bhttp::field, beast::string_view name, beast::string_view value, beast::error_code&) override {
    request.headers.push_back({std::string(name.data(), name.size()), std::string(value.data(), value.size())});
  }
  void on_header_impl(beast::error_code&) override {}
  void on_body_init_impl(const boost::optional<std::uint64_t>& length, beast::error_code&) override {
    // The parser has already compared the length with the body limit.
    if (length) request.body.reserve(static_cast<std::size_t>(*length));
  }
  std::size_t on_body_impl(beast::string_view body, beast::error_code&) override {
    request.body.append(body.data(), body.size());
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t, beast::string_view, beast::error_code&) override {}
  std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, beast::error_code&) override {
    request.body.append(body.data(), body.size());
    return body.size();
  }
  void on_finish_impl(beast::error_code&) override {}
};

// Turns an absolute-form target ("http://host/path?query", RFC 9112 section
// 3.2.2) into origin form ("/path?query"). Other targets are returned as is.
std::string_view origin_form(std::string_view target) {
  const std::size_t scheme_end = target.find("://");
  if (target.empty() || target.front() == '/' || scheme_end == std::string_view::npos) return target;
  const std::string_view scheme = target.substr(0, scheme_end);
  if (!iequals(scheme, "http") && !iequals(scheme, "https")) return target;
  const std::size_t path_start = target.find_first_of("/?", scheme_end + 3);
  return path_start == std::string_view::npos ? std::string_view("/") : target.substr(path_start);
}

// Header names and values come from this program, but a value built from
// configuration could still hold a line break and split the response. Such
// a field is dropped.
bool is_valid_field(std::string_view name, std::string_view value) {
  if (name.empty()) return false;
  for (char c : name) {
    if (c == '\r' || c == '\n' || c == ':' || c == ' ') return false;
  }
  return std::memchr(value.data(), '\r', value.size()) == nullptr &&
         std::memchr(value.data(), '\n', value.size()) == nullptr;
}

void append(std::string& head, std::string_view text) { head.append(text.data(), text.size()); }

void append_field(std::string& head, std::string_view name, std::string_view value) {
  append(head, name);
  append(head, ": ");
  append(head, value);
  append(head, "\r\n");
}

void append_number(std::string& head, std::uint64_t value) {
  char digits[24];
  const auto end = std::to_chars(digits, digits + sizeof(digits), value).ptr;
  head.append(digits, end);
}

// Builds the error body without nlohmann here, to keep this file's includes
// small; `message` never contains quotes or backslashes from user input.
std::string error_json(int status, const std::string& message) {
  const std::string code = status == 408                   ? "timed_out"
                           : status == 413 || status == 431 ? "payload_too_large"
                           : status == 501                  ? "not_implemented"
                           : status >= 500                  ? "internal"
                                                            : "invalid_argument";
  std::string escaped;
  for (char c : message) {
    if (c == '"' || c == '\\') escaped.push_back('\\');
    if (static_cast<unsigned char>(c) >= 0x20) escaped.push_back(c);
  }
  const std::string type = status >= 500 ? "server_error" : "invalid_request_error";
  return "{\"error\":{\"code\":\"" + code + "\",\"message\":\"" + escaped + "\",\"param\":null,\"type\":\"" + type +
         "\"}}";
}

}  // namespace

class Session;

// One event loop thread and the connections it owns.
struct Worker {
  asio::io_context io{1};
  asio::executor_work_guard<asio::io_context::executor_type> work{io.get_executor()};
  asio::steady_timer sweep{io};
  // Touched only on this worker's thread.
  std::list<std::weak_ptr<Session>> sessions;
};

struct Server::Impl {
  ServerOptions options;
  Handler handler;
  AccessLogger access_logger;
  std::vector<std::unique_ptr<Worker>> workers;
  std::optional<tcp::acceptor> acceptor;  // on the first worker
  std::size_t next_worker = 0;
  Clock::duration sweep_interval;
  std::atomic<int> connections{0};
  std::atomic<bool> stopping{false};
  int bound_port = 0;

  Impl(ServerOptions o, Handler h, AccessLogger a)
      : options(std::move(o)), handler(std::move(h)), access_logger(std::move(a)) {
    const int count = std::max(1, options.threads);
    for (int i = 0; i < count; ++i) workers.push_back(std::make_unique<Worker>());
    // Deadlines are checked a few times per shortest timeout, so a timeout
    // fires at most an eighth of itself late.
    const int shortest = std::min({options.header_timeout_ms, options.idle_timeout_ms, options.write_timeout_ms});
    sweep_interval = std::chrono::milliseconds(std::clamp(shortest / 8, 5, 1000));
  }

  void accept();
  void reject_connection(std::shared_ptr<Socket> socket);
  void arm_sweep(Worker& worker);
  void stop_workers();

  // Polls until every connection has closed or the deadline has passed, then
  // stops the event loops. Runs on the first worker, so requests in progress
  // keep being served meanwhile.
  void wait_for_connections(Clock::time_point deadline, int grace_ms) {
    if (connections.load() > 0 && Clock::now() < deadline) {
      auto timer = std::make_shared<asio::steady_timer>(workers.front()->io, std::chrono::milliseconds(20));
      timer->async_wait([this, timer, deadline, grace_ms](boost::system::error_code) {
        wait_for_connections(deadline, grace_ms);
      });
      return;
    }
    if (connections.load() > 0) {
      spdlog::warn("http: {} connections still open after the {} ms shutdown grace period; closing them",
                   connections.load(), grace_ms);
    }
    stop_workers();
  }
};

// One client connection. Reads one request at a time: the next request is
// parsed only after the response to the previous one has been written, so
// pipelined requests get their responses in order. Every member function
// except deliver() runs on the worker's thread.
class Session final : public std::enable_shared_from_this<Session>, public ResponseSink {
 public:
  Session(Socket socket, Worker& worker, Server::Impl& server)
      : socket_(std::move(socket)), worker_(worker), server_(server) {
    boost::system::error_code ec;
    const auto endpoint = socket_.remote_endpoint(ec);
    if (!ec) remote_address_ = endpoint.address().to_string();
    socket_.non_blocking(true, ec);
  }

  ~Session() override { server_.connections.fetch_sub(1); }

  void start() {
    worker_.sessions.push_front(weak_from_this());
    registration_ = worker_.sessions.begin();
    registered_ = true;
    next_request();
  }

  // Closes the connection unless a request is in progress: one waiting
  // between keep-alive requests, or one that has not sent a byte yet. A
  // connection with a request in progress closes after its response.
  void close_if_idle() {
    closing_ = true;
    if (phase_ == Phase::Idle) close();
  }

  // Called by the worker's sweep timer.
  void check_deadline(Clock::time_point now) {
    if (now < deadline_) return;
    switch (phase_) {
      case Phase::Idle:
      case Phase::Writing:
        close();
        break;
      case Phase::Reading:
        // Some bytes arrived but not a whole request in time: send 408, then
        // close. The pending read is cancelled and its handler ignored.
        read_cancelled_ = true;
        {
          boost::system::error_code ignored;
          socket_.cancel(ignored);
        }
        send_error_and_close(408, "request headers or body not received within " +
                                      std::to_string(server_.options.header_timeout_ms) + " ms");
        break;
      case Phase::Handling:
      case Phase::Closed:
        break;
    }
  }

  void deliver(std::uint64_t ticket, Response&& response) override {
    // The first response per ticket is kept. Tickets only grow, and a
    // connection issues the next one only after the previous request got its
    // response.
    std::uint64_t answered = answered_ticket_.load();
    do {
      if (answered >= ticket) return;
    } while (!answered_ticket_.compare_exchange_weak(answered, ticket));

    if (worker_.io.get_executor().running_in_this_thread() && in_handler_ && ticket == ticket_) {
      inline_response_.emplace(std::move(response));  // written when the handler returns
      return;
    }
    asio::post(worker_.io, [self = shared_from_this(), ticket, response = std::move(response)]() mutable {
      if (self->phase_ != Phase::Handling || ticket != self->ticket_) return;
      self->may_have_data_ = true;  // the session went back to the event loop without reading
      self->begin_write(std::move(response));
      if (self->write_pending()) return self->continue_write();
      if (self->phase_ != Phase::Closed) self->next_request();
    });
  }

 private:
  enum class Phase {
    Idle,      // waiting for the first byte of a request (idle timeout)
    Reading,   // inside a request (header timeout)
    Handling,  // the handler has the request
    Writing,   // the socket is full; waiting to send the rest (write timeout)
    Closed,
  };

  // Parses the next request from buffered bytes, reading more as needed, and
  // handles it. Loops while responses are written at once and more requests
  // are buffered; returns when it has to wait.
  void next_request() {
    while (phase_ != Phase::Closed) {
      if (!parser_) {
        if (closing_ && buffer_.size() == 0) return close();
        parser_.emplace();
        parser_->header_limit(static_cast<std::uint32_t>(server_.options.header_limit_bytes));
        parser_->body_limit(server_.options.body_limit_bytes);
        parser_->eager(true);
        header_done_ = false;
        phase_ = Phase::Idle;
        // A new connection gets the header timeout for its first request, a
        // keep-alive connection the idle timeout between requests.
        const int wait_ms = ticket_ == 0 ? server_.options.header_timeout_ms : server_.options.idle_timeout_ms;
        deadline_ = Clock::now() + std::chrono::milliseconds(wait_ms);
      }
      if (buffer_.size() > 0) {
        if (phase_ == Phase::Idle) start_reading();
        beast::error_code ec;
        if (!parse_buffered(ec)) {
          if (ec) return on_read_error(ec);
          if (!read_now()) return;
          continue;
        }
        handle_request();
        if (!inline_response_) return;  // the response comes later, or the request was rejected
        Response response = std::move(*inline_response_);
        inline_response_.reset();
        begin_write(std::move(response));
        if (write_pending()) return continue_write();
        if (phase_ == Phase::Closed) return;
        if (buffer_.size() == 0) {
          // The client sends its next request only after reading this
          // response, so reading now would find nothing. Coming back after
          // the other ready connections makes the read likely to succeed,
          // and saves asking the reactor to watch the socket again.
          return resume_later(kResumeRetries);
        }
        continue;  // a pipelined request is buffered
      }
      if (!read_now()) return;
    }
  }

  // Number of extra tries for a resumed read that found nothing, before the
  // connection waits for the reactor. Under load most resumed reads
  // succeed: about 96% in a one-thread 304 run with bench/cache_hits.sh's
  // wrk settings, counted with a temporary counter. A miss that waits for the reactor is
  // seen at the next epoll_wait, which Asio runs once per round of the
  // queue, and is then queued behind every connection already waiting, so it
  // can wait almost two rounds. Another try comes back after one round.
  static constexpr int kResumeRetries = 1;

  // Queues the next read behind the connections that are ready now.
  void resume_later(int retries_left) {
    asio::post(worker_.io, [self = shared_from_this(), retries_left] {
      self->may_have_data_ = true;
      self->resume_retries_ = retries_left;
      self->next_request();
    });
  }

  void start_reading() {
    phase_ = Phase::Reading;
    deadline_ = Clock::now() + std::chrono::milliseconds(server_.options.header_timeout_ms);
  }

  // Feeds buffered bytes to the parser. Returns true when a whole request is
  // parsed; false with `ec` clear when more bytes are needed.
  bool parse_buffered(beast::error_code& ec) {
    while (!parser_->is_done() && buffer_.size() > 0) {
      const std::size_t used = parser_->put(buffer_.data(), ec);
      buffer_.consume(used);
      if (ec == bhttp::error::need_more) {
        ec = {};
        return false;
      }
      if (ec) return false;
      if (!header_done_ && parser_->is_header_done()) {
        header_done_ = true;
        received_at_ = Clock::now();
        if (!parser_->is_done()) {
          // The body gets a fresh header_timeout_ms of its own.
          deadline_ = received_at_ + std::chrono::milliseconds(server_.options.header_timeout_ms);
          if (buffer_.size() == 0) continue_if_expected();
        }
      }
      if (used == 0) break;
    }
    return parser_->is_done();
  }

  // Sends "100 Continue" when the client waits for it before sending the
  // body (RFC 9110 section 10.1.1). No response is being written at this
  // point, so the 25 bytes go out at once. If they do not, the client sends
  // the body after its own short wait.
  void continue_if_expected() {
    for (const auto& header : parser_->request.headers) {
      if (iequals(header.name, "Expect") && iequals(header.value, "100-continue") && parser_->version >= 11) {
        static constexpr std::string_view kContinue = "HTTP/1.1 100 Continue\r\n\r\n";
        if (::send(socket_.native_handle(), kContinue.data(), kContinue.size(), MSG_NOSIGNAL) < 0) {
          spdlog::debug("http: sending 100 Continue to {} failed: {}", remote_address_, std::strerror(errno));
        }
        return;
      }
    }
  }

  // Reads what the socket holds without blocking. Returns true when bytes
  // were added to the buffer, false when the session now waits for the
  // socket (or has failed).
  //
  // The socket is read only when it may hold data: after the reactor reported it
  // readable, after a read that filled the buffer, and after the session
  // went back to the event loop without waiting for input. A read that
  // finds nothing costs a system call, and so does each wait, because Asio
  // re-arms the descriptor with epoll_ctl for it.
  bool read_now() {
    for (;;) {
      if (!may_have_data_) break;
      const std::size_t room = buffer_.capacity() - buffer_.size();
      const auto space = buffer_.prepare(room >= 1024 ? std::min<std::size_t>(room, 65536) : 4096);
      const ssize_t n = ::recv(socket_.native_handle(), space.data(), space.size(), 0);
      if (n > 0) {
        buffer_.commit(static_cast<std::size_t>(n));
        may_have_data_ = static_cast<std::size_t>(n) == space.size();
        resume_retries_ = 0;
        return true;
      }
      if (n == 0) {
        on_read_error(asio::error::eof);
        return false;
      }
      if (errno == EINTR) continue;
      if (errno != EAGAIN && errno != EWOULDBLOCK) {
        on_read_error(boost::system::error_code(errno, boost::system::system_category()));
        return false;
      }
      may_have_data_ = false;
      if (resume_retries_ > 0 && buffer_.size() == 0 && phase_ == Phase::Idle) {
        resume_later(resume_retries_ - 1);
        return false;
      }
    }
    resume_retries_ = 0;
    read_cancelled_ = false;
    socket_.async_wait(tcp::socket::wait_read, [self = shared_from_this()](boost::system::error_code ec) {
      if (self->read_cancelled_ || self->phase_ == Phase::Closed) return;
      if (ec) return self->on_read_error(ec);
      self->may_have_data_ = true;
      self->next_request();
    });
    return false;
  }

  void on_read_error(beast::error_code ec) {
    const bool partial = buffer_.size() > 0 || (parser_ && parser_->got_some());
    if (ec == asio::error::eof) {
      if (!partial || closing_) return close();
      // The client stopped sending in the middle of a request.
      ec = bhttp::error::partial_message;
    }
    if (ec == asio::error::connection_reset || ec == asio::error::operation_aborted ||
        ec == asio::error::bad_descriptor || ec == asio::error::broken_pipe) {
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

  // Sends an error for a request that never reaches the handler, then closes
  // the connection. The access log names the method and path if they arrived.
  void send_error_and_close(int status, const std::string& message, const Request* request = nullptr) {
    if (!request && parser_ && !parser_->request.method.empty()) request = &parser_->request;
    Response response;
    response.status = status;
    response.set_body(error_json(status, message), "application/json");
    response.set_header("Cache-Control", "no-store");
    keep_alive_ = false;
    head_only_ = false;
    log_method_ = request ? request->method : "-";
    log_path_ = request ? std::string(request->target, 0, request->target.find('?')) : "-";
    if (log_path_.empty()) log_path_ = "-";
    log_request_id_ = new_request_id();
    received_at_ = Clock::now();
    parser_.reset();
    begin_write(std::move(response));
    if (write_pending()) continue_write();
  }

  void handle_request() {
    Request request = std::move(parser_->request);
    keep_alive_ = parser_->keep_alive() && !server_.stopping.load();
    const int version = parser_->version;
    parser_.reset();
    if (!valid_framing(request, version)) return;
    head_only_ = request.method == "HEAD";
    if (const std::string_view origin = origin_form(request.target); origin.size() != request.target.size()) {
      request.target = std::string(origin);
    }
    const std::size_t question = request.target.find('?');
    request.path.assign(request.target, 0, question);
    if (question != std::string::npos) request.query.assign(request.target, question + 1);
    request.remote_address = remote_address_;
    const auto client_id = request.header("X-Request-Id");
    request.request_id = client_id && valid_request_id(*client_id) ? std::string(*client_id) : new_request_id();
    request.received_at = received_at_;
    if (server_.access_logger) {
      log_method_ = request.method;
      log_path_ = request.path;
    }
    log_request_id_ = request.request_id;

    // The handler may respond inline (deliver() then keeps the response for
    // next_request() to write) or later from any thread (deliver() posts it
    // to this worker).
    phase_ = Phase::Handling;
    Responder responder(shared_from_this(), ++ticket_);
    in_handler_ = true;
    try {
      server_.handler(std::move(request), responder);
    } catch (const std::exception& error) {
      spdlog::error("http: handler threw for request {}: {}", log_request_id_, error.what());
      Response response;
      response.status = 500;
      response.set_body(error_json(500, "internal error"), "application/json");
      responder.send(std::move(response));
    }
    in_handler_ = false;
  }

  // Rejects what RFC 9112 says a server must reject: an HTTP/1.1 request
  // without exactly one Host header (400), and a transfer coding other than
  // chunked alone, which this server cannot decode (501). Returns false
  // after sending the error.
  bool valid_framing(const Request& request, int version) {
    int hosts = 0;
    std::string_view coding;
    for (const auto& header : request.headers) {
      if (iequals(header.name, "Host")) ++hosts;
      if (iequals(header.name, "Transfer-Encoding")) coding = header.value;
    }
    if (hosts > 1 || (hosts == 0 && version >= 11)) {
      spdlog::debug("http: request from {} has {} Host headers", remote_address_, hosts);
      send_error_and_close(400, hosts == 0 ? "missing Host header; HTTP/1.1 requests must send one"
                                           : "more than one Host header",
                           &request);
      return false;
    }
    if (!coding.empty() && !iequals(coding, "chunked")) {
      spdlog::debug("http: request from {} has an unsupported Transfer-Encoding", remote_address_);
      send_error_and_close(501, "Transfer-Encoding other than chunked is not supported; send the body "
                                "with Content-Length or chunked",
                           &request);
      return false;
    }
    return true;
  }

  // Serializes the head into a reused buffer and sends as much as the socket
  // takes. Beast's serializer allocated a node per field and walked many
  // small buffers, which was once the largest cost of a cache hit.
  void begin_write(Response&& response) {
    if (server_.stopping.load() || closing_) keep_alive_ = false;
    const std::uint64_t body_bytes = response.body ? response.body->size() : 0;

    std::string& head = head_buffer_;
    head.clear();
    append(head, "HTTP/1.1 ");
    append_number(head, static_cast<std::uint64_t>(response.status));
    head += ' ';
    const auto reason = bhttp::obsolete_reason(static_cast<bhttp::status>(response.status));
    head.append(reason.data(), reason.size());
    append(head, "\r\nServer: pixelgate\r\nDate: ");
    append(head, http_date());
    append(head, "\r\n");
    bool has_request_id = false;
    for (const auto& header : response.headers) {
      if (!is_valid_field(header.name, header.value)) {
        spdlog::error("http: dropped response header \"{}\" of request {}: it contains a line break or is empty",
                      header.name, log_request_id_);
        continue;
      }
      has_request_id = has_request_id || (header.name.size() == 12 && iequals(header.name, "X-Request-Id"));
      append_field(head, header.name, header.value);
    }
    if (!has_request_id) append_field(head, "X-Request-Id", log_request_id_);
    if (!keep_alive_) append_field(head, "Connection", "close");
    // A 304 must not claim a length other than the 200's, and 204 has none,
    // so neither gets Content-Length. HEAD gets the length of the GET body.
    if (response.status != 304 && response.status != 204) {
      append(head, "Content-Length: ");
      append_number(head, body_bytes);
      append(head, "\r\n");
    }
    append(head, "\r\n");

    record_status_ = response.status;
    record_body_bytes_ = head_only_ ? 0 : body_bytes;
    if (server_.access_logger) {
      const auto cache = response.header("X-Pixelgate-Cache");
      record_cache_state_ = cache ? std::string(*cache) : std::string{};
    }

    // The body and file stay alive in the session until the write completes.
    body_ = head_only_ ? nullptr : std::move(response.body);
    file_ = body_ && response.file && response.file->size() == body_->size() ? std::move(response.file) : nullptr;
    head_sent_ = 0;
    body_sent_ = 0;
    write_error_ = {};
    write_done_ = false;
    phase_ = Phase::Writing;
    if (!send_now()) return;
    finish_write();
  }

  bool write_pending() const { return phase_ == Phase::Writing && !write_done_; }

  // Sends what the socket takes without blocking. Returns true when the
  // response is fully sent or failed, false when the socket is full.
  bool send_now() {
    const int fd = socket_.native_handle();
    const std::size_t body_size = body_ ? body_->size() : 0;
    for (;;) {
      const std::size_t head_left = head_buffer_.size() - head_sent_;
      if (head_left == 0 && body_sent_ == body_size) {
        write_done_ = true;
        return true;
      }
      ssize_t n;
      if (file_ && head_left == 0) {
        off_t offset = static_cast<off_t>(body_sent_);
        n = ::sendfile(fd, file_->fd(), &offset, body_size - body_sent_);
        if (n < 0 && (errno == EINVAL || errno == ENOSYS || errno == EOVERFLOW) && body_sent_ == 0) {
          file_.reset();  // this file cannot be sent that way; copy from memory
          continue;
        }
        if (n == 0) errno = EIO;  // the file is shorter than it was
      } else {
        iovec parts[2];
        int count = 0;
        if (head_left > 0) parts[count++] = {head_buffer_.data() + head_sent_, head_left};
        if (!file_ && body_sent_ < body_size) {
          parts[count++] = {const_cast<char*>(body_->data()) + body_sent_, body_size - body_sent_};
        }
        msghdr message{};
        message.msg_iov = parts;
        message.msg_iovlen = static_cast<std::size_t>(count);
        // With a file to follow, MSG_MORE keeps the head for the same packet.
        n = ::sendmsg(fd, &message, MSG_NOSIGNAL | (file_ ? MSG_MORE : 0));
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return false;
        write_error_ = boost::system::error_code(errno, boost::system::system_category());
        write_done_ = true;
        return true;
      }
      if (n == 0) {
        write_error_ = boost::system::error_code(EIO, boost::system::system_category());
        write_done_ = true;
        return true;
      }
      std::size_t sent = static_cast<std::size_t>(n);
      const std::size_t from_head = std::min(sent, head_left);
      head_sent_ += from_head;
      body_sent_ += sent - from_head;
    }
  }

  // Waits until the socket takes more, under the write timeout.
  void continue_write() {
    deadline_ = Clock::now() + std::chrono::milliseconds(server_.options.write_timeout_ms);
    socket_.async_wait(tcp::socket::wait_write, [self = shared_from_this()](boost::system::error_code ec) {
      if (self->phase_ != Phase::Writing) return;
      if (ec) {
        self->write_error_ = ec;
        self->write_done_ = true;
      } else if (!self->send_now()) {
        return self->continue_write();
      }
      self->may_have_data_ = true;
      self->finish_write();
      if (self->phase_ != Phase::Closed) self->next_request();
    });
  }

  // Logs the response and decides whether the connection stays open. After
  // it, next_request() reads the next request unless the session closed.
  void finish_write() {
    body_.reset();
    file_.reset();
    if (server_.access_logger && !log_method_.empty()) {
      Request logged;
      logged.method = std::move(log_method_);
      logged.path = std::move(log_path_);
      logged.request_id = log_request_id_;
      logged.remote_address = remote_address_;
      logged.received_at = received_at_;
      AccessRecord record;
      record.request = &logged;
      record.status = record_status_;
      record.body_bytes = record_body_bytes_;
      record.duration_ms = std::chrono::duration<double, std::milli>(Clock::now() - received_at_).count();
      record.cache_state = std::move(record_cache_state_);
      server_.access_logger(record);
      log_method_.clear();
      log_path_.clear();
    }
    if (write_error_) {
      spdlog::debug("http: write to {} failed for request {}: {}", remote_address_, log_request_id_,
                    write_error_.message());
      return close();
    }
    if (!keep_alive_) return close();
    phase_ = Phase::Idle;  // next_request() starts a new parser
  }

  void close() {
    if (phase_ == Phase::Closed) return;
    phase_ = Phase::Closed;
    boost::system::error_code ec;
    socket_.shutdown(tcp::socket::shutdown_send, ec);
    socket_.close(ec);
    body_.reset();
    file_.reset();
    if (registered_) {
      worker_.sessions.erase(registration_);
      registered_ = false;
    }
  }

  Socket socket_;
  Worker& worker_;
  Server::Impl& server_;
  beast::flat_buffer buffer_;
  std::optional<RequestParser> parser_;
  Phase phase_ = Phase::Idle;
  Clock::time_point deadline_ = Clock::time_point::max();
  Clock::time_point received_at_{};
  std::uint64_t ticket_ = 0;
  std::atomic<std::uint64_t> answered_ticket_{0};
  std::optional<Response> inline_response_;
  bool in_handler_ = false;
  bool may_have_data_ = true;  // see read_now()
  int resume_retries_ = 0;     // see resume_later()
  bool header_done_ = false;
  bool read_cancelled_ = false;
  bool keep_alive_ = false;
  bool head_only_ = false;
  bool closing_ = false;
  bool registered_ = false;
  std::list<std::weak_ptr<Session>>::iterator registration_;

  // The response being written.
  std::string head_buffer_;
  std::shared_ptr<const std::string> body_;
  std::shared_ptr<const core::OpenFile> file_;
  std::size_t head_sent_ = 0;
  std::size_t body_sent_ = 0;
  bool write_done_ = false;
  boost::system::error_code write_error_;

  // For the access log.
  std::string remote_address_;
  std::string log_method_;
  std::string log_path_;
  std::string log_request_id_;
  int record_status_ = 0;
  std::uint64_t record_body_bytes_ = 0;
  std::string record_cache_state_;
};

void Server::Impl::arm_sweep(Worker& worker) {
  worker.sweep.expires_after(sweep_interval);
  worker.sweep.async_wait([this, &worker](boost::system::error_code ec) {
    if (ec) return;
    const auto now = Clock::now();
    for (auto it = worker.sessions.begin(); it != worker.sessions.end();) {
      auto session = it->lock();
      if (!session) {
        it = worker.sessions.erase(it);
        continue;
      }
      ++it;  // check_deadline may close the session, which erases its entry
      session->check_deadline(now);
    }
    arm_sweep(worker);
  });
}

void Server::Impl::stop_workers() {
  for (auto& worker : workers) {
    asio::post(worker->io, [w = worker.get()] {
      w->sweep.cancel();
      w->work.reset();
      w->io.stop();
    });
  }
}

void Server::Impl::reject_connection(std::shared_ptr<Socket> shared) {
  static const std::string kBusy = [] {
    const std::string body =
        "{\"error\":{\"code\":\"unavailable\",\"message\":\"too many open connections; retry later\","
        "\"param\":null,\"type\":\"server_error\"}}";
    return "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nCache-Control: no-store\r\n"
           "Content-Type: application/json\r\nContent-Length: " +
           std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  }();
  asio::async_write(*shared, asio::buffer(kBusy), [this, shared](boost::system::error_code, std::size_t) {
    boost::system::error_code ignored;
    shared->shutdown(tcp::socket::shutdown_both, ignored);
    shared->close(ignored);
    connections.fetch_sub(1);
  });
}

void Server::Impl::accept() {
  // Connections go to the workers in turn.
  Worker& worker = *workers[next_worker];
  next_worker = (next_worker + 1) % workers.size();
  acceptor->async_accept(worker.io, [this, &worker](boost::system::error_code ec, Socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor->is_open()) return;
    if (ec) {
      spdlog::warn("http: accept failed: {}", ec.message());
    } else if (connections.fetch_add(1) >= options.max_connections) {
      spdlog::warn("http: rejected a connection: {} connections are open (server.max_connections)",
                   options.max_connections);
      auto shared = std::make_shared<Socket>(std::move(socket));
      asio::post(worker.io, [this, shared] { reject_connection(shared); });
    } else {
      boost::system::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      auto session = std::make_shared<Session>(std::move(socket), worker, *this);
      asio::post(worker.io, [session] { session->start(); });
    }
    accept();
  });
}

Server::Server(ServerOptions options, Handler handler, AccessLogger access_logger)
    : impl_(std::make_unique<Impl>(std::move(options), std::move(handler), std::move(access_logger))) {}

Server::~Server() = default;

core::Status Server::start() {
  impl_->acceptor.emplace(impl_->workers.front()->io);
  auto& acceptor = *impl_->acceptor;
  boost::system::error_code ec;
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
  for (auto& worker : impl_->workers) impl_->arm_sweep(*worker);
  return core::Ok{};
}

int Server::port() const noexcept { return impl_->bound_port; }

int Server::connection_count() const noexcept { return impl_->connections.load(); }

void Server::run() {
  std::vector<std::thread> threads;
  threads.reserve(impl_->workers.size() - 1);
  for (std::size_t i = 1; i < impl_->workers.size(); ++i) {
    threads.emplace_back([worker = impl_->workers[i].get()] { worker->io.run(); });
  }
  impl_->workers.front()->io.run();
  for (auto& thread : threads) thread.join();
}

void Server::shutdown(int grace_ms) {
  if (impl_->stopping.exchange(true)) return;
  asio::post(impl_->workers.front()->io, [impl = impl_.get(), grace_ms] {
    boost::system::error_code ignored;
    impl->acceptor->close(ignored);
    for (auto& worker : impl->workers) {
      asio::post(worker->io, [w = worker.get()] {
        // Collect first: closing a session erases it from the list.
        std::vector<std::shared_ptr<Session>> open_sessions;
        for (auto& weak : w->sessions) {
          if (auto session = weak.lock()) open_sessions.push_back(std::move(session));
        }
        for (auto& session : open_sessions) session->close_if_idle();
      });
    }
    impl->wait_for_connections(Clock::now() + std::chrono::milliseconds(grace_ms), grace_ms);
  });
}

}  // namespace pixelgate::http
