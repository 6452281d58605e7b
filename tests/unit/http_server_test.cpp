// The HTTP server over real loopback sockets: pipelining, bodies, responses
// from other threads, sendfile responses, late responses and timeouts.
#include "http/server.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <boost/asio.hpp>
#include <gtest/gtest.h>

namespace pixelgate::http {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using namespace std::chrono_literals;

// Runs a Server on an ephemeral loopback port for the length of a test.
class RunningServer {
 public:
  explicit RunningServer(Handler handler, ServerOptions options = {}) {
    options.host = "127.0.0.1";
    options.port = 0;
    server_ = std::make_unique<Server>(options, std::move(handler), AccessLogger{});
    auto started = server_->start();
    EXPECT_TRUE(started) << (started ? "" : started.error().message);
    thread_ = std::thread([this] { server_->run(); });
  }
  ~RunningServer() {
    server_->shutdown(2000);
    thread_.join();
  }
  int port() const { return server_->port(); }

 private:
  std::unique_ptr<Server> server_;
  std::thread thread_;
};

// A blocking client connection.
class Client {
 public:
  explicit Client(int port) : socket_(io_) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), static_cast<unsigned short>(port)));
  }

  void send(const std::string& bytes) { asio::write(socket_, asio::buffer(bytes)); }

  // The reads below block until data arrives or the server closes the
  // connection; tests that wait for a close set a short server timeout.

  // Reads until `count` complete responses (with Content-Length bodies, or
  // none for 304) have arrived, or the connection closes.
  std::vector<std::string> read_responses(std::size_t count) {
    std::vector<std::string> responses;
    while (responses.size() < count) {
      const std::size_t end = received_.find("\r\n\r\n");
      if (end != std::string::npos) {
        const std::string head = received_.substr(0, end + 4);
        std::size_t length = 0;
        if (auto at = head.find("Content-Length: "); at != std::string::npos) {
          length = std::stoul(head.substr(at + 16));
        }
        if (received_.size() >= end + 4 + length) {
          responses.push_back(received_.substr(0, end + 4 + length));
          received_.erase(0, end + 4 + length);
          continue;
        }
      }
      char chunk[65536];
      boost::system::error_code ec;
      const std::size_t n = socket_.read_some(asio::buffer(chunk), ec);
      if (ec) break;
      received_.append(chunk, n);
    }
    return responses;
  }

  // Reads one response head and leaves what follows it buffered.
  std::string read_head() {
    for (;;) {
      const std::size_t end = received_.find("\r\n\r\n");
      if (end != std::string::npos) {
        std::string head = received_.substr(0, end + 4);
        received_.erase(0, end + 4);
        return head;
      }
      char chunk[4096];
      boost::system::error_code ec;
      const std::size_t n = socket_.read_some(asio::buffer(chunk), ec);
      if (ec) return {};
      received_.append(chunk, n);
    }
  }

  // Reads until the server closes the connection; returns what arrived.
  std::string read_until_closed() {
    char chunk[4096];
    for (;;) {
      boost::system::error_code ec;
      const std::size_t n = socket_.read_some(asio::buffer(chunk), ec);
      if (ec) break;
      received_.append(chunk, n);
    }
    return received_;
  }

 private:
  asio::io_context io_;
  tcp::socket socket_;
  std::string received_;
};

std::string body_of(const std::string& response) { return response.substr(response.find("\r\n\r\n") + 4); }

Response text(std::string body) {
  Response response;
  response.set_body(std::move(body), "text/plain");
  return response;
}

TEST(HttpServer, PipelinedRequestsAnsweredInOrder) {
  RunningServer server([](Request&& request, Responder responder) { responder.send(text(request.path)); });
  Client client(server.port());
  client.send(
      "GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
      "GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
      "GET /three HTTP/1.1\r\nHost: a\r\n\r\n");
  const auto responses = client.read_responses(3);
  ASSERT_EQ(responses.size(), 3u);
  EXPECT_EQ(body_of(responses[0]), "/one");
  EXPECT_EQ(body_of(responses[1]), "/two");
  EXPECT_EQ(body_of(responses[2]), "/three");
}

