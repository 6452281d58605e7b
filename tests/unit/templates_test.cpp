#include <gtest/gtest.h>

#include "api/image_query.hpp"
#include "backends/backend.hpp"
#include "generation/resolver.hpp"

using namespace pixelgate;

namespace {

constexpr const char* kTemplates = R"(
[backends.placeholder]
type = "placeholder"

[templates.poster]
prompt = "poster of {prompt} in {colour}"
style = "{count} stars"
negative_prompt = "no {colour} text"
width = 512
height = 768
sizes = ["512x768", "768x512"]
quality = "low"
version = "2"

[templates.poster.variables.colour]
allowed = ["red", "blue"]
default = "red"

[templates.poster.variables.count]
type = "integer"
min = 1
max = 5
default = 3

[templates.tagged]
prompt = "{prompt} with the tag {tag}"

[templates.tagged.variables.tag]
pattern = "^[a-z]+$"
max_length = 8
)";

class Templates : public ::testing::Test {
 protected:
  void SetUp() override { load(kTemplates); }

  void load(const std::string& text) {
    auto loaded = config::load_from_string(text, "templates.toml", {});
    ASSERT_TRUE(loaded.ok()) << loaded.error().message;
    config_ = std::move(loaded).value();
    backends_.clear();
    backends_.emplace("placeholder", std::move(backends::make_backend(config_.backends.at("placeholder"))).value());
    resolver_ = std::make_unique<generation::Resolver>(config_, backends_);
  }

  core::Result<generation::ResolvedRequest> resolve(const std::string& query) {
    auto request = api::parse_image_query(query, true);
    if (!request) return std::move(request).error();
    return resolver_->resolve(*request);
  }

  config::Config config_;
  generation::BackendMap backends_;
  std::unique_ptr<generation::Resolver> resolver_;
};

std::string config_error(const std::string& text) {
  auto loaded = config::load_from_string(text, "t.toml", {});
  return loaded.ok() ? std::string{} : loaded.error().message;
}

}  // namespace

TEST_F(Templates, DefaultsFillVariables) {
  auto resolved = resolve("prompt=a+cat&template=poster");
  ASSERT_TRUE(resolved.ok()) << resolved.error().message;
  EXPECT_EQ(resolved->spec.prompt, "poster of a cat in red, 3 stars");
  EXPECT_EQ(resolved->spec.negative_prompt, "no red text");
  EXPECT_EQ(resolved->spec.width, 512);
  EXPECT_EQ(resolved->spec.height, 768);
  EXPECT_EQ(resolved->spec.quality, "low");
  EXPECT_EQ(resolved->spec.template_version, "2");
}

TEST_F(Templates, RequestOverridesVariables) {
  auto resolved = resolve("prompt=a+cat&template=poster&colour=blue&count=5");
  ASSERT_TRUE(resolved.ok()) << resolved.error().message;
  EXPECT_EQ(resolved->spec.prompt, "poster of a cat in blue, 5 stars");
}

TEST_F(Templates, ExplicitDefaultSharesKey) {
  auto implicit = resolve("prompt=a+cat&template=poster");
  auto explicit_value = resolve("prompt=a+cat&template=poster&colour=red");
  ASSERT_TRUE(implicit.ok());
  ASSERT_TRUE(explicit_value.ok());
  EXPECT_EQ(implicit->key, explicit_value->key);
}

TEST_F(Templates, UserTextIsNotExpandedAgain) {
  auto resolved = resolve("prompt=%7Bcolour%7D&template=poster");
  ASSERT_TRUE(resolved.ok());
  EXPECT_EQ(resolved->spec.prompt, "poster of {colour} in red, 3 stars");
}

TEST_F(Templates, RejectsBadVariablesNamingThem) {
  struct Case {
    std::string query;
    std::string param;
    std::string message_part;
  };
  const std::vector<Case> cases = {
      {"prompt=x&template=poster&colour=green", "colour", "must be one of red, blue"},
      {"prompt=x&template=poster&count=9", "count", "between 1 and 5"},
      {"prompt=x&template=poster&count=two", "count", "whole number"},
      {"prompt=x&template=poster&mood=calm", "mood", "its variables are colour, count"},
      {"prompt=x&template=tagged", "tag", "needs the parameter tag"},
      {"prompt=x&template=tagged&tag=ABC", "tag", "does not match the pattern"},
      {"prompt=x&template=tagged&tag=abcdefghi", "tag", "longer than 8 characters"},
      {"prompt=x&template=tagged&tag=a%0Ab", "tag", "control characters"},
      {"prompt=x&template=default&colour=red", "colour", "it has no variables"},
  };
  for (const auto& c : cases) {
    auto resolved = resolve(c.query);
    ASSERT_FALSE(resolved.ok()) << c.query;
    EXPECT_EQ(resolved.error().param, c.param) << c.query;
    EXPECT_NE(resolved.error().message.find(c.message_part), std::string::npos)
        << c.query << ": " << resolved.error().message;
  }
}

TEST_F(Templates, AllowedSizesAreEnforced) {
  EXPECT_TRUE(resolve("prompt=x&template=poster&size=768x512").ok());
  auto other = resolve("prompt=x&template=poster&size=512x512");
  ASSERT_FALSE(other.ok());
  EXPECT_EQ(other.error().param, "size");
  EXPECT_NE(other.error().message.find("512x768, 768x512"), std::string::npos);
}

TEST_F(Templates, ContentChangeChangesKey) {
  const std::string before = resolve("prompt=a+cat&template=poster")->key;
  std::string changed = kTemplates;
  changed.replace(changed.find("stars\""), 6, "moons\"");
  load(changed);
  EXPECT_NE(resolve("prompt=a+cat&template=poster")->key, before);
}

TEST_F(Templates, VersionChangeChangesKey) {
  const std::string before = resolve("prompt=a+cat&template=poster")->key;
  std::string changed = kTemplates;
  changed.replace(changed.find("version = \"2\""), 13, "version = \"3\"");
  load(changed);
  EXPECT_NE(resolve("prompt=a+cat&template=poster")->key, before);
}

TEST(TemplateConfig, UndefinedPlaceholderIsNamed) {
  EXPECT_NE(config_error("[templates.t]\nprompt = \"{prompt} {mood}\"\n")
                .find("templates.t: {mood} is used but not defined"),
            std::string::npos);
}

TEST(TemplateConfig, ReservedVariableNameRejected) {
  EXPECT_NE(config_error("[templates.t]\n[templates.t.variables.seed]\n").find("templates.t.variables.seed: invalid name"),
            std::string::npos);
}

TEST(TemplateConfig, InvalidPatternRejected) {
  EXPECT_NE(config_error("[templates.t]\n[templates.t.variables.v]\npattern = \"([a-z\"\n")
                .find("templates.t.variables.v.pattern: invalid regular expression"),
            std::string::npos);
}

TEST(TemplateConfig, DefaultSizeMustBeAllowed) {
  EXPECT_NE(config_error("[templates.t]\nwidth = 512\nheight = 512\nsizes = [\"256x256\"]\n")
                .find("templates.t.sizes: must include the default size 512x512"),
            std::string::npos);
}

TEST(TemplateConfig, ExampleTemplatesLoad) {
  auto loaded = config::load_file(PIXELGATE_SOURCE_DIR "/config/examples/templates.toml", {});
  ASSERT_TRUE(loaded.ok()) << loaded.error().message;
  EXPECT_EQ(loaded->templates.size(), 7u);  // six examples and the built-in default
}
