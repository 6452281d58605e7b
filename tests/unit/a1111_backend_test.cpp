#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include <nlohmann/json.hpp>

#include "backends/a1111_backend.hpp"
#include "backends/backend.hpp"
#include "backends/instance_lock.hpp"
#include "core/hash.hpp"

using namespace pixelgate;

namespace {

core::GenerationSpec spec(int width, int height) {
  core::GenerationSpec s;
  s.prompt = "a fox";
  s.negative_prompt = "blurry";
  s.width = width;
  s.height = height;
  s.seed = 4294967294u;
  return s;
}

config::BackendConfig a1111_config() {
  config::BackendConfig config;
  config.name = "local";
  config.type = "a1111";
  config.base_url = "http://127.0.0.1:1";
  return config;
}

}  // namespace

TEST(A1111Request, DefaultsFillUnsetSettings) {
  const auto body = nlohmann::json::parse(backends::A1111Backend(a1111_config()).request_body(spec(512, 768)));
  EXPECT_EQ(body["prompt"], "a fox");
  EXPECT_EQ(body["negative_prompt"], "blurry");
  EXPECT_EQ(body["width"], 512);
  EXPECT_EQ(body["height"], 768);
  EXPECT_EQ(body["steps"], 20);
  EXPECT_DOUBLE_EQ(body["cfg_scale"].get<double>(), 7.0);
  EXPECT_EQ(body["sampler_name"], "Euler a");
  EXPECT_EQ(body["seed"], 4294967294u);
  EXPECT_EQ(body["batch_size"], 1);
  EXPECT_EQ(body["n_iter"], 1);
  EXPECT_FALSE(body.contains("override_settings"));
}

TEST(A1111Request, SpecSettingsAreSent) {
  auto s = spec(512, 512);
  s.steps = 35;
  s.guidance = 4.5;
  s.sampler = "DPM++ 2M";
  s.model = "sd_xl_base_1.0";
  const auto body = nlohmann::json::parse(backends::A1111Backend(a1111_config()).request_body(s));
  EXPECT_EQ(body["steps"], 35);
  EXPECT_DOUBLE_EQ(body["cfg_scale"].get<double>(), 4.5);
  EXPECT_EQ(body["sampler_name"], "DPM++ 2M");
  EXPECT_EQ(body["override_settings"]["sd_model_checkpoint"], "sd_xl_base_1.0");
}

TEST(A1111Validate, SidesMustBeMultiplesOfEight) {
  const backends::A1111Backend backend(a1111_config());
  EXPECT_TRUE(backend.validate(spec(512, 768)).ok());
  const auto status = backend.validate(spec(500, 512));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "width");
}

TEST(A1111Validate, RejectsOversizeHeight) {
  const auto status = backends::A1111Backend(a1111_config()).validate(spec(512, 2056));
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "height");
}

TEST(A1111Validate, RejectsOutOfRangeGuidance) {
  auto s = spec(512, 512);
  s.guidance = 31;
  const auto status = backends::A1111Backend(a1111_config()).validate(s);
  ASSERT_FALSE(status.ok());
  EXPECT_EQ(status.error().param, "guidance");
}

TEST(A1111Maker, RejectsKeyWithoutColon) {
  auto config = a1111_config();
  config.api_key = {"PG_A1111_AUTH", "justapassword"};
  const auto backend = backends::make_backend(config);
  ASSERT_FALSE(backend.ok());
  EXPECT_NE(backend.error().message.find("PG_A1111_AUTH"), std::string::npos);
}

TEST(A1111Parse, DecodesFirstImage) {
  const std::string body = nlohmann::json{{"images", {core::base64_encode("PNGBYTES")}}, {"info", "{}"}}.dump();
  const auto bytes = backends::parse_a1111_images(body);
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, "PNGBYTES");
}

TEST(A1111Parse, RejectsEmptyImages) {
  const auto bytes = backends::parse_a1111_images(R"({"images": [], "info": "{}"})");
  ASSERT_FALSE(bytes.ok());
  EXPECT_EQ(bytes.error().code, core::ErrorCode::BadGateway);
}

TEST(InstanceLock, FullLineIsUnavailable) {
  backends::InstanceLock lock(0);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  auto first = lock.acquire(deadline);
  ASSERT_TRUE(first.ok());
  auto second = lock.acquire(deadline);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, core::ErrorCode::Unavailable);
  EXPECT_GT(second.error().retry_after_seconds, 0);
}

TEST(InstanceLock, WaiterGivesUpAtDeadline) {
  backends::InstanceLock lock(4);
  auto first = lock.acquire(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  ASSERT_TRUE(first.ok());
  auto second = lock.acquire(std::chrono::steady_clock::now() + std::chrono::milliseconds(30));
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().code, core::ErrorCode::Unavailable);
}

TEST(InstanceLock, ReleaseWakesWaiter) {
  backends::InstanceLock lock(4);
  std::optional<core::Result<backends::InstanceLock::Guard>> first(
      lock.acquire(std::chrono::steady_clock::now() + std::chrono::seconds(5)));
  ASSERT_TRUE(first->ok());
  std::thread releaser([&first] {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    first.reset();
  });
  auto second = lock.acquire(std::chrono::steady_clock::now() + std::chrono::seconds(5));
  releaser.join();
  EXPECT_TRUE(second.ok());
}