// After each response the server comes back for the next request later,
// tries once more if nothing has arrived, and then waits for the socket. A
// request must be served whichever of those finds it: at once, split in two
// with a pause, or after a long pause.
TEST(HttpServer, KeepAliveRequestsAfterPauses) {
  RunningServer server([](Request&& request, Responder responder) { responder.send(text(request.path)); });
  Client client(server.port());
  // The body of the next response, or "(none)" when the connection closed.
  const auto next_body = [&client] {
    const auto responses = client.read_responses(1);
    return responses.size() == 1 ? body_of(responses[0]) : std::string("(none)");
  };

  client.send("GET /first HTTP/1.1\r\nHost: a\r\n\r\n");
  EXPECT_EQ(next_body(), "/first");

  client.send("GET /split HTTP/1.1\r\nHo");
  std::this_thread::sleep_for(30ms);
  client.send("st: a\r\n\r\n");
  EXPECT_EQ(next_body(), "/split");

  std::this_thread::sleep_for(100ms);
  client.send("GET /late HTTP/1.1\r\nHost: a\r\n\r\n");
  EXPECT_EQ(next_body(), "/late");
}

// Many connections on one thread, each sending its next request as soon as
// it has read a response, so resumed reads succeed, miss and retry in every
// mix. Every request must get its own response.
TEST(HttpServer, ConcurrentKeepAliveClientsAllServed) {
  ServerOptions options;
  options.threads = 1;
  RunningServer server([](Request&& request, Responder responder) { responder.send(text(request.path)); },
                       options);
  constexpr int kClients = 16;
  constexpr int kRequests = 200;
  std::vector<int> served(kClients, 0);
  std::vector<std::thread> clients;
  for (int c = 0; c < kClients; ++c) {
    clients.emplace_back([&, c] {
      Client client(server.port());
      for (int i = 0; i < kRequests; ++i) {
        const std::string path = "/c" + std::to_string(c) + "/r" + std::to_string(i);
        client.send("GET " + path + " HTTP/1.1\r\nHost: a\r\n\r\n");
        const auto responses = client.read_responses(1);
        if (responses.size() != 1 || body_of(responses[0]) != path) return;
        ++served[c];
        if (i % 50 == 49) std::this_thread::sleep_for(5ms);
      }
    });
  }
  for (auto& thread : clients) thread.join();
  for (int c = 0; c < kClients; ++c) EXPECT_EQ(served[c], kRequests) << "client " << c;
}

