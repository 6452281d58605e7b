// Unit tests of the S3 store's parts that need no server: object names and
// URLs for both addressing styles, presigned URLs, and the XML reading of
// ListObjectsV2 and error bodies. tests/blackbox/s3.test.mjs covers the
// requests themselves against s3rver.

#include <gtest/gtest.h>

#include "core/hash.hpp"
#include "storage/s3_store.hpp"
#include "storage/s3_xml.hpp"

using namespace pixelgate;

namespace {

const std::string kKey = core::sha256_hex("key");

config::S3Config s3_config(const std::string& endpoint, const std::string& addressing, const std::string& prefix) {
  config::S3Config config;
  config.endpoint = endpoint;
  config.bucket = "images";
  config.region = "eu-west-1";
  config.addressing = addressing;
  config.prefix = prefix;
  config.access_key.value = "AKIDEXAMPLE";
  config.secret_key.value = "secret-value-never-printed";
  return config;
}

std::unique_ptr<storage::S3Store> open_store(const config::S3Config& config) {
  auto store = storage::S3Store::open(config);
  EXPECT_TRUE(store.ok()) << (store.ok() ? "" : store.error().message);
  return store.ok() ? std::move(store).value() : nullptr;
}

}  // namespace

TEST(S3StoreTarget, PathStyleObject) {
  auto store = open_store(s3_config("http://127.0.0.1:9000", "path", "a b/"));
  ASSERT_TRUE(store);
  EXPECT_EQ(store->object_name(kKey), "a b/" + kKey);
  const auto target = store->target(store->object_name(kKey));
  EXPECT_EQ(target.host, "127.0.0.1:9000");
  EXPECT_EQ(target.path, "/images/a%20b/" + kKey);
  EXPECT_EQ(target.url, "http://127.0.0.1:9000/images/a%20b/" + kKey);
}

TEST(S3StoreTarget, PathStyleBucket) {
  auto store = open_store(s3_config("http://127.0.0.1:9000", "path", ""));
  ASSERT_TRUE(store);
  EXPECT_EQ(store->target("").url, "http://127.0.0.1:9000/images");
}

TEST(S3StoreTarget, VirtualHostObject) {
  auto store = open_store(s3_config("https://s3.eu-west-1.amazonaws.com", "virtual", "cache/"));
  ASSERT_TRUE(store);
  const auto target = store->target(store->object_name(kKey));
  EXPECT_EQ(target.host, "images.s3.eu-west-1.amazonaws.com");
  EXPECT_EQ(target.path, "/cache/" + kKey);
  EXPECT_EQ(target.url, "https://images.s3.eu-west-1.amazonaws.com/cache/" + kKey);
}

TEST(S3StoreTarget, VirtualHostBucket) {
  auto store = open_store(s3_config("http://s3.localhost:9000", "virtual", ""));
  ASSERT_TRUE(store);
  const auto target = store->target("");
  EXPECT_EQ(target.host, "images.s3.localhost:9000");
  EXPECT_EQ(target.path, "/");
}

TEST(S3StoreTarget, EndpointPathKept) {
  auto store = open_store(s3_config("http://127.0.0.1:9000/storage/", "path", ""));
  ASSERT_TRUE(store);
  EXPECT_EQ(store->target(kKey).path, "/storage/images/" + kKey);
}

TEST(S3StoreTarget, PrefixSegmentsEncodedOnce) {
  const std::pair<std::string, std::string> cases[] = {
      {"plus+eq=at@tilde~pct%/", "plus%2Beq%3Dat%40tilde~pct%25/"},
      {"\xC3\xBCn\xC3\xAF" "c\xC3\xB8" "d\xC3\xA9/", "%C3%BCn%C3%AFc%C3%B8d%C3%A9/"},  // "ünïcødé/"
      {"emoji\xF0\x9F\x98\x80/", "emoji%F0%9F%98%80/"},                             // "emoji😀/"
      {"a/b c/", "a/b%20c/"},
  };
  for (const auto& [prefix, encoded] : cases) {
    auto store = open_store(s3_config("http://127.0.0.1:9000", "path", prefix));
    ASSERT_TRUE(store) << prefix;
    EXPECT_EQ(store->target(store->object_name(kKey)).path, "/images/" + encoded + kKey) << prefix;
  }
}

