#include "http/message.hpp"

#include <atomic>

namespace pixelgate::http {

bool iequals(std::string_view a, std::string_view b) noexcept {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i];
    char y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

std::optional<std::string_view> Request::header(std::string_view name) const {
  for (const auto& h : headers) {
    if (iequals(h.name, name)) return std::string_view(h.value);
  }
  return std::nullopt;
}

void Response::set_header(std::string name, std::string value) {
  for (auto& h : headers) {
    if (iequals(h.name, name)) {
      h.value = std::move(value);
      return;
    }
  }
  headers.push_back({std::move(name), std::move(value)});
}

std::optional<std::string_view> Response::header(std::string_view name) const {
  for (const auto& h : headers) {
    if (iequals(h.name, name)) return std::string_view(h.value);
  }
  return std::nullopt;
}

void Response::set_body(std::string content, std::string content_type) {
  body = std::make_shared<const std::string>(std::move(content));
  set_header("Content-Type", std::move(content_type));
}

namespace {

// The sink behind a Responder made from a plain function: one ticket only.
class FunctionSink final : public ResponseSink {
 public:
  explicit FunctionSink(Responder::SendFunction send) : send_(std::move(send)) {}
  void deliver(std::uint64_t, Response&& response) override {
    if (sent_.exchange(true)) return;
    send_(std::move(response));
  }

 private:
  Responder::SendFunction send_;
  std::atomic<bool> sent_{false};
};

}  // namespace

Responder::Responder(SendFunction send) : sink_(std::make_shared<FunctionSink>(std::move(send))), ticket_(1) {}

Responder::Responder(std::shared_ptr<ResponseSink> sink, std::uint64_t ticket) noexcept
    : sink_(std::move(sink)), ticket_(ticket) {}

void Responder::send(Response&& response) const { sink_->deliver(ticket_, std::move(response)); }

}  // namespace pixelgate::http
