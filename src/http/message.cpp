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

struct Responder::State {
  SendFunction send;
  std::atomic<bool> sent{false};
};

Responder::Responder(SendFunction send) : state_(std::make_shared<State>()) { state_->send = std::move(send); }

void Responder::send(Response&& response) const {
  if (state_->sent.exchange(true)) return;
  state_->send(std::move(response));
}

bool Responder::sent() const noexcept { return state_->sent.load(); }

}  // namespace pixelgate::http
