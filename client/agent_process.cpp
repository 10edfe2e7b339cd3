#include "client/agent_process.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

namespace kvb::client {

namespace {

using Clock = std::chrono::steady_clock;

void write_all(int fd, std::string_view s) {
  while (!s.empty()) {
    const ssize_t w = ::write(fd, s.data(), s.size());
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;  // a log that cannot be written is not worth failing an agent for
    s.remove_prefix(size_t(w));
  }
}

std::string describe_wait_status(int st) {
  if (WIFEXITED(st)) return fmt::format("exited with code {}", WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return fmt::format("killed by signal {}", WTERMSIG(st));
  return "ended";
}

// The last `n` bytes of a file, for error messages.
std::string file_tail(const std::string& path, size_t n = 2000) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return {};
  const std::streamoff size = f.tellg();
  const std::streamoff from = size > std::streamoff(n) ? size - std::streamoff(n) : 0;
  f.seekg(from);
  std::string s(size_t(size - from), '\0');
  f.read(s.data(), std::streamsize(s.size()));
  return s;
}

}  // namespace

Result<std::unique_ptr<AgentProcess>> AgentProcess::start(const AgentProcessOptions& options) {
  std::unique_ptr<AgentProcess> p(new AgentProcess());
  p->options_ = options;

  int log_fd = STDERR_FILENO;
  if (!options.log_path.empty()) {
    log_fd = ::open(options.log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log_fd < 0) return internal_error(fmt::format("opening {}: {}", options.log_path, std::strerror(errno)));
  }
  auto close_log = [&] {
    if (log_fd != STDERR_FILENO) ::close(log_fd);
  };
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) {
    close_log();
    return internal_error(fmt::format("pipe: {}", std::strerror(errno)));
  }

  // Everything the child needs is prepared before fork(): after it, only async-signal-safe calls.
  std::vector<std::string> args = {options.binary};
  if (options.listen_flag) args.insert(args.end(), {"--listen", "127.0.0.1:0"});
  args.insert(args.end(), options.args.begin(), options.args.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  std::vector<std::string> env = options.env;
  std::vector<char*> envp;
  for (std::string& e : env) envp.push_back(e.data());
  for (char** e = environ; *e; ++e) envp.push_back(*e);
  envp.push_back(nullptr);
  const pid_t parent = ::getpid();

  const pid_t pid = ::fork();
  if (pid < 0) {
    ::close(out[0]);
    ::close(out[1]);
    close_log();
    return internal_error(fmt::format("fork: {}", std::strerror(errno)));
  }
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before prctl took effect
    ::dup2(out[1], STDOUT_FILENO);
    if (log_fd != STDERR_FILENO) ::dup2(log_fd, STDERR_FILENO);
    ::execve(argv[0], argv.data(), envp.data());
    ::_exit(127);
  }
  ::close(out[1]);
  p->pid_ = pid;
  p->stdout_fd_ = out[0];

  // Read stdout line by line until "listening on ADDR"; other lines go to the log.
  const auto deadline = Clock::now() + options.start_timeout;
  std::string buf;
  std::string failure;
  while (p->address_.empty() && failure.empty()) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    if (left <= 0) {
      failure = fmt::format("no 'listening on' line within {} ms", options.start_timeout.count());
      break;
    }
    pollfd pfd{out[0], POLLIN, 0};
    const int r = ::poll(&pfd, 1, int(left));
    if (r < 0 && errno == EINTR) continue;
    if (r == 0) continue;
    char tmp[4096];
    const ssize_t n = ::read(out[0], tmp, sizeof tmp);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int st = p->reap(std::chrono::milliseconds(2000));
      failure = st >= 0 ? describe_wait_status(st) : "closed its stdout";
      break;
    }
    buf.append(tmp, size_t(n));
    size_t eol;
    while (p->address_.empty() && (eol = buf.find('\n')) != std::string::npos) {
      const std::string line = buf.substr(0, eol + 1);
      buf.erase(0, eol + 1);
      static constexpr std::string_view kTag = "listening on ";
      if (const size_t at = line.find(kTag); at != std::string::npos) {
        const size_t b = at + kTag.size();
        const size_t e = line.find_first_of(" \t\r\n", b);
        p->address_ = line.substr(b, e - b);
      } else {
        write_all(log_fd, line);
      }
    }
  }
  if (!failure.empty()) {
    std::string tail = options.log_path.empty() ? std::string() : file_tail(options.log_path);
    close_log();
    // The destructor stops and reaps the process if it still runs.
    return unavailable(fmt::format("{} {}{}{}", options.binary, failure, tail.empty() ? "" : "; log tail:\n", tail));
  }
  write_all(log_fd, buf);
  p->drain_ = std::thread([fd = out[0], log_fd] {
    char tmp[4096];
    while (true) {
      const ssize_t n = ::read(fd, tmp, sizeof tmp);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) break;
      write_all(log_fd, std::string_view(tmp, size_t(n)));
    }
    if (log_fd != STDERR_FILENO) ::close(log_fd);
  });
  return p;
}

int AgentProcess::reap(std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return 0;
  const auto deadline = Clock::now() + timeout;
  while (true) {
    int st = 0;
    const pid_t r = ::waitpid(pid_, &st, WNOHANG);
    if (r == pid_ || (r < 0 && errno == ECHILD)) {
      const bool reaped = r == pid_;
      pid_ = -1;
      return reaped ? st : 0;
    }
    if (Clock::now() >= deadline) return -1;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
}

void AgentProcess::kill(int sig) {
  if (pid_ <= 0) return;
  ::kill(pid_, sig);
  if (sig == SIGKILL) {
    (void)reap(std::chrono::milliseconds(10000));
  } else if (sig == SIGTERM) {
    if (reap(options_.stop_grace) < 0) kill(SIGKILL);
  }
}

int AgentProcess::stop() {
  if (pid_ <= 0) return 0;
  ::kill(pid_, SIGTERM);
  int st = reap(options_.stop_grace);
  if (st < 0) {
    ::kill(pid_, SIGKILL);
    st = reap(std::chrono::milliseconds(10000));
  }
  return st;
}

AgentProcess::~AgentProcess() {
  (void)stop();
  if (drain_.joinable()) drain_.join();
  if (stdout_fd_ >= 0) ::close(stdout_fd_);
}

}  // namespace kvb::client
