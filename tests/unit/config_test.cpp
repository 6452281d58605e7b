#include <gtest/gtest.h>

#include "config/config.hpp"

using namespace pixelgate::config;

namespace {

std::string load_error(const std::string& toml, const Environment& env = {}) {
  auto result = load_from_string(toml, "test.toml", env);
  return result.ok() ? std::string{} : result.error().message;
}

}  // namespace

TEST(Config, EmbeddedDefaultsUsePlaceholder) {
  auto config = load_from_string("", "defaults", {});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->server.port, 8080);
  EXPECT_EQ(config->server.host, "127.0.0.1");
  EXPECT_EQ(config->storage.path, "./data");
  EXPECT_EQ(config->default_backend, "placeholder");
  EXPECT_TRUE(config->placeholder_by_default);
  EXPECT_EQ(config->templates.count("default"), 1u);
}

TEST(Config, OpenAIEnvironmentSelectsOpenAI) {
  auto config = load_from_string("", "defaults",
                                 {{"OPENAI_API_KEY", "sk-test"}, {"OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"}});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->default_backend, "openai");
  EXPECT_EQ(config->backends.at("openai").base_url, "http://127.0.0.1:9/v1");
  EXPECT_EQ(config->backends.at("openai").api_key.value, "sk-test");
}

TEST(Config, KeyWithoutBaseUrlKeepsPlaceholder) {
  auto config = load_from_string("", "defaults", {{"OPENAI_API_KEY", "sk-test"}});
  ASSERT_TRUE(config.ok());
  EXPECT_EQ(config->default_backend, "placeholder");
}

TEST(Config, UnknownKeyNamesItsPath) {
  EXPECT_NE(load_error("[server]\nprot = 80\n").find("server.prot: unknown key (line 2)"), std::string::npos);
  EXPECT_NE(load_error("[sever]\nport = 80\n").find("sever: unknown key"), std::string::npos);
  EXPECT_NE(load_error("[backends.a]\ntype = \"placeholder\"\nmodle = \"x\"\n").find("backends.a.modle: unknown key"),
            std::string::npos);
}

TEST(Config, BadValuesNameTheirPathAndReason) {
  EXPECT_NE(load_error("[server]\nport = 70000\n").find("server.port: must be between 0 and 65535, got 70000"),
            std::string::npos);
  EXPECT_NE(load_error("[server]\nport = \"80\"\n").find("server.port: must be an integer, got a string"),
            std::string::npos);
  EXPECT_NE(load_error("[logging]\nformat = \"xml\"\n").find("logging.format: must be one of"), std::string::npos);
  EXPECT_NE(load_error("[templates.t]\nprompt = \"no placeholder\"\n").find("templates.t.prompt: must contain {prompt}"),
            std::string::npos);
}

TEST(Config, ReportsEveryProblemAtOnce) {
  const std::string message = load_error("[server]\nport = -1\nthreads = 999\n[limits]\nworkers = 0\n");
  EXPECT_NE(message.find("server.port"), std::string::npos);
  EXPECT_NE(message.find("server.threads"), std::string::npos);
  EXPECT_NE(message.find("limits.workers"), std::string::npos);
}

TEST(Config, OpenAIBackendNeedsBaseUrl) {
  const std::string message = load_error("[backends.oa]\ntype = \"openai\"\n");
  EXPECT_NE(message.find("backends.oa.base_url: missing"), std::string::npos);
}

TEST(Config, SecretComesFromNamedVariable) {
  auto config = load_from_string(
      "[backends.oa]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\napi_key_env = \"MY_KEY\"\n", "t",
      {{"MY_KEY", "sk-from-env"}});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->backends.at("oa").api_key.env_name, "MY_KEY");
  EXPECT_EQ(config->backends.at("oa").api_key.value, "sk-from-env");
}

TEST(Config, TemplateBackendMustExist) {
  EXPECT_NE(load_error("[backends.a]\ntype = \"placeholder\"\n[templates.t]\nbackend = \"b\"\n")
                .find("templates.t.backend: \"b\" is not defined"),
            std::string::npos);
}

TEST(Config, EnvironmentOverridesFile) {
  auto config = load_from_string("[server]\nport = 9000\n", "t",
                                 {{"PIXELGATE_SERVER_PORT", "9100"}, {"PIXELGATE_LOGGING_ACCESS_LOG", "false"}});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->server.port, 9100);
  EXPECT_FALSE(config->logging.access_log);
}

TEST(Config, BadEnvironmentValueNamesVariable) {
  EXPECT_NE(load_error("", {{"PIXELGATE_SERVER_PORT", "80x"}}).find("from PIXELGATE_SERVER_PORT"), std::string::npos);
}

TEST(Config, UnknownEnvironmentSettingFails) {
  EXPECT_NE(load_error("", {{"PIXELGATE_SERVER_PROT", "80"}}).find("PIXELGATE_SERVER_PROT: unknown setting server.prot"),
            std::string::npos);
}

TEST(Config, InvalidTomlReportsPosition) {
  EXPECT_NE(load_error("[server\nport = 1\n").find("test.toml:1:"), std::string::npos);
}

TEST(Config, DirectoryIsNotAConfigFile) {
  auto loaded = load_file("/tmp", {});
  ASSERT_FALSE(loaded.ok());
  EXPECT_NE(loaded.error().message.find("is a directory"), std::string::npos);
}

TEST(Config, OutOfRangeEnvironmentValueNamesVariable) {
  EXPECT_NE(load_error("", {{"PIXELGATE_SERVER_PORT", "99999"}}).find("got 99999 (from PIXELGATE_SERVER_PORT)"),
            std::string::npos);
}

TEST(Config, BaseUrlPortIsChecked) {
  const Environment env = {{"MY_KEY", "sk-test"}};
  auto with_url = [&env](const std::string& url) {
    return load_error("[backends.oa]\ntype = \"openai\"\nbase_url = \"" + url + "\"\napi_key_env = \"MY_KEY\"\n", env);
  };
  EXPECT_NE(with_url("http://127.0.0.1:/v1").find("backends.oa.base_url: has an invalid port \"\""), std::string::npos);
  EXPECT_NE(with_url("http://127.0.0.1:99999/v1").find("invalid port \"99999\""), std::string::npos);
  EXPECT_NE(with_url("http://:8080/v1").find("has no host"), std::string::npos);
  EXPECT_NE(with_url("http://user:pw@127.0.0.1/v1").find("user information"), std::string::npos);
  EXPECT_EQ(with_url("http://127.0.0.1:9/v1"), "");
  EXPECT_EQ(with_url("http://[::1]:9/v1"), "");
  EXPECT_EQ(with_url("https://images.example.test/v1"), "");
}
