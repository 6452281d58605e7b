// Turns a stored image into response headers and body: ETag, 304
// revalidation and caching headers.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "storage/hot_cache.hpp"

namespace pixelgate::delivery {

// Returns true when an If-None-Match value matches `etag` under the weak
// comparison that RFC 9110 section 13.1.2 prescribes for this header:
// "*", or any listed tag whose opaque part equals etag's, with or without W/.
// `etag` is a quoted strong tag such as "\"abc\"". Malformed members are
// skipped.
bool if_none_match_matches(std::string_view header_value, std::string_view etag);

enum class CachePolicy {
  Immutable,  // content-addressed: public, max-age one year, immutable
  NoStore,    // a random-seed image on a prompt URL: never reuse
};

struct ImageResponse {
  int status = 200;
  std::vector<std::pair<std::string, std::string>> headers;
  std::shared_ptr<const std::string> body;  // null for 304
};

// Builds a 200 with the image, or a 304 when `if_none_match` matches. The
// 304 carries the same ETag and Cache-Control as the 200 would.
ImageResponse build_image_response(const storage::CachedImage& image, CachePolicy policy,
                                   std::string_view if_none_match);

// Returns the strong ETag for an object key: the key in double quotes.
std::string etag_for_key(std::string_view key);

}  // namespace pixelgate::delivery
