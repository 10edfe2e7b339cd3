#include "transport/byte_pipe.h"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

namespace kvb::transport {

namespace {

struct Message {
  std::string bytes;
  Clock::time_point ready;
};

class MemoryPipeState final : public MemoryPipeFaults {
 public:
  explicit MemoryPipeState(const MemoryPipeOptions& opt) : opt_(opt) {}

  Status send(int dir, std::span<const std::string_view> pieces, Clock::time_point deadline) {
    size_t n = 0;
    for (std::string_view p : pieces) n += p.size();
    if (opt_.on_send) opt_.on_send(n);
    if (opt_.send_delay.count() > 0) std::this_thread::sleep_for(opt_.send_delay);
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (closed_ || broken_) return unavailable("the pipe is closed");
      // A message larger than the window goes alone, once the direction is empty.
      if (in_flight_[dir] == 0 || in_flight_[dir] + n <= opt_.window_bytes) break;
      if (cv_.wait_until(lock, deadline) == std::cv_status::timeout && Clock::now() >= deadline) {
        return Status(StatusCode::kDeadlineExceeded, "the pipe's send window stayed full");
      }
    }
    Message m;
    m.bytes.reserve(n);
    for (std::string_view p : pieces) m.bytes.append(p);
    m.ready = Clock::now() + opt_.latency;
    in_flight_[dir] += n;
    q_[dir].push_back(std::move(m));
    ++sent_;
    cv_.notify_all();
    return Status::Ok();
  }

  Result<std::optional<std::string>> recv(int dir, Clock::time_point deadline) {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (broken_) return unavailable("the pipe broke");
      const Clock::time_point now = Clock::now();
      if (!q_[dir].empty() && !stalled_ && q_[dir].front().ready <= now) {
        std::string out = std::move(q_[dir].front().bytes);
        q_[dir].pop_front();
        in_flight_[dir] -= out.size();
        cv_.notify_all();
        return std::optional<std::string>(std::move(out));
      }
      if (closed_ && q_[dir].empty()) return unavailable("the pipe is closed");
      if (now >= deadline) return std::optional<std::string>();
      Clock::time_point wake = deadline;
      if (!q_[dir].empty() && !stalled_) wake = std::min(wake, q_[dir].front().ready);
      cv_.wait_until(lock, wake);
    }
  }

  void close() {
    std::lock_guard<std::mutex> lock(mu_);
    closed_ = true;
    cv_.notify_all();
  }

  void break_pipe() override {
    std::lock_guard<std::mutex> lock(mu_);
    broken_ = true;
    for (auto& q : q_) q.clear();
    in_flight_[0] = in_flight_[1] = 0;
    cv_.notify_all();
  }

  void set_stalled(bool stalled) override {
    std::lock_guard<std::mutex> lock(mu_);
    stalled_ = stalled;
    cv_.notify_all();
  }

  uint64_t messages_sent() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return sent_;
  }

 private:
  const MemoryPipeOptions opt_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Message> q_[2];  // [a → b, b → a]
  size_t in_flight_[2] = {0, 0};
  bool closed_ = false, broken_ = false, stalled_ = false;
  uint64_t sent_ = 0;
};

class MemoryPipe final : public BytePipe {
 public:
  MemoryPipe(std::shared_ptr<MemoryPipeState> s, int side) : s_(std::move(s)), side_(side) {}
  ~MemoryPipe() override { s_->close(); }

  Status send(std::span<const std::string_view> pieces, Clock::time_point deadline) override {
    return s_->send(side_, pieces, deadline);
  }
  Result<std::optional<std::string>> recv(Clock::time_point deadline) override { return s_->recv(1 - side_, deadline); }
  void close() override { s_->close(); }

 private:
  std::shared_ptr<MemoryPipeState> s_;
  int side_;
};

}  // namespace

MemoryPipePair make_memory_pipe(const MemoryPipeOptions& opt) {
  auto s = std::make_shared<MemoryPipeState>(opt);
  MemoryPipePair p;
  p.a = std::make_unique<MemoryPipe>(s, 0);
  p.b = std::make_unique<MemoryPipe>(s, 1);
  p.faults = s;
  return p;
}

}  // namespace kvb::transport
