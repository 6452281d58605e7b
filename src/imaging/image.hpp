// Image inspection and drawing through libvips. Every image a backend returns
// passes probe() before it is stored.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "core/error.hpp"

namespace pixelgate::imaging {

enum class ImageFormat { Png, Jpeg, Webp, Unknown };

// Returns the MIME type, for example "image/png"; "application/octet-stream"
// for Unknown.
std::string_view mime_type(ImageFormat format) noexcept;

// Returns the format from the first bytes (magic numbers) without decoding.
ImageFormat sniff_format(std::string_view bytes) noexcept;

struct ImageInfo {
  ImageFormat format = ImageFormat::Unknown;
  int width = 0;
  int height = 0;
};

struct ProbeLimits {
  std::size_t max_bytes = 32 * 1024 * 1024;
  int max_dimension = 8192;  // pixels, for width and height each
};

// Starts libvips once per process. Safe to call from several threads and more
// than once. Returns an error when libvips cannot start.
core::Status initialize();

// Checks that `bytes` is a complete PNG, JPEG or WebP image within `limits`.
// The byte size and the declared dimensions are checked before the full
// decode, so an oversized image is rejected cheaply. Errors are BadGateway,
// because the bytes come from a backend. Thread-safe.
core::Result<ImageInfo> probe(std::string_view bytes, const ProbeLimits& limits);

struct PlaceholderRequest {
  std::string prompt;
  std::string negative_prompt;
  int width = 512;
  int height = 512;
  std::uint64_t seed = 0;
  std::string label;  // a short line drawn under the prompt, e.g. "placeholder - not AI"
};

// Draws a deterministic PNG of exactly width x height: a background colour
// derived from the prompt and seed, with the prompt text, the size and the
// label written on it. The same request always gives the same bytes. Thread-safe.
core::Result<std::string> render_placeholder(const PlaceholderRequest& request);

}  // namespace pixelgate::imaging
