// Worker pools: [backends.NAME.pool] and template cold_start parsing, the
// pure pieces of the pool's decisions, and child processes (process groups,
// reaping, exec failures) with /bin/sh and sleep.
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "backends/backend.hpp"
#include "config/config.hpp"
#include "pool/pool_policy.hpp"
#include "pool/process.hpp"
#include "pool/worker_pool_backend.hpp"

using namespace pixelgate;
using std::chrono::milliseconds;

namespace {

const char* kPoolBackend = R"([backends.sd]
type = "a1111"
[backends.sd.pool]
command = ["/bin/sh", "-c", "exec sleep 60", "{port}"]
)";

std::string load_error(const std::string& toml) {
  auto result = config::load_from_string(toml, "test.toml", {});
  return result.ok() ? std::string{} : result.error().message;
}

void expect_error(const std::string& toml, const std::string& expected) {
  const std::string message = load_error(toml);
  EXPECT_NE(message.find(expected), std::string::npos) << "expected \"" << expected << "\" in:\n" << message;
}

bool process_exists(pid_t pid) {
  // kill(pid, 0) succeeds on a zombie too, so read its state from /proc.
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return false;
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto close = text.rfind(')');
  return close != std::string::npos && close + 2 < text.size() && text[close + 2] != 'Z';
}

}  // namespace

TEST(PoolConfig, ParsesEveryKey) {
  auto config = config::load_from_string(R"([backends.sd]
type = "a1111"
model = "v1-5"
[backends.sd.pool]
command = ["python", "launch.py", "--port", "{port}", "--ckpt", "{model}"]
env = { CUDA_VISIBLE_DEVICES = "0" }
ready_status = 204
ready_poll_ms = 50
start_timeout_ms = 5000
min_instances = 1
max_instances = 3
idle_timeout_ms = 1000
warm_schedule = "22:30-06:00"
restart_backoff_ms = 100
restart_backoff_max_ms = 800
queue_size = 4
stop_grace_ms = 250
expected_start_ms = 900
port_range = [20000, 20009]
log_file = "/tmp/sd.log"
[templates.t]
cold_start = "placeholder"
max_cold_start_ms = 300
)",
                                         "test.toml", {});
  ASSERT_TRUE(config.ok()) << config.error().message;
  const auto& backend = config->backends.at("sd");
  ASSERT_TRUE(backend.pool.has_value());
  EXPECT_TRUE(backend.base_url.empty());
  const auto& pool = *backend.pool;
  EXPECT_EQ(pool.command.size(), 6u);
  EXPECT_EQ(pool.env.at("CUDA_VISIBLE_DEVICES"), "0");
  EXPECT_EQ(pool.ready_path, "/sdapi/v1/options");
  EXPECT_EQ(pool.ready_status, 204);
  EXPECT_EQ(pool.ready_poll_ms, 50);
  EXPECT_EQ(pool.start_timeout_ms, 5000);
  EXPECT_EQ(pool.instance_concurrency, 1);
  EXPECT_EQ(pool.min_instances, 1);
  EXPECT_EQ(pool.max_instances, 3);
  EXPECT_EQ(pool.warm_start_minute, 22 * 60 + 30);
  EXPECT_EQ(pool.warm_end_minute, 6 * 60);
  EXPECT_EQ(pool.restart_backoff_max_ms, 800);
  EXPECT_EQ(pool.queue_size, 4);
  EXPECT_EQ(pool.stop_grace_ms, 250);
  EXPECT_EQ(pool.expected_start_ms, 900);
  EXPECT_EQ(pool.port_min, 20000);
  EXPECT_EQ(pool.port_max, 20009);
  EXPECT_EQ(pool.log_file, "/tmp/sd.log");
  const auto& tmpl = config->templates.at("t");
  EXPECT_EQ(tmpl.cold_start, "placeholder");
  EXPECT_EQ(tmpl.max_cold_start_ms, 300);
}

TEST(PoolConfig, DefaultReadyPathPerType) {
  auto config = config::load_from_string(R"([backends.sd]
type = "sdcpp"
[backends.sd.pool]
command = ["sd-server", "--listen-port", "{port}"]
)",
                                         "test.toml", {});
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->backends.at("sd").pool->ready_path, "/sdcpp/v1/capabilities");
}

