#include "pool/process.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>

#include <spdlog/spdlog.h>

extern char** environ;

namespace pixelgate::pool {
namespace {

using Clock = std::chrono::steady_clock;

// A chatty server (progress bars, per-step logs) must not flood pixelgate's
// log: lines are cut at this length and at most this many are logged per
// second for each child; the rest are counted and reported.
constexpr std::size_t kMaxLineBytes = 4096;
constexpr int kMaxLinesPerSecond = 100;

ExitStatus decode_wait_status(int status) {
  ExitStatus exit;
  if (WIFEXITED(status)) {
    exit.code = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    exit.signal = WTERMSIG(status);
  }
  return exit;
}

bool is_executable_file(const std::string& path) {
  struct stat info {};
  return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) && ::access(path.c_str(), X_OK) == 0;
}

// Finds `name` the way execvp does, before fork, because execvp may allocate
// and a forked child of a threaded program must not.
core::Result<std::string> resolve_executable(const std::string& name, const std::string& path_variable) {
  if (name.find('/') != std::string::npos) {
    if (!is_executable_file(name)) {
      return core::Error::invalid("command \"" + name + "\" is not an executable file");
    }
    return name;
  }
  std::size_t start = 0;
  while (start <= path_variable.size()) {
    std::size_t colon = path_variable.find(':', start);
    if (colon == std::string::npos) colon = path_variable.size();
    std::string folder = path_variable.substr(start, colon - start);
    if (folder.empty()) folder = ".";
    const std::string candidate = folder + "/" + name;
    if (is_executable_file(candidate)) return candidate;
    start = colon + 1;
  }
  return core::Error::invalid("command \"" + name + "\" was not found in PATH (" + path_variable + ")");
}

std::vector<std::string> child_environment(const std::map<std::string, std::string>& overrides) {
  std::vector<std::string> entries;
  for (char** entry = environ; entry && *entry; ++entry) {
    const std::string_view text(*entry);
    const std::size_t eq = text.find('=');
    if (eq != std::string_view::npos && overrides.count(std::string(text.substr(0, eq)))) continue;
    entries.emplace_back(text);
  }
  for (const auto& [name, value] : overrides) entries.push_back(name + "=" + value);
  return entries;
}

std::vector<char*> pointers_to(std::vector<std::string>& strings) {
  std::vector<char*> pointers;
  pointers.reserve(strings.size() + 1);
  for (auto& text : strings) pointers.push_back(text.data());
  pointers.push_back(nullptr);
  return pointers;
}

void close_descriptor(int& fd) {
  if (fd >= 0) ::close(fd);
  fd = -1;
}

// Closes every descriptor from `first` to `last` inclusive. Async-signal-safe.
void close_range_in_child(unsigned first, unsigned last, long fallback_limit) {
  if (first > last) return;
#ifdef SYS_close_range
  if (::syscall(SYS_close_range, first, last, 0) == 0) return;
#endif
  const long end = std::min<long>(static_cast<long>(last), fallback_limit);
  for (long fd = first; fd <= end; ++fd) ::close(static_cast<int>(fd));
}

struct ChildSetup {
  pid_t parent = 0;
  int stdin_fd = -1;
  int output_fd = -1;
  int status_fd = -1;  // write end of the pipe that carries an execve errno
  long fd_limit = 0;
  const char* path = nullptr;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
};

// Runs in the forked child. Only async-signal-safe calls are allowed here:
// another thread of pixelgate may have held a lock (malloc's, spdlog's) at
// the moment of the fork.
[[noreturn]] void run_child(const ChildSetup& setup) {
  ::setpgid(0, 0);
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  // The parent may have died between fork and prctl, and then no signal
  // would ever come.
  if (::getppid() != setup.parent) ::_exit(127);

  // pixelgate blocks SIGINT and SIGTERM in every thread and ignores SIGPIPE;
  // both the mask and ignored dispositions survive execve.
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  for (int signal_number = 1; signal_number < NSIG; ++signal_number) {
    ::sigaction(signal_number, &default_action, nullptr);
  }

  ::dup2(setup.stdin_fd, STDIN_FILENO);
  ::dup2(setup.output_fd, STDOUT_FILENO);
  ::dup2(setup.output_fd, STDERR_FILENO);
  const unsigned status_fd = static_cast<unsigned>(setup.status_fd);
  close_range_in_child(3, status_fd - 1, setup.fd_limit);
  close_range_in_child(status_fd + 1, ~0U, setup.fd_limit);

  ::execve(setup.path, setup.argv, setup.envp);
  const int error = errno;
  [[maybe_unused]] ssize_t written = ::write(setup.status_fd, &error, sizeof(error));
  ::_exit(127);
}

}  // namespace