TEST(S3StoreOpen, RejectsVirtualHostOnIpAddress) {
  EXPECT_FALSE(storage::S3Store::open(s3_config("http://127.0.0.1:9000", "virtual", "")).ok());
  EXPECT_FALSE(storage::S3Store::open(s3_config("http://[::1]:9000", "virtual", "")).ok());
}

TEST(S3StoreOpen, RejectsDotSegmentsInPrefix) {
  EXPECT_FALSE(storage::S3Store::open(s3_config("http://127.0.0.1:9000", "path", "../x/")).ok());
  EXPECT_FALSE(storage::S3Store::open(s3_config("http://127.0.0.1:9000", "path", "a/./b/")).ok());
  EXPECT_TRUE(storage::S3Store::open(s3_config("http://127.0.0.1:9000", "path", "a.b/..c/")).ok());
}

TEST(S3StoreOpen, RejectsOversizedPrefix) {
  EXPECT_FALSE(storage::S3Store::open(s3_config("http://127.0.0.1:9000", "path", std::string(900, 'p'))).ok());
}

TEST(S3StoreOpen, RejectsUserInformationInEndpoint) {
  auto store = storage::S3Store::open(s3_config("http://user:pass@127.0.0.1:9000", "path", ""));
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.error().message.find("AWS_ACCESS_KEY_ID"), std::string::npos);
}

TEST(S3StoreOpen, DescribeLeavesOutSecrets) {
  auto store = open_store(s3_config("http://127.0.0.1:9000", "path", "p/"));
  ASSERT_TRUE(store);
  const std::string text = store->describe();
  EXPECT_EQ(text, "s3:http://127.0.0.1:9000/images (path addressing, region eu-west-1, prefix \"p/\")");
  EXPECT_EQ(text.find("secret-value"), std::string::npos);
}

TEST(S3StorePresign, UrlCarriesQuerySignature) {
  auto config = s3_config("http://127.0.0.1:9000", "path", "emoji\xF0\x9F\x98\x80/");
  config.session_token.value = "token/with+chars=";
  auto store = open_store(config);
  ASSERT_TRUE(store);
  const auto url = store->presigned_url(kKey, std::chrono::seconds(600));
  ASSERT_TRUE(url.has_value());
  EXPECT_EQ(url->rfind("http://127.0.0.1:9000/images/emoji%F0%9F%98%80/" + kKey + "?X-Amz-Algorithm=AWS4-HMAC-SHA256&", 0),
            0u)
      << *url;
  EXPECT_NE(url->find("&X-Amz-Credential=AKIDEXAMPLE%2F"), std::string::npos);
  EXPECT_NE(url->find("%2Feu-west-1%2Fs3%2Faws4_request&"), std::string::npos);
  EXPECT_NE(url->find("&X-Amz-Expires=600&"), std::string::npos);
  EXPECT_NE(url->find("&X-Amz-Security-Token=token%2Fwith%2Bchars%3D&"), std::string::npos);
  EXPECT_NE(url->find("&X-Amz-Signature="), std::string::npos);
  EXPECT_EQ(url->find("secret-value"), std::string::npos);
}

TEST(S3StorePresign, RejectsExpiryOutsideAwsRange) {
  auto store = open_store(s3_config("http://127.0.0.1:9000", "path", ""));
  ASSERT_TRUE(store);
  EXPECT_FALSE(store->presigned_url(kKey, std::chrono::seconds(0)).has_value());
  EXPECT_FALSE(store->presigned_url(kKey, std::chrono::seconds(7 * 24 * 3600 + 1)).has_value());
  EXPECT_TRUE(store->presigned_url(kKey, std::chrono::seconds(7 * 24 * 3600)).has_value());
  EXPECT_FALSE(store->presigned_url("../escape", std::chrono::seconds(60)).has_value());
}