TEST(PoolConfig, ErrorsNameThePath) {
  expect_error(std::string(kPoolBackend) + "colour = 1\n", "backends.sd.pool.colour: unknown key");
  expect_error(std::string(kPoolBackend) + "max_instances = 0\n", "backends.sd.pool.max_instances: must be between 1 and 64");
  expect_error(std::string(kPoolBackend) + "min_instances = 3\n",
               "backends.sd.pool.min_instances: must not be larger than max_instances (1)");
  expect_error(std::string(kPoolBackend) + "idle_timeout_ms = \"soon\"\n",
               "backends.sd.pool.idle_timeout_ms: must be an integer, got a string");
  expect_error(std::string(kPoolBackend) + "ready_path = \"health\"\n", "backends.sd.pool.ready_path: must start with /");
  expect_error(std::string(kPoolBackend) + "ready_canary = true\nready_path = \"/x\"\n",
               "backends.sd.pool.ready_canary: replaces ready_path");
  expect_error(std::string(kPoolBackend) + "instance_concurrency = 2\n",
               "backends.sd.pool.instance_concurrency: must be 1 for type \"a1111\"");
  expect_error(std::string(kPoolBackend) + "restart_backoff_ms = 500\nrestart_backoff_max_ms = 100\n",
               "backends.sd.pool.restart_backoff_max_ms: must not be smaller than restart_backoff_ms (500)");
  expect_error(std::string(kPoolBackend) + "port_range = [80, 90]\n", "backends.sd.pool.port_range: must satisfy 1024");
  expect_error(std::string(kPoolBackend) + "port_range = [20000]\n", "backends.sd.pool.port_range: must be two integers");
  expect_error(std::string(kPoolBackend) + "max_instances = 3\nport_range = [20000, 20001]\n",
               "backends.sd.pool.port_range: has fewer ports than max_instances (3)");
  expect_error(std::string(kPoolBackend) + "env = { A = 1 }\n", "backends.sd.pool.env.A: must be a string");
}

TEST(PoolConfig, WarmScheduleMustBeAWindow) {
  const std::string base = std::string(kPoolBackend) + "min_instances = 1\n";
  for (const char* bad : {"8:00-20:00", "08:00", "08:00-24:00", "08:60-09:00", "08:00-08:00", "ab:cd-ef:gh"}) {
    expect_error(base + "warm_schedule = \"" + bad + "\"\n", "backends.sd.pool.warm_schedule: must be \"HH:MM-HH:MM\"");
  }
  expect_error(std::string(kPoolBackend) + "warm_schedule = \"08:00-20:00\"\n",
               "backends.sd.pool.warm_schedule: has no effect with min_instances = 0");
}

TEST(PoolConfig, CommandMustPassThePort) {
  expect_error("[backends.sd]\ntype = \"a1111\"\n[backends.sd.pool]\n", "backends.sd.pool.command: missing");
  expect_error("[backends.sd]\ntype = \"a1111\"\n[backends.sd.pool]\ncommand = [\"server\", \"--port\", \"7860\"]\n",
               "backends.sd.pool.command: must contain {port}");
  expect_error("[backends.sd]\ntype = \"a1111\"\n[backends.sd.pool]\ncommand = \"server {port}\"\n",
               "backends.sd.pool.command: must be an array of strings");
}

TEST(PoolConfig, OnlySelfHostedTypes) {
  expect_error("[backends.o]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9\"\n[backends.o.pool]\ncommand = "
               "[\"x\", \"{port}\"]\n",
               "backends.o.pool: only types a1111, sdcpp and comfyui run as a pool, not \"openai\"");
  expect_error(std::string("[backends.sd]\ntype = \"a1111\"\nbase_url = \"http://127.0.0.1:7860\"\n") +
                   "[backends.sd.pool]\ncommand = [\"x\", \"{port}\"]\n",
               "backends.sd.base_url: must not be set with [pool]");
  expect_error("[backends.sd]\ntype = \"a1111\"\npool = 3\n", "backends.sd.pool: must be a table");
}

TEST(PoolConfig, ColdStartPolicyChecks) {
  const std::string fallback = "[backends.draft]\ntype = \"placeholder\"\n";
  expect_error(std::string(kPoolBackend) + "[templates.t]\ncold_start = \"later\"\n",
               "templates.t.cold_start: must be one of");
  expect_error(std::string(kPoolBackend) + "[templates.t]\nmax_cold_start_ms = 100\n",
               "templates.t.max_cold_start_ms: is only used with cold_start = \"fallback\" or \"placeholder\"");
  expect_error(std::string(kPoolBackend) + "[templates.t]\ncold_start = \"fallback\"\n",
               "templates.t.cold_start: \"fallback\" needs at least one backend in fallbacks");
  expect_error(fallback + "default_backend = \"draft\"\n[templates.t]\ncold_start = \"placeholder\"\n",
               "templates.t.cold_start: applies only when the template's backend has [backends.draft.pool]");
  expect_error(std::string(kPoolBackend) + "[templates.t]\ncold_start = \"fallback\"\nmax_cold_start_ms = -1\nfallbacks = [\"sd\"]\n",
               "templates.t.max_cold_start_ms: must be between 0 and");
  EXPECT_EQ(load_error(fallback + kPoolBackend +
                       "[templates.t]\nbackend = \"sd\"\ncold_start = \"fallback\"\nfallbacks = [\"draft\"]\n"),
            "");
}