std::string ExitStatus::describe() const {
  if (signal != 0) {
    const char* name = ::strsignal(signal);
    return "signal " + std::to_string(signal) + " (" + (name ? name : "unknown") + ")";
  }
  return "exit code " + std::to_string(code);
}

core::Result<std::unique_ptr<ChildProcess>> ChildProcess::spawn(const SpawnOptions& options) {
  if (options.argv.empty() || options.argv.front().empty()) return core::Error::invalid("the command is empty");

  std::vector<std::string> environment = child_environment(options.environment);
  std::string path_variable = "/usr/local/bin:/usr/bin:/bin";
  for (const auto& entry : environment) {
    if (entry.rfind("PATH=", 0) == 0) path_variable = entry.substr(5);
  }
  auto path = resolve_executable(options.argv.front(), path_variable);
  if (!path) return std::move(path).error();
  std::vector<std::string> arguments = options.argv;
  std::vector<char*> argv = pointers_to(arguments);
  std::vector<char*> envp = pointers_to(environment);

  int output[2] = {-1, -1};
  int status[2] = {-1, -1};
  int stdin_fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  auto fail = [&](const std::string& what) {
    const std::string reason = std::strerror(errno);
    close_descriptor(output[0]);
    close_descriptor(output[1]);
    close_descriptor(status[0]);
    close_descriptor(status[1]);
    close_descriptor(stdin_fd);
    return core::Error::internal(what + " failed: " + reason);
  };
  if (stdin_fd < 0) return fail("opening /dev/null");
  if (!options.output_file.empty()) {
    output[1] = ::open(options.output_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (output[1] < 0) return fail("opening the log file " + options.output_file);
  } else if (::pipe2(output, O_CLOEXEC) != 0) {
    return fail("creating the output pipe");
  }
  if (::pipe2(status, O_CLOEXEC) != 0) return fail("creating the status pipe");

  struct rlimit limit {};
  long fd_limit = 65536;
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur != RLIM_INFINITY) {
    fd_limit = std::min<long>(fd_limit, static_cast<long>(limit.rlim_cur));
  }
  ChildSetup setup{::getpid(), stdin_fd, output[1], status[1], fd_limit, path->c_str(), argv.data(), envp.data()};

  const pid_t pid = ::fork();
  if (pid < 0) return fail("fork");
  if (pid == 0) run_child(setup);

  // Also set here, so the group exists before this function returns even if
  // the child has not run yet; EACCES after its execve is harmless.
  ::setpgid(pid, pid);
  close_descriptor(output[1]);
  close_descriptor(status[1]);
  close_descriptor(stdin_fd);

  int exec_error = 0;
  ssize_t got = 0;
  do {
    got = ::read(status[0], &exec_error, sizeof(exec_error));
  } while (got < 0 && errno == EINTR);
  close_descriptor(status[0]);
  if (got == static_cast<ssize_t>(sizeof(exec_error))) {
    int ignored = 0;
    while (::waitpid(pid, &ignored, 0) < 0 && errno == EINTR) {
    }
    close_descriptor(output[0]);
    return core::Error::invalid("cannot execute \"" + *path + "\": " + std::strerror(exec_error));
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, output[0], options.log_prefix));
}

