// Known-answer tests for the SigV4 signer.
//
// Sources of the expected values:
// - "Signature Version 4 test suite" (aws-sig-v4-test-suite, formerly at
//   docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html, now
//   kept in awslabs/aws-c-auth tests/aws-signing-test-suite): the cases
//   get-vanilla, get-vanilla-query-order-key-case, get-vanilla-query-order-value,
//   get-vanilla-query-unreserved, get-vanilla-utf8-query, get-unreserved,
//   get-utf8, get-space, get-header-key-duplicate, get-header-value-trim,
//   post-vanilla, post-header-value-case and get-vanilla-with-session-token,
//   as copied into public test fixtures. Key AKIDEXAMPLE, region us-east-1,
//   service "service", time 20150830T123600Z.
// - The IAM User Guide's worked example (GET ?Action=ListUsers on
//   iam.amazonaws.com, signature 5d672d79...), as quoted in public code.
// - The S3 API Reference's "GET Object" example from "Signature Calculations
//   for the Authorization Header" (Range: bytes=0-9, signature f0e8bdb8...),
//   as quoted in public code.
// - The S3 API Reference's presigned-URL example from "Authenticating
//   Requests: Using Query Parameters" (GET examplebucket/test.txt, expires
//   86400, signature aeeed9bb...), as quoted in public test code. The
//   presigned cases with a session token or an encoded key have no published
//   signature. Theirs come from the separate node:crypto implementation in
//   tests/fakes/s3-fault-proxy.mjs, which reproduces the published example.
// The cases with spaces, "+ = @ ~ %", Unicode and emoji in the path have no
// published signature. Their canonical requests follow AWS's encoding rule by
// hand, and their signatures were cross-checked with a separate node:crypto
// implementation (the one in tests/fakes/bedrock-fake.mjs follows the same
// rules).

#include <gtest/gtest.h>

#include "core/aws_sigv4.hpp"
#include "core/hash.hpp"

using namespace pixelgate;

