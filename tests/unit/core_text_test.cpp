#include <gtest/gtest.h>

#include "core/hash.hpp"
#include "core/text.hpp"

using namespace pixelgate::core;

TEST(PercentDecode, DecodesEitherHexCase) {
  EXPECT_EQ(percent_decode("%7e%7E", false).value(), "~~");
}

TEST(PercentDecode, PlusIsSpaceOnlyInQueries) {
  EXPECT_EQ(percent_decode("a+b", true).value(), "a b");
  EXPECT_EQ(percent_decode("a+b", false).value(), "a+b");
  EXPECT_EQ(percent_decode("a%2Bb", true).value(), "a+b");
}

TEST(PercentDecode, RejectsMalformedEscapes) {
  EXPECT_FALSE(percent_decode("%", true).has_value());
  EXPECT_FALSE(percent_decode("%4", true).has_value());
  EXPECT_FALSE(percent_decode("%zz", true).has_value());
  EXPECT_FALSE(percent_decode("abc%4", true).has_value());
}

TEST(PercentDecode, DecodesUtf8Bytes) {
  EXPECT_EQ(percent_decode("%F0%9F%90%B6", true).value(), "\xF0\x9F\x90\xB6");
}

TEST(PercentEncode, KeepsUnreservedOnly) {
  EXPECT_EQ(percent_encode("a b+~/%"), "a%20b%2B~%2F%25");
}

TEST(ParseQuery, KeepsOrderAndDecodes) {
  auto params = parse_query("prompt=a+blue%20dog&width=512&&flag").value();
  ASSERT_EQ(params.size(), 3u);
  EXPECT_EQ(params[0].first, "prompt");
  EXPECT_EQ(params[0].second, "a blue dog");
  EXPECT_EQ(params[1].second, "512");
  EXPECT_EQ(params[2].first, "flag");
  EXPECT_EQ(params[2].second, "");
}

TEST(ParseQuery, RejectsBadEscapeInName) {
  EXPECT_FALSE(parse_query("pro%zzmpt=x").has_value());
}

TEST(Utf8, AcceptsValidText) {
  EXPECT_TRUE(is_valid_utf8("plain"));
  EXPECT_TRUE(is_valid_utf8("\xE9\x9B\xAA"));          // 雪
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x90\xB6"));      // dog emoji
}

TEST(Utf8, RejectsMalformedText) {
  EXPECT_FALSE(is_valid_utf8("\xFF"));
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));             // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));         // surrogate U+D800
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));     // above U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xE9\x9B"));             // truncated
}

TEST(Utf8, CountsCodePoints) {
  EXPECT_EQ(count_code_points("a\xE9\x9B\xAA\xF0\x9F\x90\xB6"), 3u);
}

TEST(ControlCharacters, DetectsC0C1AndDel) {
  EXPECT_TRUE(has_control_characters("a\nb"));
  EXPECT_TRUE(has_control_characters("a\tb"));
  EXPECT_TRUE(has_control_characters("a\x7f"));
  EXPECT_TRUE(has_control_characters("a\xC2\x85"));    // U+0085 NEL
  EXPECT_FALSE(has_control_characters("a\xC2\xA0" "b"));  // no-break space
}

TEST(RedactSecret, ShowsLastFourOnly) {
  EXPECT_EQ(redact_secret("sk-abcdef123456"), "...3456");
  EXPECT_EQ(redact_secret("short"), "...");
  EXPECT_EQ(redact_secret(""), "(empty)");
}

TEST(Sha256, MatchesKnownAnswer) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Base64, RoundTripsWithPadding) {
  for (std::string text : {"", "f", "fo", "foo", "foob", "fooba", "foobar"}) {
    EXPECT_EQ(base64_decode(base64_encode(text)).value(), text) << text;
  }
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
}

TEST(Base64, RejectsInvalidInput) {
  EXPECT_FALSE(base64_decode("abc").has_value());
  EXPECT_FALSE(base64_decode("ab!c").has_value());
  EXPECT_FALSE(base64_decode("ab c").has_value());
}
