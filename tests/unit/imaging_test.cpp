#include "imaging/image.hpp"

#include <gtest/gtest.h>
#include <vips/vips.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace {

using pixelgate::core::ErrorCode;
using pixelgate::imaging::ImageFormat;
using pixelgate::imaging::PlaceholderRequest;
using pixelgate::imaging::ProbeLimits;
using pixelgate::imaging::initialize;
using pixelgate::imaging::probe;
using pixelgate::imaging::render_placeholder;
using pixelgate::imaging::sniff_format;

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

std::string placeholder_png(int width, int height, std::string prompt = "a red fox in snow",
                            std::uint64_t seed = 7) {
  PlaceholderRequest request;
  request.prompt = std::move(prompt);
  request.width = width;
  request.height = height;
  request.seed = seed;
  request.label = "placeholder - not AI";
  auto png = render_placeholder(request);
  EXPECT_TRUE(png.ok()) << png.error().message;
  return png.ok() ? png.value() : std::string();
}

// Encodes a horizontal grey ramp with libvips' own savers, so the tests do not
// depend on render_placeholder for formats other than PNG.
enum class Saver { Jpeg, Webp };

std::string encode_test_image(Saver saver, int width, int height) {
  EXPECT_TRUE(initialize().ok());
  VipsImage* grey = nullptr;
  EXPECT_EQ(vips_grey(&grey, width, height, "uchar", TRUE, nullptr), 0) << vips_error_buffer();

  void* buffer = nullptr;
  std::size_t length = 0;
  const int status = saver == Saver::Jpeg
                         ? vips_jpegsave_buffer(grey, &buffer, &length, "Q", 80, nullptr)
                         : vips_webpsave_buffer(grey, &buffer, &length, "Q", 80, nullptr);
  g_object_unref(grey);
  EXPECT_EQ(status, 0) << vips_error_buffer();

  std::string bytes(static_cast<const char*>(buffer), length);
  g_free(buffer);
  return bytes;
}

// Decodes `png` and returns the minimum and maximum over all pixels and bands.
std::pair<double, double> pixel_range(const std::string& png) {
  VipsImage* image = vips_image_new_from_buffer(png.data(), png.size(), "", nullptr);
  EXPECT_NE(image, nullptr) << vips_error_buffer();
  double low = -1;
  double high = -1;
  EXPECT_EQ(vips_min(image, &low, nullptr), 0);
  EXPECT_EQ(vips_max(image, &high, nullptr), 0);
  g_object_unref(image);
  return {low, high};
}

// ---------------------------------------------------------------------------

TEST(ImageSniff, DetectsPng) {
  EXPECT_EQ(sniff_format(std::string_view("\x89PNG\r\n\x1a\n rest", 13)), ImageFormat::Png);
}

TEST(ImageSniff, DetectsJpeg) {
  EXPECT_EQ(sniff_format(std::string_view("\xFF\xD8\xFF\xE0", 4)), ImageFormat::Jpeg);
}

TEST(ImageSniff, DetectsWebp) {
  EXPECT_EQ(sniff_format(std::string_view("RIFF\x10\x00\x00\x00WEBPVP8 ", 16)), ImageFormat::Webp);
}

TEST(ImageSniff, RejectsOtherData) {
  EXPECT_EQ(sniff_format(""), ImageFormat::Unknown);
  EXPECT_EQ(sniff_format("GIF89a"), ImageFormat::Unknown);
  EXPECT_EQ(sniff_format(std::string_view("RIFF\x10\x00\x00\x00WAVE", 12)), ImageFormat::Unknown);
  EXPECT_EQ(sniff_format(std::string_view("\x89PNG\r\n", 6)), ImageFormat::Unknown);
  EXPECT_EQ(sniff_format("RIFF"), ImageFormat::Unknown);
}

TEST(ImageMimeType, MapsEachFormat) {
  using pixelgate::imaging::mime_type;
  EXPECT_EQ(mime_type(ImageFormat::Png), "image/png");
  EXPECT_EQ(mime_type(ImageFormat::Jpeg), "image/jpeg");
  EXPECT_EQ(mime_type(ImageFormat::Webp), "image/webp");
  EXPECT_EQ(mime_type(ImageFormat::Unknown), "application/octet-stream");
}

TEST(ImageInitialize, SucceedsRepeatedly) {
  EXPECT_TRUE(initialize().ok());
  EXPECT_TRUE(initialize().ok());
}