TEST(PoolPolicy, RestartDelayDoublesUpToTheCap) {
  EXPECT_EQ(pool::restart_delay(100, 1000, 1), milliseconds(100));
  EXPECT_EQ(pool::restart_delay(100, 1000, 2), milliseconds(200));
  EXPECT_EQ(pool::restart_delay(100, 1000, 4), milliseconds(800));
  EXPECT_EQ(pool::restart_delay(100, 1000, 5), milliseconds(1000));
  EXPECT_EQ(pool::restart_delay(100, 1000, 60), milliseconds(1000));
  EXPECT_EQ(pool::restart_delay(100, 1000, 0), milliseconds(100));
}

TEST(PoolPolicy, WarmWindowWrapsMidnight) {
  EXPECT_TRUE(pool::in_warm_window(-1, -1, 0));
  EXPECT_TRUE(pool::in_warm_window(8 * 60, 20 * 60, 8 * 60));
  EXPECT_TRUE(pool::in_warm_window(8 * 60, 20 * 60, 19 * 60 + 59));
  EXPECT_FALSE(pool::in_warm_window(8 * 60, 20 * 60, 20 * 60));
  EXPECT_FALSE(pool::in_warm_window(8 * 60, 20 * 60, 7 * 60));
  EXPECT_TRUE(pool::in_warm_window(22 * 60, 6 * 60, 23 * 60));
  EXPECT_TRUE(pool::in_warm_window(22 * 60, 6 * 60, 5 * 60));
  EXPECT_FALSE(pool::in_warm_window(22 * 60, 6 * 60, 12 * 60));
}

TEST(PoolPolicy, UtcMinuteOfDay) {
  // 1970-01-02 01:02:03 UTC.
  const auto when = std::chrono::system_clock::from_time_t(86400 + 3600 + 2 * 60 + 3);
  EXPECT_EQ(pool::utc_minute_of_day(when), 62);
}

TEST(PoolPolicy, ExpandsPortAndModel) {
  EXPECT_EQ(pool::expand_placeholders("--port={port}", 7861, "m"), "--port=7861");
  EXPECT_EQ(pool::expand_placeholders("{model}.safetensors:{port}{port}", 5, "sd15"), "sd15.safetensors:55");
  EXPECT_EQ(pool::expand_placeholders("{ports} {other} {", 5, "m"), "{ports} {other} {");
}

TEST(PoolPolicy, InstancesToStartStaysWithinMax) {
  EXPECT_EQ(pool::instances_to_start(1, 1, 0, 0, 3), 1);
  EXPECT_EQ(pool::instances_to_start(5, 1, 0, 0, 3), 3);
  EXPECT_EQ(pool::instances_to_start(5, 1, 2, 2, 3), 1);
  EXPECT_EQ(pool::instances_to_start(5, 1, 3, 3, 3), 0);
  EXPECT_EQ(pool::instances_to_start(5, 2, 1, 1, 4), 2);
  EXPECT_EQ(pool::instances_to_start(2, 1, 1, 3, 3), 0);  // a scheduled restart takes the last slot
  EXPECT_EQ(pool::instances_to_start(0, 1, 0, 0, 3), 0);
  EXPECT_EQ(pool::instances_to_start(1, 1, 2, 2, 3), 0);
}

TEST(PoolPolicy, RemainingStartEstimates) {
  EXPECT_EQ(pool::remaining_start(milliseconds(1000), milliseconds(300), milliseconds(5000), milliseconds(100)),
            milliseconds(700));
  EXPECT_EQ(pool::remaining_start(milliseconds(1000), milliseconds(1500), milliseconds(5000), milliseconds(100)),
            milliseconds(100));
  EXPECT_EQ(pool::remaining_start(milliseconds(1000), milliseconds(300), milliseconds(200), milliseconds(100)),
            milliseconds(200));
  EXPECT_EQ(pool::remaining_start(milliseconds(1000), milliseconds(300), milliseconds(-5), milliseconds(100)),
            milliseconds(0));
}

