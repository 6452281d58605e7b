#include <gtest/gtest.h>

#include "generation/cache_key.hpp"

using pixelgate::core::GenerationSpec;
using namespace pixelgate::generation;

namespace {

GenerationSpec fixed_spec() {
  GenerationSpec spec;
  spec.backend = "openai";
  spec.backend_type = "openai";
  spec.adapter_version = 1;
  spec.model = "gpt-image-2";
  spec.prompt = "a blue dog";
  spec.width = 1024;
  spec.height = 1024;
  spec.seed = 42;
  spec.template_name = "default";
  spec.template_version = "1";
  return spec;
}

}  // namespace

// A golden key: if this changes, every stored image is orphaned. Bump
// kSpecEncodingVersion deliberately instead of changing the encoding by accident.
TEST(CacheKey, GoldenKeyIsStable) {
  EXPECT_EQ(kSpecEncodingVersion, 1);
  EXPECT_EQ(cache_key(fixed_spec()), "aa5633457a5a36f5fa0812bba676f531008c2119d4c7c5ad1c6637fc26268500");
}

TEST(CacheKey, EncodingIsLengthPrefixed) {
  const std::string encoding = canonical_encoding(fixed_spec());
  EXPECT_EQ(encoding.rfind("pixelgate-spec/1\n", 0), 0u);
  EXPECT_NE(encoding.find("prompt=10:a blue dog\n"), std::string::npos);
}

TEST(CacheKey, EveryPixelFieldChangesKey) {
  const std::string base = cache_key(fixed_spec());
  std::vector<std::function<void(GenerationSpec&)>> changes = {
      [](GenerationSpec& s) { s.backend = "other"; },
      [](GenerationSpec& s) { s.backend_type = "placeholder"; },
      [](GenerationSpec& s) { s.adapter_version = 2; },
      [](GenerationSpec& s) { s.model = "gpt-image-1.5"; },
      [](GenerationSpec& s) { s.prompt = "a blue dog "; },
      [](GenerationSpec& s) { s.negative_prompt = "blurry"; },
      [](GenerationSpec& s) { s.width = 1536; },
      [](GenerationSpec& s) { s.height = 1536; },
      [](GenerationSpec& s) { s.steps = 30; },
      [](GenerationSpec& s) { s.guidance = 7.5; },
      [](GenerationSpec& s) { s.sampler = "euler"; },
      [](GenerationSpec& s) { s.quality = "high"; },
      [](GenerationSpec& s) { s.style = "vivid"; },
      [](GenerationSpec& s) { s.seed = 43; },
      [](GenerationSpec& s) { s.random_seed = true; },
      [](GenerationSpec& s) { s.template_name = "hero"; },
      [](GenerationSpec& s) { s.template_version = "2"; },
  };
  for (std::size_t i = 0; i < changes.size(); ++i) {
    GenerationSpec spec = fixed_spec();
    changes[i](spec);
    EXPECT_NE(cache_key(spec), base) << "change " << i;
  }
}

TEST(CacheKey, FieldBoundariesCannotCollide) {
  GenerationSpec a = fixed_spec();
  GenerationSpec b = fixed_spec();
  a.prompt = "x\nnegative_prompt=0:";
  b.prompt = "x";
  EXPECT_NE(cache_key(a), cache_key(b));
}

TEST(CacheKey, NoUnicodeNormalisation) {
  GenerationSpec composed = fixed_spec();
  GenerationSpec decomposed = fixed_spec();
  composed.prompt = "caf\xC3\xA9";     // U+00E9
  decomposed.prompt = "cafe\xCC\x81";  // e + U+0301
  EXPECT_NE(cache_key(composed), cache_key(decomposed));
}

TEST(DeriveSeed, IsDeterministicAndIgnoresSeed) {
  GenerationSpec a = fixed_spec();
  GenerationSpec b = fixed_spec();
  b.seed = 999;
  EXPECT_EQ(derive_seed(a), derive_seed(b));
}

TEST(DeriveSeed, DependsOnPrompt) {
  GenerationSpec a = fixed_spec();
  GenerationSpec b = fixed_spec();
  b.prompt = "a red dog";
  EXPECT_NE(derive_seed(a), derive_seed(b));
}

TEST(DeriveSeed, StaysBelowMaximum) {
  GenerationSpec spec = fixed_spec();
  for (int i = 0; i < 200; ++i) {
    spec.prompt = "prompt " + std::to_string(i);
    EXPECT_LT(derive_seed(spec), 4294967295u);
  }
}
