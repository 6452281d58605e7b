// A backend for unit tests that counts calls and holds each one until the
// test releases it, so tests can line up concurrent requests behind one call.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>

#include "backends/backend.hpp"
#include "imaging/image.hpp"

namespace pixelgate::test_support {

class HeldBackend final : public backends::Backend {
 public:
  // `price_usd` is both the list price and the cost of each image.
  explicit HeldBackend(std::string name = "held", double price_usd = 0.0)
      : name_(std::move(name)), price_usd_(price_usd) {}

  const std::string& name() const override { return name_; }
  std::string_view type() const override { return "held"; }
  int adapter_version() const override { return 1; }
  const std::string& default_model() const override { return name_; }
  bool honours_seed() const override { return true; }
  bool supports_negative_prompt() const override { return false; }
  std::optional<double> list_price(const core::GenerationSpec&) const override { return price_usd_; }
  core::Status validate(const core::GenerationSpec&) const override { return core::Ok{}; }

  // Draws a placeholder card of the requested size once released, or fails
  // with BadGateway when `fail` is set.
  core::Result<backends::GeneratedImage> generate(const core::GenerationSpec& spec,
                                                  const backends::GenerateContext&) override {
    calls.fetch_add(1);
    {
      std::unique_lock lock(mutex_);
      released_.wait(lock, [this] { return open_; });
    }
    if (fail) return core::Error::bad_gateway("scripted failure");

    imaging::PlaceholderRequest request;
    request.prompt = spec.prompt;
    request.width = spec.width;
    request.height = spec.height;
    backends::GeneratedImage image;
    image.bytes = imaging::render_placeholder(request).value();
    image.cost_usd = price_usd_;
    return image;
  }

  // Lets every held call, and every later one, go ahead.
  void release() {
    std::lock_guard lock(mutex_);
    open_ = true;
    released_.notify_all();
  }

  std::atomic<int> calls{0};
  std::atomic<bool> fail{false};

 private:
  std::string name_;
  double price_usd_;
  std::mutex mutex_;
  std::condition_variable released_;
  bool open_ = false;
};

}  // namespace pixelgate::test_support