TEST(S3StoreCalls, RejectInvalidKeysWithoutRequests) {
  // The endpoint is a closed loopback port: a request would fail differently.
  auto store = open_store(s3_config("http://127.0.0.1:9", "path", ""));
  ASSERT_TRUE(store);
  for (const std::string& key : std::vector<std::string>{"../escape", "", kKey + "/x"}) {
    auto found = store->find(key);
    ASSERT_FALSE(found.ok());
    EXPECT_EQ(found.error().code, core::ErrorCode::InvalidArgument);
    EXPECT_EQ(store->put(key, "x", "{}").error().code, core::ErrorCode::InvalidArgument);
    EXPECT_EQ(store->remove(key).error().code, core::ErrorCode::InvalidArgument);
    EXPECT_EQ(store->find_metadata(key).error().code, core::ErrorCode::InvalidArgument);
  }
}

TEST(S3StoreCalls, RefusedConnectionIsUnavailable) {
  auto config = s3_config("http://127.0.0.1:9", "path", "");
  config.max_attempts = 2;
  config.connect_timeout_ms = 500;
  auto store = open_store(config);
  ASSERT_TRUE(store);
  auto found = store->find(kKey);
  ASSERT_FALSE(found.ok());
  EXPECT_EQ(found.error().code, core::ErrorCode::Unavailable);
  EXPECT_NE(found.error().message.find("after 2 attempt(s)"), std::string::npos) << found.error().message;
}

// ---------------------------------------------------------------------------
// ListObjectsV2 and error bodies.
// ---------------------------------------------------------------------------

TEST(S3ListParse, TruncatedPageWithEntities) {
  const std::string xml =
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
      "<ListBucketResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\n"
      "  <Name>images</Name><Prefix>a &amp; b/</Prefix><KeyCount>3</KeyCount><MaxKeys>3</MaxKeys>\n"
      "  <IsTruncated>true</IsTruncated>\n"
      "  <NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>\n"
      "  <!-- a comment between elements -->\n"
      "  <Contents><Key>a &amp; b/one</Key><ETag>&quot;abc&quot;</ETag><Size>3</Size></Contents>\n"
      "  <Contents><Key>a &amp; b/&lt;two&gt; &apos;q&apos;</Key></Contents>\n"
      "  <Contents><Key>a &amp; b/caf&#233;&#x1F600; </Key></Contents>\n"
      "</ListBucketResult>\n";
  auto page = storage::s3::parse_list_objects_v2(xml);
  ASSERT_TRUE(page.ok()) << page.error().message;
  EXPECT_TRUE(page->truncated);
  EXPECT_EQ(page->next_continuation_token, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
  ASSERT_EQ(page->names.size(), 3u);
  EXPECT_EQ(page->names[0], "a & b/one");
  EXPECT_EQ(page->names[1], "a & b/<two> 'q'");
  EXPECT_EQ(page->names[2], "a & b/caf\xC3\xA9\xF0\x9F\x98\x80 ");  // trailing space kept
}

TEST(S3ListParse, LastPageAndEmptyBucket) {
  auto page = storage::s3::parse_list_objects_v2(
      "<ListBucketResult><IsTruncated>false</IsTruncated><Contents><Key>k</Key></Contents></ListBucketResult>");
  ASSERT_TRUE(page.ok());
  EXPECT_FALSE(page->truncated);
  EXPECT_EQ(page->names, std::vector<std::string>{"k"});

  auto empty = storage::s3::parse_list_objects_v2(
      "<ListBucketResult><Name>b</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>");
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->names.empty());
}