TEST(PoolPolicy, ColdStartStats) {
  pool::ColdStartStats stats;
  EXPECT_EQ(stats.average_ms(), 0);
  stats.record(milliseconds(100));
  stats.record(milliseconds(300));
  stats.record(milliseconds(200));
  EXPECT_EQ(stats.count(), 3);
  EXPECT_EQ(stats.last_ms(), 200);
  EXPECT_EQ(stats.max_ms(), 300);
  EXPECT_EQ(stats.average_ms(), 200);
}

TEST(ChildProcess, ReportsExitCode) {
  auto child = pool::ChildProcess::spawn({{"/bin/sh", "-c", "exit 7"}, {}, {}, "test"});
  ASSERT_TRUE(child.ok()) << child.error().message;
  std::optional<pool::ExitStatus> exit;
  for (int i = 0; i < 200 && !exit; ++i) {
    exit = (*child)->poll();
    if (!exit) std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->code, 7);
  EXPECT_EQ(exit->describe(), "exit code 7");
  EXPECT_FALSE(process_exists((*child)->pid()));
}

TEST(ChildProcess, MissingCommandFailsBeforeFork) {
  auto child = pool::ChildProcess::spawn({{"pixelgate-no-such-command"}, {}, {}, "test"});
  ASSERT_FALSE(child.ok());
  EXPECT_NE(child.error().message.find("was not found in PATH"), std::string::npos) << child.error().message;
}

TEST(ChildProcess, PathComesFromTheChildEnvironment) {
  auto missing = pool::ChildProcess::spawn({{"sh"}, {{"PATH", "/nonexistent"}}, {}, "test"});
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("(/nonexistent)"), std::string::npos) << missing.error().message;
}

TEST(ChildProcess, ExecFailureIsReported) {
  // Executable, but neither a binary nor a script with #!: execve fails with ENOEXEC.
  char path[] = "/tmp/pixelgate-pool-test-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string junk = "\x01\x02 not a program\n";
  ASSERT_EQ(::write(fd, junk.data(), junk.size()), static_cast<ssize_t>(junk.size()));
  ::close(fd);
  ::chmod(path, 0755);
  auto child = pool::ChildProcess::spawn({{path}, {}, {}, "test"});
  ASSERT_FALSE(child.ok());
  EXPECT_NE(child.error().message.find("cannot execute"), std::string::npos) << child.error().message;
  EXPECT_NE(child.error().message.find("Exec format error"), std::string::npos) << child.error().message;
  std::remove(path);
}

TEST(ChildProcess, EnvironmentAndOutputFile) {
  char folder[] = "/tmp/pixelgate-pool-test-XXXXXX";
  ASSERT_NE(::mkdtemp(folder), nullptr);
  const std::string log = std::string(folder) + "/child.log";
  auto child = pool::ChildProcess::spawn(
      {{"/bin/sh", "-c", "echo \"value=$POOL_TEST_VALUE\"; echo oops >&2"}, {{"POOL_TEST_VALUE", "42"}}, log, "test"});
  ASSERT_TRUE(child.ok()) << child.error().message;
  std::optional<pool::ExitStatus> exit;
  for (int i = 0; i < 300 && !exit; ++i) {
    exit = (*child)->poll();
    if (!exit) std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->code, 0);
  std::ifstream file(log);
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("value=42"), std::string::npos) << text;
  EXPECT_NE(text.find("oops"), std::string::npos) << text;
  std::remove(log.c_str());
  ::rmdir(folder);
}

