// Child processes for worker pools. Each child runs in its own process group,
// gets SIGKILL when the thread that started it exits (PR_SET_PDEATHSIG), and
// is reaped with waitpid, so no child outlives pixelgate or stays a zombie.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "core/error.hpp"

namespace pixelgate::pool {

struct ExitStatus {
  int code = -1;   // the exit code, or -1 when a signal ended the process
  int signal = 0;  // the signal that ended the process, or 0

  // Returns e.g. "exit code 3" or "signal 9 (Killed)".
  std::string describe() const;
};

struct SpawnOptions {
  // argv[0] is searched for in PATH (of the child's environment) unless it
  // contains a '/'. No shell is involved.
  std::vector<std::string> argv;
  // Set in the child on top of pixelgate's own environment.
  std::map<std::string, std::string> environment;
  // The file that stdout and stderr are appended to. When empty, a thread
  // reads them from a pipe and logs each line under `log_prefix`.
  std::string output_file;
  std::string log_prefix;
};

// Thread-safety: every member may be called from any thread.
class ChildProcess {
 public:
  // Starts the process and returns once execve succeeded or failed. Linux
  // sends the parent-death signal when the *thread* that forked the child
  // exits, so call this from a thread that lives as long as the child should.
  static core::Result<std::unique_ptr<ChildProcess>> spawn(const SpawnOptions& options);

  // Kills the process group with SIGKILL when the child still runs, reaps
  // it, and stops the output thread.
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const noexcept { return pid_; }

  // Reaps the child without blocking. Returns its status once it has exited
  // (the same status on every later call), nullopt while it runs. On the
  // first sight of the exit, whatever is left of its process group gets
  // SIGKILL.
  std::optional<ExitStatus> poll();

  // Sends `signal` to the child's process group. Returns false when the
  // child has already been reaped or the group is gone.
  bool signal_group(int signal);

  // Sends SIGKILL to the group and waits for the child to exit.
  ExitStatus kill_and_wait();

 private:
  ChildProcess(pid_t pid, int output_fd, std::string log_prefix);
  void pump_output();

  const pid_t pid_;
  std::mutex mutex_;
  std::optional<ExitStatus> exit_;
  int output_fd_ = -1;  // read end of the output pipe, or -1
  std::string log_prefix_;
  std::atomic<bool> stop_output_{false};
  std::thread output_thread_;
};

}  // namespace pixelgate::pool