TEST(S3ListParse, LineEndsNormalized) {
  auto page = storage::s3::parse_list_objects_v2("<ListBucketResult><Contents><Key>a\r\nb\rc&#13;</Key></Contents></ListBucketResult>");
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->names[0], "a\nb\nc\r");
}

TEST(S3ListParse, RejectsTruncatedWithoutToken) {
  EXPECT_FALSE(storage::s3::parse_list_objects_v2("<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>").ok());
}

TEST(S3ListParse, RejectsMalformedResults) {
  const char* cases[] = {
      "<Error><Code>AccessDenied</Code></Error>",                                 // another root
      "<ListBucketResult><Contents><Size>1</Size></Contents></ListBucketResult>",  // Contents without Key
      "<ListBucketResult><IsTruncated>yes</IsTruncated></ListBucketResult>",
  };
  for (const char* xml : cases) EXPECT_FALSE(storage::s3::parse_list_objects_v2(xml).ok()) << xml;
}

TEST(S3XmlParse, RejectsUnsupportedOrBrokenXml) {
  const char* cases[] = {
      "",
      "<a>",
      "<a></b>",
      "<a>x</a>trailing",
      "<a>&unknown;</a>",
      "<a>&amp</a>",
      "<a>&#0;</a>",
      "<a>&#xD800;</a>",
      "<a><![CDATA[x]]></a>",
      "<!DOCTYPE a><a/>",
      "<a><?pi x?></a>",
      "<a b=c/>",
      "<a b=\"<\"/>",
      "<a>\x01</a>",
      "<a>\xFF</a>",
      "<a>x]]>y</a>",
  };
  for (const char* xml : cases) EXPECT_FALSE(storage::s3::parse_xml(xml).ok()) << xml;
}

TEST(S3XmlParse, RejectsDeepNesting) {
  std::string xml;
  for (int i = 0; i < 65; ++i) xml += "<a>";
  for (int i = 0; i < 65; ++i) xml += "</a>";
  EXPECT_FALSE(storage::s3::parse_xml(xml).ok());
  EXPECT_TRUE(storage::s3::parse_xml(xml.substr(3, xml.size() - 7)).ok());
}

TEST(S3XmlParse, AttributesAndSelfClosingTags) {
  auto root = storage::s3::parse_xml("<r a='1' b=\"x&amp;y\"><e/><f x=\"y\" /></r>");
  ASSERT_TRUE(root.ok()) << root.error().message;
  EXPECT_EQ(root->name, "r");
  ASSERT_EQ(root->children.size(), 2u);
  EXPECT_EQ(root->children[1].name, "f");
  EXPECT_EQ(root->child_text("missing"), "");
}

TEST(S3ErrorParse, SlowDownBody) {
  auto error = storage::s3::parse_error_body(
      "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request "
      "rate.</Message><RequestId>4442587FB7D0A2F9</RequestId><HostId>host</HostId></Error>");
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->code, "SlowDown");
  EXPECT_EQ(error->message, "Please reduce your request rate.");
}

TEST(S3ErrorParse, MessageWithEntities) {
  auto error = storage::s3::parse_error_body(
      "<Error><Code>NoSuchKey</Code><Message>Key &quot;a&lt;b&quot; does not exist</Message><Key>a&lt;b</Key></Error>");
  ASSERT_TRUE(error.has_value());
  EXPECT_EQ(error->message, "Key \"a<b\" does not exist");
}

TEST(S3ErrorParse, NotAnErrorBody) {
  EXPECT_FALSE(storage::s3::parse_error_body("").has_value());
  EXPECT_FALSE(storage::s3::parse_error_body("upstream connect error").has_value());
  EXPECT_FALSE(storage::s3::parse_error_body("<ListBucketResult/>").has_value());
  EXPECT_FALSE(storage::s3::parse_error_body("<Error><Message>no code</Message></Error>").has_value());
}
