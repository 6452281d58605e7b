#include <gtest/gtest.h>

#include "delivery/image_response.hpp"

using namespace pixelgate;

namespace {

const std::string kKey(64, 'a');
const std::string kTag = "\"" + kKey + "\"";

storage::CachedImage image() {
  storage::CachedImage cached;
  cached.key = kKey;
  cached.bytes = std::make_shared<const std::string>("PNGDATA");
  cached.content_type = "image/png";
  cached.digest_header = "sha-256=:x:";
  return cached;
}

std::string header(const delivery::ImageResponse& response, const std::string& name) {
  for (const auto& [n, v] : response.headers) {
    if (n == name) return v;
  }
  return {};
}

}  // namespace

TEST(IfNoneMatch, MatchesStrongWeakListAndStar) {
  EXPECT_TRUE(delivery::if_none_match_matches(kTag, kTag));
  EXPECT_TRUE(delivery::if_none_match_matches("W/" + kTag, kTag));
  EXPECT_TRUE(delivery::if_none_match_matches("\"other\", " + kTag, kTag));
  EXPECT_TRUE(delivery::if_none_match_matches("\"other\",W/" + kTag + " ", kTag));
  EXPECT_TRUE(delivery::if_none_match_matches("*", kTag));
}

TEST(IfNoneMatch, RejectsOthersAndMalformed) {
  EXPECT_FALSE(delivery::if_none_match_matches("\"other\"", kTag));
  EXPECT_FALSE(delivery::if_none_match_matches(kKey, kTag));  // unquoted
  EXPECT_FALSE(delivery::if_none_match_matches("", kTag));
  EXPECT_FALSE(delivery::if_none_match_matches("w/" + kTag, kTag));  // W must be upper case
  EXPECT_FALSE(delivery::if_none_match_matches("\"" + kKey.substr(1) + "\"", kTag));
}

TEST(ImageResponse, ImmutableHeadersOn200) {
  const auto response = delivery::build_image_response(image(), delivery::CachePolicy::Immutable, "");
  EXPECT_EQ(response.status, 200);
  EXPECT_EQ(header(response, "ETag"), kTag);
  EXPECT_EQ(header(response, "Cache-Control"), "public, max-age=31536000, immutable");
  EXPECT_EQ(header(response, "Content-Type"), "image/png");
  EXPECT_EQ(header(response, "Repr-Digest"), "sha-256=:x:");
  ASSERT_TRUE(response.body);
  EXPECT_EQ(*response.body, "PNGDATA");
}

TEST(ImageResponse, NotModifiedKeepsValidators) {
  const auto response = delivery::build_image_response(image(), delivery::CachePolicy::Immutable, "W/" + kTag);
  EXPECT_EQ(response.status, 304);
  EXPECT_EQ(header(response, "ETag"), kTag);
  EXPECT_EQ(header(response, "Cache-Control"), "public, max-age=31536000, immutable");
  EXPECT_FALSE(response.body);
}

TEST(ImageResponse, RandomSeedIsNoStore) {
  const auto response = delivery::build_image_response(image(), delivery::CachePolicy::NoStore, "");
  EXPECT_EQ(header(response, "Cache-Control"), "no-store");
}