// ---------------------------------------------------------------------------

TEST(ImageProbe, AcceptsPlaceholderPng) {
  const std::string png = placeholder_png(320, 200);
  auto info = probe(png, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->format, ImageFormat::Png);
  EXPECT_EQ(info->width, 320);
  EXPECT_EQ(info->height, 200);
}

TEST(ImageProbe, AcceptsJpeg) {
  const std::string jpeg = encode_test_image(Saver::Jpeg, 120, 90);
  auto info = probe(jpeg, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->format, ImageFormat::Jpeg);
  EXPECT_EQ(info->width, 120);
  EXPECT_EQ(info->height, 90);
}

TEST(ImageProbe, AcceptsWebp) {
  const std::string webp = encode_test_image(Saver::Webp, 100, 60);
  auto info = probe(webp, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->format, ImageFormat::Webp);
  EXPECT_EQ(info->width, 100);
  EXPECT_EQ(info->height, 60);
}

TEST(ImageProbe, RejectsEmptyInput) {
  auto info = probe("", ProbeLimits{});
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, "empty")) << info.error().message;
}

TEST(ImageProbe, RejectsOversizeBytes) {
  const std::string png = placeholder_png(64, 64);
  ProbeLimits limits;
  limits.max_bytes = png.size() - 1;
  auto info = probe(png, limits);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, std::to_string(png.size()) + " bytes"))
      << info.error().message;
}

TEST(ImageProbe, AcceptsBytesAtLimit) {
  const std::string png = placeholder_png(64, 64);
  ProbeLimits limits;
  limits.max_bytes = png.size();
  EXPECT_TRUE(probe(png, limits).ok());
}

TEST(ImageProbe, RejectsOverDimension) {
  const std::string png = placeholder_png(300, 20);
  ProbeLimits limits;
  limits.max_dimension = 100;
  auto info = probe(png, limits);
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, "300x20 pixels")) << info.error().message;
  EXPECT_TRUE(contains(info.error().message, "limit is 100 per side")) << info.error().message;
}

TEST(ImageProbe, RejectsNonImageBytes) {
  auto info = probe("{\"error\": \"model overloaded\"}", ProbeLimits{});
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, "not a PNG, JPEG or WebP image"))
      << info.error().message;
  EXPECT_TRUE(contains(info.error().message, "JSON")) << info.error().message;
}

TEST(ImageProbe, NamesGifInRejection) {
  auto info = probe("GIF89a\x01\x00\x01\x00", ProbeLimits{});
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, "GIF")) << info.error().message;
}

TEST(ImageProbe, RejectsTruncatedPng) {
  const std::string png = placeholder_png(256, 256);
  auto info = probe(png.substr(0, png.size() / 2), ProbeLimits{});
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, "truncated or corrupt PNG image"))
      << info.error().message;
}

TEST(ImageProbe, RejectsPngSignatureOnly) {
  auto info = probe(std::string_view("\x89PNG\r\n\x1a\n", 8), ProbeLimits{});
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, "truncated or corrupt PNG image"))
      << info.error().message;
}

TEST(ImageProbe, RejectsCorruptPngData) {
  std::string png = placeholder_png(256, 256);
  png[png.size() / 2] = static_cast<char>(png[png.size() / 2] ^ 0xFF);
  auto info = probe(png, ProbeLimits{});
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, "truncated or corrupt PNG image"))
      << info.error().message;
}

TEST(ImageProbe, RejectsTruncatedJpeg) {
  const std::string jpeg = encode_test_image(Saver::Jpeg, 256, 256);
  auto info = probe(jpeg.substr(0, jpeg.size() / 2), ProbeLimits{});
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, "truncated or corrupt JPEG image"))
      << info.error().message;
}

TEST(ImageProbe, RejectsTruncatedWebp) {
  const std::string webp = encode_test_image(Saver::Webp, 256, 256);
  auto info = probe(webp.substr(0, webp.size() / 2), ProbeLimits{});
  ASSERT_FALSE(info.ok());
  EXPECT_EQ(info.error().code, ErrorCode::BadGateway);
  EXPECT_TRUE(contains(info.error().message, "truncated or corrupt WebP image"))
      << info.error().message;
}