TEST(HttpServer, ReceivesLengthAndChunkedBodies) {
  RunningServer server([](Request&& request, Responder responder) {
    responder.send(text(request.method + " " + request.body));
  });
  Client client(server.port());
  client.send("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
  client.send("POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
  const auto responses = client.read_responses(2);
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(body_of(responses[0]), "POST hello");
  EXPECT_EQ(body_of(responses[1]), "POST abcde");
}

TEST(HttpServer, BodyOverLimitGets413) {
  ServerOptions options;
  options.body_limit_bytes = 8;
  RunningServer server([](Request&&, Responder responder) { responder.send(text("handled")); }, options);
  Client client(server.port());
  client.send("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n123456789");
  const std::string received = client.read_until_closed();
  EXPECT_EQ(received.rfind("HTTP/1.1 413 ", 0), 0u) << received;
  EXPECT_EQ(received.find("handled"), std::string::npos);
}

TEST(HttpServer, FirstSendFromOtherThreadWins) {
  std::vector<std::thread> threads;
  std::mutex threads_mutex;
  ServerOptions options;
  options.idle_timeout_ms = 500;  // ends the read that waits for a third response
  RunningServer server([&](Request&& request, Responder responder) {
    std::lock_guard lock(threads_mutex);
    threads.emplace_back([responder, path = request.path] {
      std::this_thread::sleep_for(30ms);
      responder.send(text("first " + path));
      responder.send(text("second " + path));
    });
  }, options);
  {
    Client client(server.port());
    client.send("GET /x HTTP/1.1\r\nHost: a\r\n\r\nGET /y HTTP/1.1\r\nHost: a\r\n\r\n");
    const auto responses = client.read_responses(3);  // requests one more response than the server should send
    ASSERT_EQ(responses.size(), 2u);
    EXPECT_EQ(body_of(responses[0]), "first /x");
    EXPECT_EQ(body_of(responses[1]), "first /y");
  }
  std::lock_guard lock(threads_mutex);
  for (auto& thread : threads) thread.join();
}

// A copy of an earlier request's Responder must not respond to a later
// request on the same connection.
TEST(HttpServer, LateAnswerToEarlierRequestIsIgnored) {
  std::mutex mutex;
  std::optional<Responder> first;
  std::optional<Responder> second;
  RunningServer server([&](Request&& request, Responder responder) {
    std::lock_guard lock(mutex);
    if (request.path == "/first") {
      first = responder;
      responder.send(text("answer to first"));
    } else {
      second = responder;  // the test sends the response later
    }
  });
  Client client(server.port());
  client.send("GET /first HTTP/1.1\r\nHost: a\r\n\r\n");
  ASSERT_EQ(client.read_responses(1).size(), 1u);
  client.send("GET /second HTTP/1.1\r\nHost: a\r\n\r\n");
  for (int i = 0; i < 200; ++i) {
    {
      std::lock_guard lock(mutex);
      if (second) break;
    }
    std::this_thread::sleep_for(5ms);
  }
  {
    std::lock_guard lock(mutex);
    ASSERT_TRUE(second.has_value());
    first->send(text("stale answer"));
    second->send(text("answer to second"));
  }
  const auto responses = client.read_responses(1);
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(body_of(responses[0]), "answer to second");
  std::lock_guard lock(mutex);
  first.reset();  // lets the connection go before the server shuts down
  second.reset();
}

TEST(HttpServer, FileBodyViaSendfile) {
  const auto path = std::filesystem::temp_directory_path() / ("pixelgate-sendfile-" + std::to_string(::getpid()));
  std::string content(300'000, '\0');
  for (std::size_t i = 0; i < content.size(); ++i) content[i] = static_cast<char>('a' + i % 26);
  std::ofstream(path, std::ios::binary) << content;
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(fd, 0);
  auto file = std::make_shared<const core::OpenFile>(fd, content.size());
  // The memory copy differs from the file in its first byte, so the test
  // can tell which one was sent.
  std::string memory = content;
  memory[0] = 'Z';
  auto body = std::make_shared<const std::string>(memory);

  RunningServer server([&](Request&&, Responder responder) {
    Response response;
    response.body = body;
    response.file = file;
    response.set_header("Content-Type", "application/octet-stream");
    responder.send(std::move(response));
  });
  Client client(server.port());
  client.send("GET /f HTTP/1.1\r\nHost: a\r\n\r\n");
  const auto get = client.read_responses(1);
  ASSERT_EQ(get.size(), 1u);
  EXPECT_EQ(body_of(get[0]), content);

  // HEAD gets the GET body's length and no body: the next response must
  // start right after its head.
  client.send("HEAD /f HTTP/1.1\r\nHost: a\r\n\r\n");
  const std::string head = client.read_head();
  EXPECT_NE(head.find("Content-Length: 300000\r\n"), std::string::npos) << head;
  client.send("GET /f HTTP/1.1\r\nHost: a\r\n\r\n");
  const auto again = client.read_responses(1);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].rfind("HTTP/1.1 200 ", 0), 0u);
  EXPECT_EQ(body_of(again[0]), content);
  std::filesystem::remove(path);
}

TEST(HttpServer, PartialRequestGets408AfterHeaderTimeout) {
  ServerOptions options;
  options.header_timeout_ms = 300;
  RunningServer server([](Request&&, Responder responder) { responder.send(text("handled")); }, options);
  Client client(server.port());
  const auto started = std::chrono::steady_clock::now();
  client.send("GET /slow HTTP/1.1\r\nHost: a\r\n");
  const std::string received = client.read_until_closed();
  const auto elapsed = std::chrono::steady_clock::now() - started;
  EXPECT_EQ(received.rfind("HTTP/1.1 408 ", 0), 0u) << received;
  EXPECT_GE(elapsed, 300ms);
  EXPECT_LT(elapsed, 2000ms);
}

// A connection that never sends a byte is closed after the header timeout,
// not the longer idle timeout, and gets no 408.
TEST(HttpServer, SilentNewConnectionClosesAfterHeaderTimeout) {
  ServerOptions options;
  options.header_timeout_ms = 300;
  options.idle_timeout_ms = 60'000;
  RunningServer server([](Request&&, Responder responder) { responder.send(text("ok")); }, options);
  Client client(server.port());
  const auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(client.read_until_closed(), "");
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2000ms);
}

