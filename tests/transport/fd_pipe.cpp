#include "transport/fd_pipe.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <mutex>

namespace kvb::test {

using namespace kvb::transport;

namespace {

int ms_until(Clock::time_point deadline) {
  const auto d = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return d <= 0 ? 0 : int(std::min<int64_t>(d, 1 << 30));
}

class FdPipe final : public BytePipe {
 public:
  explicit FdPipe(int fd) : fd_(fd) {}
  ~FdPipe() override {
    close();
    ::close(fd_);
  }

  Status send(std::span<const std::string_view> pieces, Clock::time_point deadline) override {
    std::string msg(4, '\0');
    for (std::string_view p : pieces) msg.append(p);
    const uint32_t n = uint32_t(msg.size() - 4);
    for (int i = 0; i < 4; ++i) msg[size_t(i)] = char((n >> (8 * i)) & 0xff);
    std::lock_guard<std::mutex> lock(send_mu_);
    if (closed_) return unavailable("fd pipe: closed");
    pollfd p{fd_, POLLOUT, 0};
    if (::poll(&p, 1, ms_until(deadline)) == 0) return Status(StatusCode::kDeadlineExceeded, "fd pipe: full");
    // Once started, a message is written whole (blocking): a half-sent message would break framing.
    for (size_t off = 0; off < msg.size();) {
      const ssize_t w = ::send(fd_, msg.data() + off, msg.size() - off, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return unavailable(std::string("fd pipe: send: ") + std::strerror(errno));
      off += size_t(w);
    }
    return Status::Ok();
  }

  Result<std::optional<std::string>> recv(Clock::time_point deadline) override {
    for (;;) {
      if (buf_.size() >= 4) {
        uint32_t n = 0;
        for (int i = 0; i < 4; ++i) n |= uint32_t(uint8_t(buf_[size_t(i)])) << (8 * i);
        if (buf_.size() >= 4 + size_t(n)) {
          std::string out = buf_.substr(4, n);
          buf_.erase(0, 4 + size_t(n));
          return std::optional<std::string>(std::move(out));
        }
      }
      pollfd p{fd_, POLLIN, 0};
      const int pr = ::poll(&p, 1, ms_until(deadline));
      if (pr == 0) return std::optional<std::string>();
      if (pr < 0 && errno == EINTR) continue;
      char tmp[1 << 16];
      const ssize_t r = ::recv(fd_, tmp, sizeof(tmp), 0);
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) return unavailable("fd pipe: the peer closed the socket");
      buf_.append(tmp, size_t(r));
    }
  }

  void close() override {
    std::lock_guard<std::mutex> lock(send_mu_);
    if (!closed_) ::shutdown(fd_, SHUT_RDWR);
    closed_ = true;
  }

 private:
  const int fd_;
  std::mutex send_mu_;
  bool closed_ = false;
  std::string buf_;  // bytes read, not yet a whole message (one reader at a time)
};

}  // namespace

std::unique_ptr<BytePipe> make_fd_pipe(int fd) { return std::make_unique<FdPipe>(fd); }

std::pair<int, int> socket_pair() {
  int sv[2] = {-1, -1};
  if (::socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) return {-1, -1};
  return {sv[0], sv[1]};
}

}  // namespace kvb::test