TEST(ImageProbe, WorksFromSeveralThreads) {
  const std::string png = placeholder_png(200, 100);
  const std::string truncated = png.substr(0, png.size() / 2);
  std::vector<int> accepted(4, 0);
  std::vector<int> rejected(4, 0);

  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 10; ++i) {
        if (probe(png, ProbeLimits{}).ok()) ++accepted[t];
        if (!probe(truncated, ProbeLimits{}).ok()) ++rejected[t];
      }
    });
  }
  for (auto& thread : threads) thread.join();

  for (int t = 0; t < 4; ++t) {
    EXPECT_EQ(accepted[t], 10) << "thread " << t;
    EXPECT_EQ(rejected[t], 10) << "thread " << t;
  }
}

// ---------------------------------------------------------------------------

TEST(ImagePlaceholder, IsDeterministic) {
  const std::string first = placeholder_png(512, 512, "a lighthouse at dusk", 42);
  const std::string second = placeholder_png(512, 512, "a lighthouse at dusk", 42);
  ASSERT_FALSE(first.empty());
  EXPECT_EQ(first, second);
}

TEST(ImagePlaceholder, DiffersForOtherPrompt) {
  const std::string first = placeholder_png(128, 128, "a lighthouse at dusk", 42);
  const std::string second = placeholder_png(128, 128, "a lighthouse at dawn", 42);
  EXPECT_NE(first, second);
}

TEST(ImagePlaceholder, DiffersForOtherSeed) {
  const std::string first = placeholder_png(128, 128, "a lighthouse at dusk", 42);
  const std::string second = placeholder_png(128, 128, "a lighthouse at dusk", 43);
  EXPECT_NE(first, second);
}

TEST(ImagePlaceholder, HasExactSizeLandscape) {
  const std::string png = placeholder_png(1792, 1024);
  EXPECT_EQ(sniff_format(png), ImageFormat::Png);
  auto info = probe(png, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->width, 1792);
  EXPECT_EQ(info->height, 1024);
}

TEST(ImagePlaceholder, HasExactSizeSmall) {
  const std::string png = placeholder_png(64, 64);
  auto info = probe(png, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->width, 64);
  EXPECT_EQ(info->height, 64);
}

TEST(ImagePlaceholder, HasExactSizeMinimum) {
  const std::string png = placeholder_png(16, 16);
  auto info = probe(png, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->width, 16);
  EXPECT_EQ(info->height, 16);
}

TEST(ImagePlaceholder, HandlesEmojiAndCjk) {
  const std::string png = placeholder_png(256, 256, "\U0001F98A\U0001F332 \u96EA\u306E\u4E2D\u306E\u72D0");
  auto info = probe(png, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->width, 256);
}

TEST(ImagePlaceholder, HandlesInvalidUtf8AndControls) {
  const std::string png = placeholder_png(256, 256, std::string("bad \xC3\x28 bytes\x01\n\tend"));
  auto info = probe(png, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->width, 256);
}

TEST(ImagePlaceholder, HandlesLongPrompt) {
  const std::string png = placeholder_png(128, 128, std::string(5000, 'w'));
  auto info = probe(png, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  EXPECT_EQ(info->width, 128);
}

// Text pixels are exactly black (0) or white (255), while the background
// gradient stays away from both, so a pure ink value shows that the text was
// drawn: markup characters in the prompt did not make Pango reject it.
TEST(ImagePlaceholder, DrawsTextWithMarkupCharacters) {
  const std::string png = placeholder_png(256, 256, "<b>bold</b> & <i>not closed");
  auto info = probe(png, ProbeLimits{});
  ASSERT_TRUE(info.ok()) << info.error().message;
  const auto [low, high] = pixel_range(png);
  EXPECT_TRUE(low == 0.0 || high == 255.0) << "min " << low << ", max " << high;
}

TEST(ImagePlaceholder, RejectsTooSmall) {
  PlaceholderRequest request;
  request.prompt = "x";
  request.width = 8;
  request.height = 64;
  auto png = render_placeholder(request);
  ASSERT_FALSE(png.ok());
  EXPECT_EQ(png.error().code, ErrorCode::InvalidArgument);
  EXPECT_EQ(png.error().param, "width");
}

TEST(ImagePlaceholder, RejectsTooLarge) {
  PlaceholderRequest request;
  request.prompt = "x";
  request.width = 64;
  request.height = 9000;
  auto png = render_placeholder(request);
  ASSERT_FALSE(png.ok());
  EXPECT_EQ(png.error().code, ErrorCode::InvalidArgument);
  EXPECT_EQ(png.error().param, "height");
}

}  // namespace
