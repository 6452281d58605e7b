#include <gtest/gtest.h>

#include "admission/url_signing.hpp"

using namespace pixelgate;
using admission::SigningKey;

namespace {

const SigningKey kKey{"k1", "test-secret-0123456789abcdef"};
const SigningKey kOldKey{"k0", "old-secret-0123456789abcdef"};

std::map<std::string, SigningKey> keys() { return {{"k1", kKey}, {"k0", kOldKey}}; }

core::Result<admission::VerifiedRequest> verify(const std::string& url, const core::Clock& clock) {
  const std::size_t question = url.find('?');
  return admission::verify_signed_request(url.substr(0, question),
                                          question == std::string::npos ? "" : url.substr(question + 1), keys(), clock);
}

std::string sign(const std::string& url, std::optional<std::int64_t> expires = std::nullopt,
                 const SigningKey& key = kKey) {
  auto signed_url = admission::sign_url(url, key, expires);
  EXPECT_TRUE(signed_url.ok()) << (signed_url.ok() ? "" : signed_url.error().message);
  return signed_url.ok() ? *signed_url : std::string{};
}

// Replaces the first occurrence of `from` in `text`.
std::string replace(std::string text, const std::string& from, const std::string& to) {
  const std::size_t at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  if (at != std::string::npos) text.replace(at, from.size(), to);
  return text;
}

}  // namespace

// Known-answer vectors, computed independently with Python's hmac module;
// docs/signing.md lists the same values.
TEST(UrlSigning, CanonicalFormKnownAnswer) {
  auto canonical = admission::canonicalize("/generate-image", "prompt=a+blue+dog&width=512&kid=k1&exp=1800000000");
  ASSERT_TRUE(canonical.ok());
  EXPECT_EQ(canonical->canonical,
            "PIXELGATE-HMAC-SHA256\n/generate-image\nexp=1800000000&kid=k1&prompt=a%20blue%20dog&width=512");
}

TEST(UrlSigning, SignatureKnownAnswer) {
  EXPECT_EQ(admission::hmac_sha256_base64url(
                "test-secret-0123456789abcdef",
                "PIXELGATE-HMAC-SHA256\n/generate-image\nexp=1800000000&kid=k1&prompt=a%20blue%20dog&width=512"),
            "EhDl6onYPmdKHaLEZYV_22Zwje-kQIg8jlXRuqSvHcc");
}

TEST(UrlSigning, SignedUrlKnownAnswer) {
  EXPECT_EQ(sign("/generate-image?prompt=a+blue+dog&width=512", 1800000000),
            "/generate-image?prompt=a%20blue%20dog&width=512&kid=k1&exp=1800000000&sig="
            "EhDl6onYPmdKHaLEZYV_22Zwje-kQIg8jlXRuqSvHcc");
}