TEST(HttpServer, IdleKeepAliveConnectionClosesAfterIdleTimeout) {
  ServerOptions options;
  options.idle_timeout_ms = 300;
  RunningServer server([](Request&&, Responder responder) { responder.send(text("ok")); }, options);
  Client client(server.port());
  client.send("GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
  ASSERT_EQ(client.read_responses(1).size(), 1u);
  const auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(client.read_until_closed(), "");  // closed without another byte
  EXPECT_LT(std::chrono::steady_clock::now() - started, 2000ms);
}

TEST(HttpServer, SpreadsConnectionsOverThreads) {
  ServerOptions options;
  options.threads = 3;
  std::mutex mutex;
  std::vector<std::thread::id> seen;
  RunningServer server([&](Request&&, Responder responder) {
    {
      std::lock_guard lock(mutex);
      seen.push_back(std::this_thread::get_id());
    }
    responder.send(text("ok"));
  }, options);
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 6; ++i) clients.push_back(std::make_unique<Client>(server.port()));
  for (auto& client : clients) client->send("GET /a HTTP/1.1\r\nHost: a\r\n\r\n");
  for (auto& client : clients) ASSERT_EQ(client->read_responses(1).size(), 1u);
  std::lock_guard lock(mutex);
  std::sort(seen.begin(), seen.end());
  EXPECT_EQ(std::unique(seen.begin(), seen.end()) - seen.begin(), 3);
}

TEST(HttpServer, HostHeaderRules) {
  RunningServer server([](Request&& request, Responder responder) { responder.send(text(request.path)); });
  {
    Client client(server.port());
    client.send("GET /a HTTP/1.1\r\n\r\n");
    const std::string received = client.read_until_closed();
    EXPECT_EQ(received.rfind("HTTP/1.1 400 ", 0), 0u) << received;
    EXPECT_NE(received.find("missing Host header"), std::string::npos) << received;
  }
  {
    Client client(server.port());
    client.send("GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n");
    const std::string received = client.read_until_closed();
    EXPECT_EQ(received.rfind("HTTP/1.1 400 ", 0), 0u) << received;
  }
  {
    // HTTP/1.0 may leave Host out.
    Client client(server.port());
    client.send("GET /old HTTP/1.0\r\n\r\n");
    const std::string received = client.read_until_closed();
    EXPECT_EQ(received.rfind("HTTP/1.1 200 ", 0), 0u) << received;
    EXPECT_EQ(body_of(received), "/old");
  }
}

TEST(HttpServer, OtherTransferCodingsGet501) {
  RunningServer server([](Request&& request, Responder responder) { responder.send(text(request.body)); });
  Client client(server.port());
  client.send("POST /a HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n");
  const std::string received = client.read_until_closed();
  EXPECT_EQ(received.rfind("HTTP/1.1 501 ", 0), 0u) << received;
  EXPECT_NE(received.find("not_implemented"), std::string::npos) << received;
}

TEST(HttpServer, AbsoluteFormTargetUsesItsPath) {
  RunningServer server([](Request&& request, Responder responder) {
    responder.send(text(request.path + " " + request.query));
  });
  Client client(server.port());
  client.send("GET http://127.0.0.1/images/x.png?size=2 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
              "GET https://example.test HTTP/1.1\r\nHost: example.test\r\n\r\n");
  const auto responses = client.read_responses(2);
  ASSERT_EQ(responses.size(), 2u);
  EXPECT_EQ(body_of(responses[0]), "/images/x.png size=2");
  EXPECT_EQ(body_of(responses[1]), "/ ");
}

TEST(HttpServer, ExpectContinueGetsInterimResponse) {
  RunningServer server([](Request&& request, Responder responder) { responder.send(text(request.body)); });
  Client client(server.port());
  client.send("POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n");
  const std::string interim = client.read_head();
  EXPECT_EQ(interim, "HTTP/1.1 100 Continue\r\n\r\n");
  client.send("hello");
  const auto responses = client.read_responses(1);
  ASSERT_EQ(responses.size(), 1u);
  EXPECT_EQ(body_of(responses[0]), "hello");
}

TEST(HttpServer, RejectedRequestsAreLogged) {
  std::mutex mutex;
  std::vector<std::string> lines;
  ServerOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.body_limit_bytes = 4;

  // The access logger writes one line per request into `lines`.
  Server server(options, [](Request&&, Responder responder) { responder.send(text("ok")); },
                [&](const AccessRecord& record) {
                  std::lock_guard lock(mutex);
                  lines.push_back(record.request->method + " " + record.request->path + " " +
                                  std::to_string(record.status));
                });
  ASSERT_TRUE(server.start());
  std::thread thread([&] { server.run(); });

  {
    Client client(server.port());
    client.send("POST /big?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 9\r\n\r\n123456789");
    client.read_until_closed();
  }
  {
    Client client(server.port());
    client.send("GET /a HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n");
    client.read_until_closed();
  }
  server.shutdown(1000);
  thread.join();

  std::lock_guard lock(mutex);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], "POST /big 413");
  EXPECT_EQ(lines[1], "GET /a 400");
}

}  // namespace
}  // namespace pixelgate::http