TEST(ChildProcess, KillsTheWholeGroupAndReaps) {
  // The shell starts a grandchild in the same group, prints its pid and waits.
  auto child = pool::ChildProcess::spawn({{"/bin/sh", "-c", "sleep 60 & echo $! > \"$PIDFILE\"; wait"},
                                          {{"PIDFILE", "/tmp/pixelgate-pool-test-grandchild"}},
                                          {},
                                          "test"});
  ASSERT_TRUE(child.ok()) << child.error().message;
  pid_t grandchild = 0;
  for (int i = 0; i < 300 && grandchild == 0; ++i) {
    std::ifstream file("/tmp/pixelgate-pool-test-grandchild");
    if (!(file >> grandchild)) grandchild = 0;
    if (grandchild == 0) std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_GT(grandchild, 0);
  EXPECT_EQ(::getpgid(grandchild), (*child)->pid()) << "the grandchild runs in the child's process group";
  EXPECT_TRUE(process_exists(grandchild));

  const pid_t pid = (*child)->pid();
  EXPECT_TRUE((*child)->signal_group(SIGTERM));
  std::optional<pool::ExitStatus> exit;
  for (int i = 0; i < 300 && !exit; ++i) {
    exit = (*child)->poll();
    if (!exit) std::this_thread::sleep_for(milliseconds(10));
  }
  ASSERT_TRUE(exit.has_value());
  EXPECT_EQ(exit->signal, SIGTERM);
  EXPECT_FALSE(process_exists(pid));
  bool grandchild_gone = false;
  for (int i = 0; i < 300 && !grandchild_gone; ++i) {
    grandchild_gone = !process_exists(grandchild);
    if (!grandchild_gone) std::this_thread::sleep_for(milliseconds(10));
  }
  EXPECT_TRUE(grandchild_gone);
  EXPECT_FALSE((*child)->signal_group(SIGTERM)) << "a reaped child's group is not signalled again";
  std::remove("/tmp/pixelgate-pool-test-grandchild");
}

TEST(ChildProcess, DestructorKillsARunningChild) {
  pid_t pid = 0;
  {
    auto child = pool::ChildProcess::spawn({{"sleep", "60"}, {}, {}, "test"});
    ASSERT_TRUE(child.ok()) << child.error().message;
    pid = (*child)->pid();
    EXPECT_TRUE(process_exists(pid));
  }
  EXPECT_FALSE(process_exists(pid));
}

TEST(PoolBackend, ColdStartBudgetAnswersAtOnce) {
  // sleep never listens, so no instance becomes ready. With a budget below
  // the expected start, the pool returns ColdStart at once and keeps starting.
  auto config = config::load_from_string(R"([backends.sd]
type = "a1111"
[backends.sd.pool]
command = ["sleep", "60", "{port}"]
expected_start_ms = 5000
stop_grace_ms = 100
)",
                                         "test.toml", {});
  ASSERT_TRUE(config.ok()) << config.error().message;
  auto backend = backends::make_backend(config->backends.at("sd"));
  ASSERT_TRUE(backend.ok()) << backend.error().message;
  auto* pool = dynamic_cast<pool::PoolBackend*>(backend->get());
  ASSERT_NE(pool, nullptr);

  core::GenerationSpec spec;
  spec.prompt = "a cat";
  spec.width = 512;
  spec.height = 512;
  backends::GenerateContext context{"req-1", std::chrono::steady_clock::now() + std::chrono::seconds(10)};
  context.cold_start_budget = milliseconds(100);
  const auto started = std::chrono::steady_clock::now();
  auto result = pool->generate(spec, context);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, core::ErrorCode::ColdStart);
  EXPECT_EQ(result.error().retry_after_seconds, 5);
  EXPECT_LT(std::chrono::steady_clock::now() - started, milliseconds(1000));

  nlohmann::json status;
  for (int i = 0; i < 100; ++i) {
    status = pool->status();
    if (status["instances"]["starting"] == 1) break;
    std::this_thread::sleep_for(milliseconds(20));
  }
  EXPECT_EQ(status["instances"]["starting"], 1) << status.dump();
  EXPECT_EQ(status["cold_start_rejections"], 1);
  const pid_t pid = status["instance_list"][0]["pid"].get<pid_t>();
  EXPECT_TRUE(process_exists(pid));
  backend->reset();
  EXPECT_FALSE(process_exists(pid)) << "the destructor stops every instance";
}

TEST(PoolBackend, QueueSizeBoundsWaiters) {
  auto config = config::load_from_string(R"([backends.sd]
type = "a1111"
[backends.sd.pool]
command = ["sleep", "60", "{port}"]
queue_size = 1
stop_grace_ms = 0
)",
                                         "test.toml", {});
  ASSERT_TRUE(config.ok()) << config.error().message;
  auto backend = backends::make_backend(config->backends.at("sd"));
  ASSERT_TRUE(backend.ok());
  core::GenerationSpec spec;
  spec.prompt = "a cat";
  spec.width = spec.height = 512;

  // The first call waits (no instance ever becomes ready); the second finds the queue full.
  std::thread waiter([&] {
    backends::GenerateContext context{"req-wait", std::chrono::steady_clock::now() + milliseconds(1500)};
    auto result = (*backend)->generate(spec, context);
    EXPECT_FALSE(result.ok());
    EXPECT_EQ(result.error().code, core::ErrorCode::ColdStart) << result.error().message;
  });
  auto* pool = dynamic_cast<pool::PoolBackend*>(backend->get());
  for (int i = 0; i < 100 && pool->status()["queue_length"] != 1; ++i) std::this_thread::sleep_for(milliseconds(10));
  backends::GenerateContext context{"req-full", std::chrono::steady_clock::now() + milliseconds(1500)};
  auto result = (*backend)->generate(spec, context);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().code, core::ErrorCode::Unavailable);
  EXPECT_NE(result.error().message.find("already wait"), std::string::npos) << result.error().message;
  waiter.join();
}
