#include "imaging/image.hpp"

#include <vips/vips.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <utility>

namespace pixelgate::imaging {

namespace {

// --- libvips plumbing --------------------------------------------------------

struct GObjectUnref {
  void operator()(gpointer object) const noexcept {
    if (object != nullptr) g_object_unref(object);
  }
};

using ImagePtr = std::unique_ptr<VipsImage, GObjectUnref>;

// Copies and clears the libvips error buffer, joining its lines with "; ".
// NOTE: libvips keeps one error buffer per process, so when several threads
// fail at the same moment a message can include text from another thread's
// failure, or arrive empty because another thread cleared it first.
std::string take_vips_error() {
  char* raw = vips_error_buffer_copy();  // also clears the buffer
  std::string text = raw != nullptr ? raw : "";
  g_free(raw);

  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  for (std::size_t pos = text.find('\n'); pos != std::string::npos; pos = text.find('\n', pos)) {
    text.replace(pos, 1, "; ");
  }
  return text.empty() ? std::string("libvips returned no error message") : text;
}

// Takes ownership of the image that a libvips call wrote to `*output`, or turns
// the call's failure into an Internal error naming `step`. It takes a pointer
// because argument evaluation order is unspecified, and `*output` may be read
// only after the call has returned.
core::Result<ImagePtr> adopt(int status, VipsImage** output, std::string_view step) {
  ImagePtr owned(*output);
  *output = nullptr;
  if (status != 0 || owned == nullptr) {
    return core::Error::internal("failed to draw the placeholder image (" + std::string(step) +
                                 "): " + take_vips_error());
  }
  return owned;
}

std::string_view format_name(ImageFormat format) noexcept {
  switch (format) {
    case ImageFormat::Png: return "PNG";
    case ImageFormat::Jpeg: return "JPEG";
    case ImageFormat::Webp: return "WebP";
    case ImageFormat::Unknown: break;
  }
  return "unknown";
}

bool starts_with_bytes(std::string_view bytes, std::string_view prefix, std::size_t offset = 0) {
  return bytes.size() >= offset + prefix.size() && bytes.substr(offset, prefix.size()) == prefix;
}

// --- probe helpers -----------------------------------------------------------

// Names a common format that the gateway does not accept, for the error
// message; returns "unrecognised data" when the magic number matches nothing.
std::string_view describe_unaccepted(std::string_view bytes) {
  using namespace std::string_view_literals;
  if (starts_with_bytes(bytes, "GIF8"sv)) return "a GIF image";
  if (starts_with_bytes(bytes, "BM"sv)) return "a BMP image";
  if (starts_with_bytes(bytes, "II*\0"sv) || starts_with_bytes(bytes, "MM\0*"sv)) return "a TIFF image";
  if (starts_with_bytes(bytes, "ftyp"sv, 4)) return "an AVIF, HEIF or MP4 file";
  if (starts_with_bytes(bytes, "RIFF"sv)) return "a RIFF file that is not WebP";

  const auto first = static_cast<unsigned char>(bytes.front());
  if (first == '{' || first == '[') return "JSON text";
  if (first == '<') return "HTML or XML text";
  return "unrecognised data";
}

core::Status check_input(std::string_view bytes, const ProbeLimits& limits) {
  if (bytes.empty()) {
    return core::Error::bad_gateway("backend returned an empty body where an image was expected");
  }
  if (bytes.size() > limits.max_bytes) {
    return core::Error::bad_gateway("backend returned an image of " + std::to_string(bytes.size()) +
                                    " bytes; the limit is " + std::to_string(limits.max_bytes) +
                                    " bytes");
  }
  if (sniff_format(bytes) == ImageFormat::Unknown) {
    return core::Error::bad_gateway(
        "backend returned data that is not a PNG, JPEG or WebP image (it looks like " +
        std::string(describe_unaccepted(bytes)) + ")");
  }
  return core::Ok{};
}

core::Error corrupt_image_error(ImageFormat format) {
  return core::Error::bad_gateway("backend returned a truncated or corrupt " +
                                  std::string(format_name(format)) + " image: " + take_vips_error());
}

// Reads only the header. The returned image refers to `bytes` without copying
// them, so it must not outlive them.
core::Result<ImagePtr> load_header(std::string_view bytes, ImageFormat format) {
  // Sequential access lets the full decode stream through the rows. fail_on
  // ERROR also stops on truncation, because each VipsFailOn level implies the
  // ones before it (libvips 8.14, foreign.h).
  ImagePtr image(vips_image_new_from_buffer(bytes.data(), bytes.size(), "",
                                            "access", VIPS_ACCESS_SEQUENTIAL,
                                            "fail_on", VIPS_FAIL_ON_ERROR,
                                            nullptr));
  if (image == nullptr) return corrupt_image_error(format);
  return image;
}

core::Status check_dimensions(const VipsImage* image, const ProbeLimits& limits) {
  const int width = vips_image_get_width(image);
  const int height = vips_image_get_height(image);
  if (width > limits.max_dimension || height > limits.max_dimension) {
    return core::Error::bad_gateway("backend returned an image of " + std::to_string(width) + "x" +
                                    std::to_string(height) + " pixels; the limit is " +
                                    std::to_string(limits.max_dimension) + " per side");
  }
  return core::Ok{};
}

// Decodes every pixel. vips_avg streams the rows through a small buffer, so
// it finds truncated or corrupt data without holding the whole image.
// NOTE: libvips loads only the first frame of an animated WebP by default, so
// damage in later frames goes unnoticed.
core::Status decode_all_pixels(VipsImage* image, ImageFormat format) {
  double mean = 0.0;
  if (vips_avg(image, &mean, nullptr) != 0) return corrupt_image_error(format);
  return core::Ok{};
}

// --- placeholder helpers -----------------------------------------------------

constexpr int kMinPlaceholderSide = 16;
constexpr int kMaxPlaceholderSide = 8192;
constexpr std::size_t kMaxPromptCharacters = 200;

core::Status check_side(int value, const char* name) {
  if (value < kMinPlaceholderSide || value > kMaxPlaceholderSide) {
    return core::Error::invalid(std::string(name) + " must be between " +
                                    std::to_string(kMinPlaceholderSide) + " and " +
                                    std::to_string(kMaxPlaceholderSide) + " pixels; got " +
                                    std::to_string(value),
                                name);
  }
  return core::Ok{};
}

// FNV-1a, 64-bit, over the prompt bytes and then the seed's 8 bytes in
// little-endian order. Unlike std::hash, the value is the same on every build.
std::uint64_t hash_prompt_and_seed(std::string_view prompt, std::uint64_t seed) {
  constexpr std::uint64_t kOffsetBasis = 14695981039346656037ULL;
  constexpr std::uint64_t kPrime = 1099511628211ULL;

  std::uint64_t hash = kOffsetBasis;
  auto mix = [&hash](unsigned char byte) {
    hash ^= byte;
    hash *= kPrime;
  };
  for (char c : prompt) mix(static_cast<unsigned char>(c));
  for (int shift = 0; shift < 64; shift += 8) mix(static_cast<unsigned char>(seed >> shift));
  return hash;
}

using Rgb = std::array<double, 3>;

// Colours of the diagonal background gradient and of the text drawn on it.
struct Palette {
  Rgb top_left{};
  Rgb bottom_right{};
  bool dark_text = false;
};

Rgb mix_towards(const Rgb& colour, double target, double amount) {
  Rgb result{};
  for (std::size_t i = 0; i < result.size(); ++i) {
    result[i] = colour[i] + (target - colour[i]) * amount;
  }
  return result;
}

// Picks a base colour from the hash, then moves both gradient ends away from
// the text colour, so text contrasts with every part of the background.
Palette palette_from_hash(std::uint64_t hash) {
  Rgb base{};
  for (std::size_t i = 0; i < base.size(); ++i) {
    base[i] = 30.0 + static_cast<double>((hash >> (8 * i)) & 0xFF) * (195.0 / 255.0);
  }
  // Rec. 709 luma weights, applied to the gamma-encoded values as an estimate.
  const double luma = 0.2126 * base[0] + 0.7152 * base[1] + 0.0722 * base[2];

  Palette palette;
  palette.dark_text = luma >= 128.0;
  const double target = palette.dark_text ? 255.0 : 0.0;
  palette.top_left = mix_towards(base, target, 0.3);
  palette.bottom_right = mix_towards(base, target, 0.65);
  return palette;
}

core::Result<ImagePtr> draw_gradient(int width, int height, const Palette& palette) {
  VipsImage* raw = nullptr;
  auto coordinates = adopt(vips_xyz(&raw, width, height, nullptr), &raw, "xyz");
  if (!coordinates) return std::move(coordinates).error();

  // (x + y) / 2 runs from 0 at the top-left corner to `span` at the bottom-right.
  auto diagonal = adopt(vips_bandmean(coordinates->get(), &raw, nullptr), &raw, "bandmean");
  if (!diagonal) return std::move(diagonal).error();

  const double span = std::max(1, (width + height - 2) / 2);
  std::array<double, 3> scale{};
  std::array<double, 3> offset{};
  for (std::size_t i = 0; i < scale.size(); ++i) {
    scale[i] = (palette.bottom_right[i] - palette.top_left[i]) / span;
    offset[i] = palette.top_left[i];
  }
  // A one-band input with three constants gives a three-band output.
  return adopt(vips_linear(diagonal->get(), &raw, scale.data(), offset.data(), 3,
                           "uchar", TRUE, nullptr),
               &raw, "linear");
}

void append_escaped(std::string& out, gunichar character) {
  switch (character) {
    case '&': out += "&amp;"; return;
    case '<': out += "&lt;"; return;
    case '>': out += "&gt;"; return;
    default: break;
  }
  if (g_unichar_iscntrl(character)) {
    out += ' ';  // newlines, tabs and other control characters
    return;
  }
  char encoded[6];
  out.append(encoded, static_cast<std::size_t>(g_unichar_to_utf8(character, encoded)));
}

// Makes `text` safe to place in Pango markup: invalid UTF-8 becomes U+FFFD,
// control characters become spaces, & < > are escaped, and text longer than
// `max_characters` code points is cut and ends with an ellipsis.
std::string to_markup_text(std::string_view text, std::size_t max_characters) {
  if (text.empty()) return {};
  gchar* valid = g_utf8_make_valid(text.data(), static_cast<gssize>(text.size()));

  std::string out;
  std::size_t count = 0;
  for (const gchar* p = valid; *p != '\0'; p = g_utf8_next_char(p)) {
    if (count == max_characters) {
      out += "\u2026";
      break;
    }
    append_escaped(out, g_utf8_get_char(p));
    ++count;
  }
  g_free(valid);
  return out;
}

std::string build_markup(const PlaceholderRequest& request) {
  std::string markup = to_markup_text(request.prompt, kMaxPromptCharacters);
  if (!markup.empty()) markup += '\n';

  markup += "<span size=\"smaller\">" + std::to_string(request.width) + "x" +
            std::to_string(request.height) + " \u00B7 seed " + std::to_string(request.seed) +
            "</span>";
  if (!request.label.empty()) {
    markup += "\n<span size=\"smaller\"><i>" + to_markup_text(request.label, 80) + "</i></span>";
  }
  return markup;
}

// Renders `markup` as a one-band mask (255 where text is) no larger than
// box_width x box_height, or returns nullptr when Pango cannot draw it.
ImagePtr render_text_mask(const std::string& markup, int box_width, int box_height,
                          int font_pixels) {
  const std::string font = "sans " + std::to_string(font_pixels);

  // At 72 dpi one point is one pixel, so the font size is in pixels.
  VipsImage* raw = nullptr;
  const int status = vips_text(&raw, markup.c_str(), "font", font.c_str(), "width", box_width,
                               "dpi", 72, "align", VIPS_ALIGN_CENTRE,
                               "wrap", VIPS_TEXT_WRAP_WORD_CHAR, nullptr);
  ImagePtr mask(raw);
  if (status != 0 || mask == nullptr) return nullptr;
  if (vips_image_get_height(mask.get()) <= box_height &&
      vips_image_get_width(mask.get()) <= box_width) {
    return mask;
  }

  // The text is too large at the preferred size. Without "dpi", vips_text
  // searches for the dpi that fits the text into width x height.
  mask.reset();
  raw = nullptr;
  const int fitted = vips_text(&raw, markup.c_str(), "font", font.c_str(), "width", box_width,
                               "height", box_height, "align", VIPS_ALIGN_CENTRE,
                               "wrap", VIPS_TEXT_WRAP_WORD_CHAR, nullptr);
  mask.reset(raw);
  return fitted == 0 ? std::move(mask) : nullptr;
}

// Draws the text centred on `background`. When Pango cannot draw the text,
// for example because no font is installed, it returns `background` unchanged
// without logging, because a placeholder without text is still a usable image.
core::Result<ImagePtr> draw_text(ImagePtr background, const PlaceholderRequest& request,
                                 const Palette& palette) {
  const int width = request.width;
  const int height = request.height;
  const int margin = std::max(2, std::min(width, height) / 16);
  const int font_pixels = std::max(6, std::min(width, height) / 18);

  ImagePtr mask = render_text_mask(build_markup(request), width - 2 * margin,
                                   height - 2 * margin, font_pixels);
  if (mask == nullptr) {
    vips_error_clear();
    return background;
  }

  // vips_gravity pads with 0 (no text), and crops if the mask is larger.
  VipsImage* raw = nullptr;
  auto placed = adopt(vips_gravity(mask.get(), &raw, VIPS_COMPASS_DIRECTION_CENTRE, width, height,
                                   nullptr),
                      &raw, "gravity");
  if (!placed) return std::move(placed).error();

  auto black = adopt(vips_black(&raw, width, height, nullptr), &raw, "black");
  if (!black) return std::move(black).error();
  ImagePtr ink = std::move(black).value();
  if (!palette.dark_text) {
    auto white = adopt(vips_invert(ink.get(), &raw, nullptr), &raw, "invert");
    if (!white) return std::move(white).error();
    ink = std::move(white).value();
  }

  // With blend, out = mask / 255 * ink + (1 - mask / 255) * background.
  return adopt(vips_ifthenelse(placed->get(), ink.get(), background.get(), &raw,
                               "blend", TRUE, nullptr),
               &raw, "ifthenelse");
}

// Encodes with every option fixed, and without metadata, so the same pixels
// give the same bytes.
// NOTE: the bytes can change with another version of libvips, libpng, zlib,
// Pango or the installed fonts.
core::Result<std::string> encode_png(VipsImage* image) {
  VipsImage* raw = nullptr;
  auto srgb = adopt(vips_copy(image, &raw, "interpretation", VIPS_INTERPRETATION_sRGB, nullptr),
                    &raw, "copy");
  if (!srgb) return std::move(srgb).error();

  void* buffer = nullptr;
  std::size_t length = 0;
  const int status = vips_pngsave_buffer(srgb->get(), &buffer, &length,
                                         "compression", 6,
                                         "interlace", FALSE,
                                         "filter", VIPS_FOREIGN_PNG_FILTER_ALL,
                                         "palette", FALSE,
                                         "bitdepth", 8,
                                         "strip", TRUE,
                                         nullptr);
  if (status != 0) {
    return core::Error::internal("failed to encode the placeholder image as PNG: " +
                                 take_vips_error());
  }
  std::string png(static_cast<const char*>(buffer), length);
  g_free(buffer);
  return png;
}

}  // namespace

std::string_view mime_type(ImageFormat format) noexcept {
  switch (format) {
    case ImageFormat::Png: return "image/png";
    case ImageFormat::Jpeg: return "image/jpeg";
    case ImageFormat::Webp: return "image/webp";
    case ImageFormat::Unknown: break;
  }
  return "application/octet-stream";
}

ImageFormat sniff_format(std::string_view bytes) noexcept {
  using namespace std::string_view_literals;
  if (starts_with_bytes(bytes, "\x89PNG\r\n\x1a\n"sv)) return ImageFormat::Png;
  if (starts_with_bytes(bytes, "\xFF\xD8\xFF"sv)) return ImageFormat::Jpeg;
  if (starts_with_bytes(bytes, "RIFF"sv) && starts_with_bytes(bytes, "WEBP"sv, 8)) {
    return ImageFormat::Webp;
  }
  return ImageFormat::Unknown;
}

core::Status initialize() {
  static std::once_flag once;
  static std::string failure;  // written only inside call_once

  std::call_once(once, [] {
    if (VIPS_INIT("pixelgate") != 0) {
      failure = "failed to start libvips: " + take_vips_error();
      return;
    }
    // Each backend image is decoded once, so the operation cache (in libvips
    // 8.14 up to 1000 operations or 100 MB by default) would only hold memory,
    // and cached buffer loads would keep pointers to request bodies that have
    // been freed.
    vips_cache_set_max(0);
    // Blocks, for the whole process, the loaders that libvips marks untrusted
    // (ImageMagick, PDF, SVG and others), whatever bytes arrive.
    vips_block_untrusted_set(TRUE);
  });

  if (!failure.empty()) return core::Error::internal(failure);
  return core::Ok{};
}

core::Result<ImageInfo> probe(std::string_view bytes, const ProbeLimits& limits) {
  if (auto checked = check_input(bytes, limits); !checked) return std::move(checked).error();
  if (auto started = initialize(); !started) return std::move(started).error();

  const ImageFormat format = sniff_format(bytes);
  auto image = load_header(bytes, format);
  if (!image) return std::move(image).error();

  if (auto sized = check_dimensions(image->get(), limits); !sized) return std::move(sized).error();
  if (auto decoded = decode_all_pixels(image->get(), format); !decoded) {
    return std::move(decoded).error();
  }

  return ImageInfo{format, vips_image_get_width(image->get()), vips_image_get_height(image->get())};
}

core::Result<std::string> render_placeholder(const PlaceholderRequest& request) {
  if (auto ok = check_side(request.width, "width"); !ok) return std::move(ok).error();
  if (auto ok = check_side(request.height, "height"); !ok) return std::move(ok).error();
  if (auto started = initialize(); !started) return std::move(started).error();

  const Palette palette = palette_from_hash(hash_prompt_and_seed(request.prompt, request.seed));
  auto background = draw_gradient(request.width, request.height, palette);
  if (!background) return std::move(background).error();

  auto drawn = draw_text(std::move(background).value(), request, palette);
  if (!drawn) return std::move(drawn).error();
  return encode_png(drawn->get());
}

}  // namespace pixelgate::imaging