ChildProcess::ChildProcess(pid_t pid, int output_fd, std::string log_prefix)
    : pid_(pid), output_fd_(output_fd), log_prefix_(std::move(log_prefix)) {
  if (output_fd_ >= 0) output_thread_ = std::thread([this] { pump_output(); });
}

ChildProcess::~ChildProcess() {
  if (!poll()) kill_and_wait();
  stop_output_ = true;
  if (output_thread_.joinable()) output_thread_.join();
  if (output_fd_ >= 0) ::close(output_fd_);
}

std::optional<ExitStatus> ChildProcess::poll() {
  std::lock_guard lock(mutex_);
  if (exit_) return exit_;
  int status = 0;
  pid_t reaped = 0;
  do {
    reaped = ::waitpid(pid_, &status, WNOHANG);
  } while (reaped < 0 && errno == EINTR);
  if (reaped == 0) return std::nullopt;
  if (reaped < 0) {
    // ECHILD: someone else reaped it; the status is lost but it has exited.
    spdlog::error("{}: waitpid failed: {}", log_prefix_, std::strerror(errno));
    exit_ = ExitStatus{};
  } else {
    exit_ = decode_wait_status(status);
  }
  // Children of the server (worker processes, say) share its group; none of
  // them may outlive it.
  ::kill(-pid_, SIGKILL);
  return exit_;
}

bool ChildProcess::signal_group(int signal) {
  std::lock_guard lock(mutex_);
  if (exit_) return false;
  return ::kill(-pid_, signal) == 0;
}

ExitStatus ChildProcess::kill_and_wait() {
  std::lock_guard lock(mutex_);
  if (exit_) return *exit_;
  ::kill(-pid_, SIGKILL);
  int status = 0;
  pid_t reaped = 0;
  do {
    reaped = ::waitpid(pid_, &status, 0);
  } while (reaped < 0 && errno == EINTR);
  exit_ = reaped == pid_ ? decode_wait_status(status) : ExitStatus{};
  return *exit_;
}

void ChildProcess::pump_output() {
  std::string pending;
  char buffer[4096];
  auto window_start = Clock::now();
  int lines_in_window = 0;
  long dropped = 0;

  auto emit = [&](std::string line) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    const auto now = Clock::now();
    if (now - window_start >= std::chrono::seconds(1)) {
      if (dropped > 0) spdlog::warn("{}: {} output lines were not logged (over {} a second)", log_prefix_, dropped, kMaxLinesPerSecond);
      window_start = now;
      lines_in_window = 0;
      dropped = 0;
    }
    if (++lines_in_window > kMaxLinesPerSecond) {
      ++dropped;
      return;
    }
    if (line.size() > kMaxLineBytes) line = line.substr(0, kMaxLineBytes) + "...";
    spdlog::info("{}: {}", log_prefix_, line);
  };

  while (true) {
    struct pollfd descriptor {output_fd_, POLLIN, 0};
    const int ready = ::poll(&descriptor, 1, 200);
    if (ready < 0 && errno != EINTR) break;
    if (ready <= 0) {
      if (stop_output_) break;
      continue;
    }
    const ssize_t got = ::read(output_fd_, buffer, sizeof(buffer));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;  // EOF: every writer, the child's group included, has gone
    pending.append(buffer, static_cast<std::size_t>(got));
    std::size_t newline = 0;
    while ((newline = pending.find('\n')) != std::string::npos) {
      emit(pending.substr(0, newline));
      pending.erase(0, newline + 1);
    }
    if (pending.size() > kMaxLineBytes) {
      emit(pending);
      pending.clear();
    }
  }
  if (!pending.empty()) emit(pending);
  if (dropped > 0) spdlog::warn("{}: {} output lines were not logged (over {} a second)", log_prefix_, dropped, kMaxLinesPerSecond);
}

}  // namespace pixelgate::pool
