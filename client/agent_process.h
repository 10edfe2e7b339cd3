// AgentProcess: a kvbridge-agent child process on a free loopback port, owned RAII-style.
//
// For tests, benchmarks and demos that need real agents: start() runs
//   <binary> --listen 127.0.0.1:0 <args...>
// reads the agent's "listening on 127.0.0.1:PORT" line from its stdout (a pipe) within a timeout,
// and returns the address to connect to. The rest of the agent's stdout and all its stderr go to
// `log_path` (appended) or, when that is empty, to this process's stderr.
//
// Lifetime: the destructor stops the agent (SIGTERM, then SIGKILL after `stop_grace`) and reaps
// it; kill() sends a signal at once (SIGKILL for "the sharer dies mid-transfer" tests). The child
// is also killed if the thread that started it exits (PR_SET_PDEATHSIG), so a crashed test leaves
// no agents behind: start agents from a thread that outlives them (e.g. the main thread).
//
// Threading: one owner thread; start() may be called from several threads at once.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <csignal>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/status.h"

namespace kvb::client {

struct AgentProcessOptions {
  std::string binary;             // path of kvbridge-agent
  std::vector<std::string> args;  // flags after --listen (e.g. {"--model", path})
  bool listen_flag = true;        // false: no "--listen 127.0.0.1:0" (a stand-in that picks its own)
  std::vector<std::string> env;   // "NAME=value" entries added to the inherited environment
  std::string log_path;           // agent stdout (after the listening line) + stderr; "" = ours
  std::chrono::milliseconds start_timeout{30000};
  std::chrono::milliseconds stop_grace{5000};
};

class AgentProcess {
 public:
  // UNAVAILABLE when the agent exits or prints no "listening on" line within start_timeout (the
  // message carries the exit status and, with a log file, its last lines); INTERNAL when the
  // process cannot be created.
  static Result<std::unique_ptr<AgentProcess>> start(const AgentProcessOptions& options);
  ~AgentProcess();
  AgentProcess(const AgentProcess&) = delete;
  AgentProcess& operator=(const AgentProcess&) = delete;

  const std::string& address() const { return address_; }  // "127.0.0.1:PORT"
  pid_t pid() const { return pid_; }
  bool running() const { return pid_ > 0; }

  // Sends `sig`; for SIGKILL (and SIGTERM) also waits for the process to end and reaps it.
  void kill(int sig = SIGKILL);
  // SIGTERM, wait up to stop_grace, then SIGKILL; returns the wait status (0 if already reaped).
  int stop();

 private:
  AgentProcess() = default;
  int reap(std::chrono::milliseconds timeout);  // waitpid with a timeout; -1 when still running

  AgentProcessOptions options_;
  pid_t pid_ = -1;
  std::string address_;
  int stdout_fd_ = -1;
  std::thread drain_;  // copies the agent's remaining stdout to the log
};

}  // namespace kvb::client