namespace {

constexpr const char* kEmptyHash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

std::chrono::system_clock::time_point utc(int year, int month, int day, int hour, int minute) {
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  return std::chrono::system_clock::from_time_t(timegm(&tm));
}

// The shared setting of the test suite's cases.
core::AwsSigningInput suite_input(const std::string& method, const std::string& path) {
  core::AwsSigningInput input;
  input.method = method;
  input.host = "example.amazonaws.com";
  input.path = path;
  input.region = "us-east-1";
  input.service = "service";
  input.credentials = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
  input.payload_hash = kEmptyHash;
  input.time = utc(2015, 8, 30, 12, 36);
  return input;
}

std::string suite_authorization(const std::string& signed_headers, const std::string& signature) {
  return "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=" +
         signed_headers + ", Signature=" + signature;
}

core::AwsSigningInput s3_input(const std::string& method, const std::string& path) {
  core::AwsSigningInput input;
  input.method = method;
  input.host = "examplebucket.s3.amazonaws.com";
  input.path = path;
  input.region = "us-east-1";
  input.service = "s3";
  input.credentials = {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
  input.payload_hash = kEmptyHash;
  input.double_encode_path = false;
  input.add_content_sha256_header = true;
  input.time = utc(2013, 5, 24, 0, 0);
  return input;
}

}  // namespace

TEST(AwsSigV4Suite, GetVanilla) {
  const auto signed_request = core::aws_sigv4_sign(suite_input("GET", "/"));
  EXPECT_EQ(signed_request.canonical_request,
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\n" +
                std::string(kEmptyHash));
  EXPECT_EQ(signed_request.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\n"
            "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63");
  EXPECT_EQ(signed_request.authorization,
            suite_authorization("host;x-amz-date", "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31"));
}

TEST(AwsSigV4Suite, PostVanilla) {
  EXPECT_EQ(core::aws_sigv4_sign(suite_input("POST", "/")).signature,
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b");
}

TEST(AwsSigV4Suite, QueryOrderKeyCase) {
  auto input = suite_input("GET", "/");
  input.query = {{"Param2", "value2"}, {"Param1", "value1"}};
  const auto signed_request = core::aws_sigv4_sign(input);
  EXPECT_EQ(signed_request.query_string, "Param1=value1&Param2=value2");
  EXPECT_EQ(signed_request.signature, "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500");
}

TEST(AwsSigV4Suite, QueryOrderValue) {
  auto input = suite_input("GET", "/");
  input.query = {{"Param1", "value2"}, {"Param1", "value1"}};
  EXPECT_EQ(core::aws_sigv4_sign(input).signature, "5772eed61e12b33fae39ee5e7012498b51d56abc0abb7c60486157bd471c4694");
}

TEST(AwsSigV4Suite, QueryUnreservedCharacters) {
  const std::string unreserved = "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
  auto input = suite_input("GET", "/");
  input.query = {{unreserved, unreserved}};
  EXPECT_EQ(core::aws_sigv4_sign(input).signature, "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197");
}

TEST(AwsSigV4Suite, Utf8QueryName) {
  auto input = suite_input("GET", "/");
  input.query = {{"\xE1\x88\xB4", "bar"}};
  const auto signed_request = core::aws_sigv4_sign(input);
  EXPECT_EQ(signed_request.query_string, "%E1%88%B4=bar");
  EXPECT_EQ(signed_request.signature, "2cdec8eed098649ff3a119c94853b13c643bcf08f8b0a1d91e12c9027818dd04");
}

TEST(AwsSigV4Suite, UnreservedPath) {
  const auto signed_request =
      core::aws_sigv4_sign(suite_input("GET", "/-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"));
  EXPECT_EQ(signed_request.signature, "07ef7494c76fa4850883e2b006601f940f8a34d404d0cfa977f52a65bbf5f24f");
}

TEST(AwsSigV4Suite, Utf8Path) {
  const auto signed_request = core::aws_sigv4_sign(suite_input("GET", "/\xE1\x88\xB4"));
  EXPECT_NE(signed_request.canonical_request.find("\n/%E1%88%B4\n"), std::string::npos);
  EXPECT_EQ(signed_request.signature, "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85");
}

TEST(AwsSigV4Suite, SpaceInPath) {
  const auto signed_request = core::aws_sigv4_sign(suite_input("GET", "/example space/"));
  EXPECT_NE(signed_request.canonical_request.find("\n/example%20space/\n"), std::string::npos);
  EXPECT_EQ(signed_request.signature, "652487583200325589f1fba4c7e578f72c47cb61beeca81406b39ddec1366741");
}

TEST(AwsSigV4Suite, DuplicateHeaderKeys) {
  auto input = suite_input("GET", "/");
  input.headers = {{"My-Header1", "value2"}, {"My-Header1", "value2"}, {"My-Header1", "value1"}};
  const auto signed_request = core::aws_sigv4_sign(input);
  EXPECT_NE(signed_request.canonical_request.find("my-header1:value2,value2,value1\n"), std::string::npos);
  EXPECT_EQ(signed_request.authorization,
            suite_authorization("host;my-header1;x-amz-date",
                                "c9d5ea9f3f72853aea855b47ea873832890dbdd183b4468f858259531a5138ea"));
}

TEST(AwsSigV4Suite, HeaderValueTrim) {
  auto input = suite_input("GET", "/");
  input.headers = {{"My-Header1", " value1"}, {"My-Header2", " \"a   b   c\""}};
  const auto signed_request = core::aws_sigv4_sign(input);
  EXPECT_NE(signed_request.canonical_request.find("my-header2:\"a b c\"\n"), std::string::npos);
  EXPECT_EQ(signed_request.signature, "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736");
}

TEST(AwsSigV4Suite, HeaderValueCaseKept) {
  auto input = suite_input("POST", "/");
  input.headers = {{"My-Header1", "VALUE1"}};
  EXPECT_EQ(core::aws_sigv4_sign(input).signature, "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d");
}

TEST(AwsSigV4Suite, SessionTokenIsSigned) {
  auto input = suite_input("GET", "/");
  input.credentials.session_token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267";
  const auto signed_request = core::aws_sigv4_sign(input);
  EXPECT_EQ(signed_request.authorization,
            suite_authorization("host;x-amz-date;x-amz-security-token",
                                "07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"));
  EXPECT_NE(std::find(signed_request.headers_to_add.begin(), signed_request.headers_to_add.end(),
                      "X-Amz-Security-Token: 6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"),
            signed_request.headers_to_add.end());
}

TEST(AwsSigV4Docs, IamListUsersExample) {
  core::AwsSigningInput input;
  input.method = "GET";
  input.host = "iam.amazonaws.com";
  input.path = "/";
  input.query = {{"Action", "ListUsers"}, {"Version", "2010-05-08"}};
  input.headers = {{"Content-Type", "application/x-www-form-urlencoded; charset=utf-8"}};
  input.region = "us-east-1";
  input.service = "iam";
  input.credentials = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
  input.payload_hash = kEmptyHash;
  input.time = utc(2015, 8, 30, 12, 36);
  const auto signed_request = core::aws_sigv4_sign(input);
  EXPECT_EQ(signed_request.string_to_sign,
            "AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/iam/aws4_request\n"
            "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59");
  EXPECT_EQ(signed_request.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
            "SignedHeaders=content-type;host;x-amz-date, "
            "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7");
}

TEST(AwsSigV4Docs, S3GetObjectExample) {
  auto input = s3_input("GET", "/test.txt");
  input.headers = {{"Range", "bytes=0-9"}};
  const auto signed_request = core::aws_sigv4_sign(input);
  EXPECT_EQ(core::sha256_hex(signed_request.canonical_request),
            "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972");
  EXPECT_EQ(signed_request.authorization,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
            "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
            "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41");
}

TEST(AwsSigV4Encoding, ReservedCharactersEncodedOnce) {
  EXPECT_EQ(core::aws_encode_path("/photos/my key+=@~%.png"), "/photos/my%20key%2B%3D%40~%25.png");
}

TEST(AwsSigV4Encoding, UnicodeAndEmojiAsUtf8) {
  EXPECT_EQ(core::aws_encode_path("/photos/caf\xC3\xA9 \xF0\x9F\x90\xB1.png"), "/photos/caf%C3%A9%20%F0%9F%90%B1.png");
}

TEST(AwsSigV4Encoding, QueryEncodesSlash) {
  EXPECT_EQ(core::aws_uri_encode("a/b c", false), "a%2Fb%20c");
}

TEST(AwsSigV4Encoding, S3KeyWithReservedCharacters) {
  const auto signed_request = core::aws_sigv4_sign(s3_input("PUT", core::aws_encode_path("/photos/my key+=@~%.png")));
  EXPECT_NE(signed_request.canonical_request.find("PUT\n/photos/my%20key%2B%3D%40~%25.png\n"), std::string::npos);
  EXPECT_EQ(signed_request.signature, "fdd92e327a8e4f449f8a2bfdc16703508ac7e039d0cea6d613e4d16b4d7666b6");
}

TEST(AwsSigV4Encoding, S3KeyWithEmojiAndToken) {
  auto input = s3_input("GET", core::aws_encode_path("/photos/caf\xC3\xA9 \xF0\x9F\x90\xB1.png"));
  input.payload_hash = "UNSIGNED-PAYLOAD";
  input.credentials.session_token = "session/token+x=";
  const auto signed_request = core::aws_sigv4_sign(input);
  EXPECT_NE(signed_request.canonical_request.find("GET\n/photos/caf%C3%A9%20%F0%9F%90%B1.png\n"), std::string::npos);
  EXPECT_EQ(signed_request.signature, "4261e56f5c60f12650680b22568b010d983bd8551a48a4dc907240af8460b9a0");
}

TEST(AwsSigV4Encoding, BedrockPathEncodedTwice) {
  core::AwsSigningInput input;
  input.method = "POST";
  input.host = "127.0.0.1:8123";
  input.path = "/model/" + core::aws_uri_encode("stability.sd3-5-large-v1:0", false) + "/invoke";
  input.headers = {{"Content-Type", "application/json"}, {"Accept", "application/json"}};
  input.region = "us-west-2";
  input.service = "bedrock";
  input.credentials = {"AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", ""};
  input.payload_hash = core::sha256_hex("{\"prompt\":\"a cat\"}");
  input.time = utc(2026, 12, 4, 12, 0);
  const auto signed_request = core::aws_sigv4_sign(input);
  EXPECT_EQ(input.path, "/model/stability.sd3-5-large-v1%3A0/invoke");
  EXPECT_NE(signed_request.canonical_request.find("POST\n/model/stability.sd3-5-large-v1%253A0/invoke\n"),
            std::string::npos);
  EXPECT_EQ(signed_request.signature, "2490732f93cb5985340249e6665fccc459e89696678ca69a031c7e2796631818");
}

TEST(AwsSigV4Headers, HostAndDateAdded) {
  const auto signed_request = core::aws_sigv4_sign(suite_input("GET", "/"));
  ASSERT_EQ(signed_request.headers_to_add.size(), 3u);
  EXPECT_EQ(signed_request.headers_to_add[1], "Host: example.amazonaws.com");
  EXPECT_EQ(signed_request.headers_to_add[2], "X-Amz-Date: 20150830T123600Z");
}

TEST(AwsSigV4Headers, ContentShaHeaderForS3) {
  const auto signed_request = core::aws_sigv4_sign(s3_input("GET", "/test.txt"));
  EXPECT_EQ(signed_request.headers_to_add.back(), "X-Amz-Content-Sha256: " + std::string(kEmptyHash));
}

namespace {

core::AwsPresignInput presign_example() {
  core::AwsPresignInput input;
  input.host = "examplebucket.s3.amazonaws.com";
  input.path = "/test.txt";
  input.region = "us-east-1";
  input.credentials = {"AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", ""};
  input.expires = std::chrono::seconds(86400);
  input.time = utc(2013, 5, 24, 0, 0);
  return input;
}

}  // namespace

TEST(AwsSigV4Presign, S3DocumentationExample) {
  EXPECT_EQ(core::aws_sigv4_presign(presign_example()),
            "X-Amz-Algorithm=AWS4-HMAC-SHA256"
            "&X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request"
            "&X-Amz-Date=20130524T000000Z"
            "&X-Amz-Expires=86400"
            "&X-Amz-SignedHeaders=host"
            "&X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404");
}

TEST(AwsSigV4Presign, SessionTokenIsSigned) {
  auto input = presign_example();
  input.credentials.session_token = "session/token+x=";
  const std::string query = core::aws_sigv4_presign(input);
  EXPECT_NE(query.find("&X-Amz-Security-Token=session%2Ftoken%2Bx%3D&X-Amz-SignedHeaders=host&"), std::string::npos);
  EXPECT_EQ(query.substr(query.size() - 64), "5d19e278158b66798940bcc4b0839b286b9da0fb82d18c742fee6753aee63f8e");
}

TEST(AwsSigV4Presign, ExtraParametersSortAfterAmzOnes) {
  auto input = presign_example();
  input.query = {{"response-content-type", "image/png"}};
  const std::string query = core::aws_sigv4_presign(input);
  EXPECT_NE(query.find("X-Amz-SignedHeaders=host&response-content-type=image%2Fpng&X-Amz-Signature="),
            std::string::npos);
  EXPECT_EQ(query.find("aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"), std::string::npos);
}

TEST(AwsSigV4Presign, EncodedKeyPathSignedOnce) {
  auto input = presign_example();
  input.host = "127.0.0.1:9000";
  input.path = "/bucket/" + core::aws_encode_path("emoji\xF0\x9F\x98\x80/a b+c");
  input.expires = std::chrono::seconds(600);
  EXPECT_EQ(input.path, "/bucket/emoji%F0%9F%98%80/a%20b%2Bc");
  const std::string query = core::aws_sigv4_presign(input);
  EXPECT_EQ(query.substr(query.size() - 64), "256f871d0f85eeee34a435a2131fd203e47bbf729ba32d5d6acb4f0a733a3ada");
}
