// From query string to cache key: equivalent URLs must share a key, and bad
// input must be rejected with the field named.
#include <gtest/gtest.h>

#include "api/image_query.hpp"
#include "backends/backend.hpp"
#include "generation/resolver.hpp"

using namespace pixelgate;

namespace {

class Resolution : public ::testing::Test {
 protected:
  void SetUp() override {
    auto loaded = config::load_from_string(R"(
[backends.placeholder]
type = "placeholder"

[templates.hero]
prompt = "hero banner of {prompt}"
style = "cinematic lighting"
width = 1536
height = 640
version = "3"
)", "test.toml", {});
    ASSERT_TRUE(loaded.ok()) << loaded.error().message;
    config_ = std::move(loaded).value();
    backends_.emplace("placeholder", std::move(backends::make_backend(config_.backends.at("placeholder"))).value());
    resolver_ = std::make_unique<generation::Resolver>(config_, backends_);
  }

  core::Result<generation::ResolvedRequest> resolve_query(const std::string& query) {
    auto request = api::parse_image_query(query, true);
    if (!request) return std::move(request).error();
    return resolver_->resolve(*request);
  }

  std::string key_of(const std::string& query) {
    auto resolved = resolve_query(query);
    EXPECT_TRUE(resolved.ok()) << query << ": " << (resolved.ok() ? "" : resolved.error().message);
    return resolved.ok() ? resolved->key : std::string{};
  }

  config::Config config_;
  generation::BackendMap backends_;
  std::unique_ptr<generation::Resolver> resolver_;
};

}  // namespace

TEST_F(Resolution, ParameterOrderDoesNotMatter) {
  EXPECT_EQ(key_of("prompt=a+dog&width=512&height=256"), key_of("height=256&width=512&prompt=a+dog"));
}

TEST_F(Resolution, PlusAndPercent20AreEqual) {
  EXPECT_EQ(key_of("prompt=a+blue+dog"), key_of("prompt=a%20blue%20dog"));
}

TEST_F(Resolution, PercentCaseDoesNotMatter) {
  EXPECT_EQ(key_of("prompt=%e9%9b%aa"), key_of("prompt=%E9%9B%AA"));
}

TEST_F(Resolution, SizeEqualsWidthAndHeight) {
  EXPECT_EQ(key_of("prompt=x&size=640x480"), key_of("prompt=x&width=640&height=480"));
}

TEST_F(Resolution, StyleIsTemplateAlias) {
  EXPECT_EQ(key_of("prompt=x&style=hero"), key_of("prompt=x&template=hero"));
}

TEST(ImageQuery, DuplicateNamesAreRejected) {
  auto both = api::parse_image_query("prompt=x&template=hero&style=hero", true);
  ASSERT_FALSE(both.ok());
  EXPECT_EQ(both.error().message, "give only one of \"template\" and its alias \"style\"");
  EXPECT_EQ(both.error().param, "style");

  auto twice = api::parse_image_query("prompt=x&template=a&template=b", true);
  ASSERT_FALSE(twice.ok());
  EXPECT_EQ(twice.error().message, "parameter \"template\" is given more than once");
}

TEST_F(Resolution, BackendGetsExactUtf8) {
  auto resolved = resolve_query("prompt=80%25+off+%2B+%F0%9F%90%B6+%E9%9B%AA");
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(resolved->spec.prompt, "80% off + \xF0\x9F\x90\xB6 \xE9\x9B\xAA");
}

TEST_F(Resolution, TemplateAppliesTextSizeAndVersion) {
  auto resolved = resolve_query("prompt=a+dog&template=hero");
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(resolved->spec.prompt, "hero banner of a dog, cinematic lighting");
  EXPECT_EQ(resolved->spec.width, 1536);
  EXPECT_EQ(resolved->spec.height, 640);
  EXPECT_EQ(resolved->spec.template_version, "3");
}

TEST_F(Resolution, DefaultSeedIsDerivedAndExplicitSeedMatches) {
  auto derived = resolve_query("prompt=a+dog");
  ASSERT_TRUE(derived.ok());
  auto explicit_seed = resolve_query("prompt=a+dog&seed=" + std::to_string(derived->spec.seed));
  ASSERT_TRUE(explicit_seed.ok());
  EXPECT_EQ(derived->key, explicit_seed->key);
}

TEST_F(Resolution, RandomSeedNeverSharesDeterministicKey) {
  auto random = resolve_query("prompt=a+dog&seed=random");
  ASSERT_TRUE(random.ok());
  EXPECT_TRUE(random->spec.random_seed);
  auto same_seed = resolve_query("prompt=a+dog&seed=" + std::to_string(random->spec.seed));
  ASSERT_TRUE(same_seed.ok());
  EXPECT_NE(random->key, same_seed->key);
  auto again = resolve_query("prompt=a+dog&seed=random");
  ASSERT_TRUE(again.ok());
  EXPECT_NE(random->key, again->key);
}

TEST_F(Resolution, RejectsBadInputNamingField) {
  struct Case {
    std::string query;
    std::string param;
  };
  const std::vector<Case> cases = {
      {"width=512", "prompt"},
      {"prompt=", "prompt"},
      {"prompt=+++", "prompt"},
      {"prompt=a%0Ab", "prompt"},
      {"prompt=%FF", "prompt"},
      {"prompt=x&width=8", "width"},
      {"prompt=x&height=99999", "height"},
      {"prompt=x&width=12px", "width"},
      {"prompt=x&size=big", "size"},
      {"prompt=x&size=64x64&width=64", "size"},
      {"prompt=x&seed=-1", "seed"},
      {"prompt=x&seed=4294967295", "seed"},
      {"prompt=x&color=red", "color"},
      {"prompt=x&prompt=y", "prompt"},
      {"prompt=x&template=missing", "template"},
  };
  for (const auto& c : cases) {
    auto resolved = resolve_query(c.query);
    ASSERT_FALSE(resolved.ok()) << c.query;
    EXPECT_EQ(resolved.error().param, c.param) << c.query << ": " << resolved.error().message;
  }
}

TEST_F(Resolution, MalformedEscapeIsInvalid) {
  auto resolved = resolve_query("prompt=%zz");
  ASSERT_FALSE(resolved.ok());
  EXPECT_EQ(resolved.error().code, core::ErrorCode::InvalidArgument);
}

TEST_F(Resolution, PromptLimitsCountCharactersAndBytes) {
  std::string emoji_prompt;
  for (int i = 0; i < 3900; ++i) emoji_prompt += "%F0%9F%90%B6";  // 3900 chars, 15600 bytes
  EXPECT_TRUE(resolve_query("prompt=" + emoji_prompt).ok());
  for (int i = 0; i < 101; ++i) emoji_prompt += "%F0%9F%90%B6";  // 4001 chars
  auto too_long = resolve_query("prompt=" + emoji_prompt);
  ASSERT_FALSE(too_long.ok());
  EXPECT_NE(too_long.error().message.find("4001 characters"), std::string::npos);
}