TEST(UrlSigning, SignedUrlVerifies) {
  core::ManualClock clock(1'700'000'000);
  auto verified = verify(sign("/v1/images/hero?prompt=mountains&seed=7", 1800000000), clock);
  ASSERT_TRUE(verified.ok()) << verified.error().message;
  EXPECT_EQ(verified->key_id, "k1");
  ASSERT_EQ(verified->params.size(), 2u);
  EXPECT_EQ(verified->params[0].first, "prompt");
  EXPECT_EQ(verified->params[1].second, "7");
}

// Each accepted variant spells the same request another way.
TEST(UrlSigning, AcceptedVariants) {
  core::ManualClock clock(1'700'000'000);
  const std::string url = sign("/generate-image?prompt=a+b~c&width=512", 1800000000);
  ASSERT_FALSE(url.empty());
  const std::vector<std::string> variants = {
      replace(url, "a%20b", "a+b"),                  // + for a space
      replace(url, "~c", "%7Ec"),                     // escaped unreserved character
      replace(url, "&width=512", "") + "&width=512",  // parameters reordered
  };
  for (const auto& variant : variants) {
    auto verified = verify(variant, clock);
    EXPECT_TRUE(verified.ok()) << variant << ": " << verified.error().message;
  }
}

TEST(UrlSigning, EscapedSlashInValueIsSameValue) {
  core::ManualClock clock(1'700'000'000);
  const std::string url = sign("/generate-image?prompt=a%2Fb", 1800000000);
  EXPECT_TRUE(verify(replace(url, "a%2Fb", "a/b"), clock).ok());
}

TEST(UrlSigning, NonAsciiTextVerifies) {
  core::ManualClock clock(1'700'000'000);
  const std::string url = sign("/generate-image?prompt=%E9%9B%AA+%F0%9F%90%B6", 1800000000);
  EXPECT_NE(url.find("prompt=%E9%9B%AA%20%F0%9F%90%B6"), std::string::npos);
  EXPECT_TRUE(verify(url, clock).ok());
}

TEST(UrlSigning, RejectedVariants) {
  core::ManualClock clock(1'700'000'000);
  const std::string url = sign("/generate-image?prompt=a%2Fb&width=512", 1800000000);
  ASSERT_FALSE(url.empty());
  const std::vector<std::string> variants = {
      replace(url, "%2F", "%2f"),                  // lower-case hex: not canonical
      replace(url, "width=512", "width=513"),      // a changed value
      url + "&width=512",                          // a duplicated parameter
      url + "&extra=1",                            // an added parameter
      replace(url, "/generate-image", "/v1/images/generate-image"),  // another path
      replace(url, "kid=k1", "kid=k0"),            // another key's id
      replace(url, "kid=k1", "kid=k9"),            // an unknown key id
      url + "&sig=x",                              // a second signature
      replace(url, "exp=1800000000", "exp=1900000000"),  // extended expiry
  };
  for (const auto& variant : variants) {
    auto verified = verify(variant, clock);
    ASSERT_FALSE(verified.ok()) << variant;
    EXPECT_EQ(verified.error().code, core::ErrorCode::PermissionDenied) << variant;
  }
}

TEST(UrlSigning, EverySingleByteChangeFails) {
  core::ManualClock clock(1'700'000'000);
  const std::string url = sign("/generate-image?prompt=a+blue+dog%21&width=512", 1800000000);
  int accepted = 0;
  for (std::size_t i = 0; i < url.size(); ++i) {
    for (int delta : {1, -1, 32}) {
      std::string mutated = url;
      mutated[i] = static_cast<char>(mutated[i] + delta);
      if (verify(mutated, clock).ok()) {
        ++accepted;
        ADD_FAILURE() << "accepted: " << mutated;
      }
    }
  }
  EXPECT_EQ(accepted, 0);
}

TEST(UrlSigning, ExpiryUsesInjectedClock) {
  const std::string url = sign("/generate-image?prompt=x", 1800000000);
  core::ManualClock before(1'799'999'999);
  EXPECT_TRUE(verify(url, before).ok());
  core::ManualClock at(1'800'000'000);
  EXPECT_TRUE(verify(url, at).ok());
  core::ManualClock after(1'800'000'001);
  auto expired = verify(url, after);
  ASSERT_FALSE(expired.ok());
  EXPECT_NE(expired.error().message.find("expired at 2027-01-15T08:00:00Z"), std::string::npos);
}

TEST(UrlSigning, WithoutExpiryNeverExpires) {
  core::ManualClock far_future(4'000'000'000);
  EXPECT_TRUE(verify(sign("/generate-image?prompt=x"), far_future).ok());
}

TEST(UrlSigning, RotationAcceptsBothKeys) {
  core::ManualClock clock(1'700'000'000);
  auto old_url = verify(sign("/generate-image?prompt=x", std::nullopt, kOldKey), clock);
  auto new_url = verify(sign("/generate-image?prompt=x", std::nullopt, kKey), clock);
  ASSERT_TRUE(old_url.ok());
  ASSERT_TRUE(new_url.ok());
  EXPECT_EQ(old_url->key_id, "k0");
  EXPECT_EQ(new_url->key_id, "k1");
}

TEST(UrlSigning, MissingPiecesAreNamed) {
  core::ManualClock clock(1'700'000'000);
  EXPECT_NE(verify("/generate-image?prompt=x", clock).error().message.find("signature missing"), std::string::npos);
  EXPECT_NE(verify("/generate-image?prompt=x&sig=abc", clock).error().message.find("no key id"), std::string::npos);
  EXPECT_NE(verify("/generate-image?prompt=x&kid=k1&exp=soon&sig=abc", clock).error().message.find("exp must be"),
            std::string::npos);
}

TEST(UrlSigning, SignerRejectsPresignedInput) {
  EXPECT_FALSE(admission::sign_url("/generate-image?prompt=x&kid=k1", kKey, std::nullopt).ok());
  EXPECT_FALSE(admission::sign_url("/generate-image?prompt=x&sig=abc", kKey, std::nullopt).ok());
  EXPECT_FALSE(admission::sign_url("generate-image?prompt=x", kKey, std::nullopt).ok());
}

TEST(UrlSigning, DetectsSignatureParameter) {
  EXPECT_TRUE(admission::has_signature("prompt=x&sig=abc"));
  EXPECT_TRUE(admission::has_signature("sig=abc"));
  EXPECT_FALSE(admission::has_signature("prompt=x&signal=1"));
  EXPECT_FALSE(admission::has_signature("prompt=sig%3Dabc"));
}
