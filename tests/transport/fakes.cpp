#include "transport/fakes.h"

#include <fmt/format.h>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "transport/transfer_core.h"

namespace kvb::test {

using namespace kvb::transport;

namespace {

// A thread that copies in chunks with the injected delay and hook; `stop` is checked between chunks.
void chunked_copy(const FakeDeviceOptions& opt, char* dst, const char* src, size_t bytes,
                  const std::function<bool()>& stop) {
  const size_t chunk = std::max<size_t>(1, opt.chunk);
  for (size_t done = 0; done < bytes;) {
    if (stop()) return;
    const size_t n = std::min(chunk, bytes - done);
    std::memcpy(dst + done, src + done, n);
    done += n;
    if (opt.on_chunk) opt.on_chunk(done);
    if (opt.chunk_delay.count() > 0) std::this_thread::sleep_for(opt.chunk_delay);
  }
}

// ============================== ipc-host ==============================

const TransportCaps kHostIpcCaps = [] {
  TransportCaps c;
  c.name = "ipc-host";
  c.host_memory = true;
  c.same_node_only = true;
  c.bidirectional = false;
  return c;
}();

class HostIpcOps final : public IpcDeviceOps {
 public:
  HostIpcOps(const FakeDeviceOptions& opt, std::shared_ptr<FakeDeviceStats> stats)
      : opt_(opt), stats_(std::move(stats)), worker_([this] { run(); }) {}

  ~HostIpcOps() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  const TransportCaps& caps() const override { return kHostIpcCaps; }

  Result<std::string> export_region(const KvRegion& region) override {
    detail::ByteWriter w;
    w.raw("HOST");
    w.u64(reinterpret_cast<uintptr_t>(region.ptr));
    return w.take();
  }

  Result<bool> event_ready(void* event) override { return static_cast<FakeEvent*>(event)->fired.load(); }

  Result<void*> open(std::string_view handle) override {
    detail::ByteReader r(handle);
    std::string_view magic;
    uint64_t ptr = 0;
    if (!r.raw(4, magic) || magic != "HOST" || !r.u64(ptr) || !r.done()) return invalid_argument("ipc-host: bad handle");
    ++stats_->opens;
    return reinterpret_cast<void*>(uintptr_t(ptr));
  }

  Status close(void* /*base*/) override {
    ++stats_->closes;
    return Status::Ok();
  }

  Result<uint64_t> copy_async(void* dst, const void* src, size_t bytes) override {
    std::lock_guard<std::mutex> lock(mu_);
    const uint64_t tok = ++next_;
    jobs_[tok] = Job{static_cast<char*>(dst), static_cast<const char*>(src), bytes, false};
    queue_.push_back(tok);
    cv_.notify_all();
    return tok;
  }

  Result<bool> copy_done(uint64_t token) override {
    std::lock_guard<std::mutex> lock(mu_);
    const auto it = jobs_.find(token);
    if (it == jobs_.end()) return internal_error("ipc-host: unknown token");
    return it->second.done;
  }

  void* copy_event(uint64_t /*token*/) override { return nullptr; }

  void release_copy(uint64_t token) override {
    std::lock_guard<std::mutex> lock(mu_);
    jobs_.erase(token);
  }

 private:
  struct Job {
    char* dst;
    const char* src;
    size_t bytes;
    bool done;
  };

  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping
      const uint64_t tok = queue_.front();
      queue_.pop_front();
      const Job job = jobs_.at(tok);
      lock.unlock();
      chunked_copy(opt_, job.dst, job.src, job.bytes, [] { return false; });  // a DMA cannot be stopped
      lock.lock();
      jobs_.at(tok).done = true;
    }
  }

  const FakeDeviceOptions opt_;
  std::shared_ptr<FakeDeviceStats> stats_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<uint64_t, Job> jobs_;
  std::deque<uint64_t> queue_;
  uint64_t next_ = 0;
  bool stop_ = false;
  std::thread worker_;
};

// ============================== fake NCCL ==============================

struct FakeOp {
  uint64_t token;
  bool send;
  char* ptr;
  size_t bytes;
  bool done = false;
};

// One 2-rank communicator: a stream per rank, paired by a worker thread.
class FakeComm {
 public:
  explicit FakeComm(const FakeDeviceOptions& opt) : opt_(opt), worker_([this] { run(); }) {}
  ~FakeComm() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
  }

  void join(int rank) {
    std::lock_guard<std::mutex> lock(mu_);
    joined_[rank] = true;
    if (joined_[0] && joined_[1]) ready_at_ = std::chrono::steady_clock::now() + opt_.init_delay;
  }
  bool up() {
    std::lock_guard<std::mutex> lock(mu_);
    return joined_[0] && joined_[1] && std::chrono::steady_clock::now() >= ready_at_;
  }
  bool aborted(int rank) {
    std::lock_guard<std::mutex> lock(mu_);
    return aborted_[rank];
  }
  void launch(int rank, FakeOp op) {
    std::lock_guard<std::mutex> lock(mu_);
    q_[rank].push_back(op);
    cv_.notify_all();
  }
  bool done(int rank, uint64_t token) {
    std::lock_guard<std::mutex> lock(mu_);
    for (const FakeOp& op : q_[rank]) {
      if (op.token == token) return op.done;
    }
    return true;  // popped: done
  }
  // After it returns, no copy of this rank's runs or will run.
  void abort(int rank) {
    std::unique_lock<std::mutex> lock(mu_);
    aborted_[rank] = true;
    cv_.wait(lock, [&] { return copying_ == 0; });
    q_[rank].clear();
    cv_.notify_all();
  }

 private:
  void run() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      if (stop_) return;
      FakeOp* a = q_[0].empty() ? nullptr : &q_[0].front();
      FakeOp* b = q_[1].empty() ? nullptr : &q_[1].front();
      // Like NCCL: only a send facing a recv of the same size progresses; anything else hangs.
      if (!a || !b || a->send == b->send || a->bytes != b->bytes || aborted_[0] || aborted_[1]) {
        cv_.wait_for(lock, std::chrono::milliseconds(5));
        continue;
      }
      FakeOp& s = a->send ? *a : *b;
      FakeOp& r = a->send ? *b : *a;
      ++copying_;
      char* dst = r.ptr;
      const char* src = s.ptr;
      const size_t n = s.bytes;
      lock.unlock();
      chunked_copy(opt_, dst, src, n, [&] {
        std::lock_guard<std::mutex> l(mu_);
        return aborted_[0] || aborted_[1];
      });
      lock.lock();
      --copying_;
      cv_.notify_all();
      if (aborted_[0] || aborted_[1]) continue;  // abort() clears the queue
      q_[0].pop_front();
      q_[1].pop_front();
      if (opt_.fail_after_pairs > 0 && ++completed_ == opt_.fail_after_pairs) {
        aborted_[0] = aborted_[1] = true;  // the rest stays queued: never done, as on a dead communicator
      }
    }
  }

  const FakeDeviceOptions opt_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<FakeOp> q_[2];
  bool joined_[2] = {false, false};
  bool aborted_[2] = {false, false};
  std::chrono::steady_clock::time_point ready_at_;
  int copying_ = 0;
  int completed_ = 0;  // send/recv pairs
  bool stop_ = false;
  std::thread worker_;
};

// unique id → communicator, shared by the two ranks' ops.
std::shared_ptr<FakeComm> comm_for(const std::string& uid, const FakeDeviceOptions& opt) {
  static std::mutex mu;
  static std::map<std::string, std::weak_ptr<FakeComm>> world;
  std::lock_guard<std::mutex> lock(mu);
  std::shared_ptr<FakeComm> c = world[uid].lock();
  if (!c) {
    c = std::make_shared<FakeComm>(opt);
    world[uid] = c;
  }
  return c;
}

class FakeNcclOps final : public NcclDeviceOps {
 public:
  FakeNcclOps(int device, std::string uuid, const FakeDeviceOptions& opt, std::shared_ptr<FakeDeviceStats> stats)
      : device_(device), uuid_(std::move(uuid)), opt_(opt), stats_(std::move(stats)) {}

  int device() const override { return device_; }
  std::string device_uuid() const override { return uuid_; }

  Result<std::string> new_unique_id() override {
    std::random_device rd;
    std::string id(128, '\0');
    for (char& c : id) c = char(rd() & 0xff);
    return id;
  }

  Status init_begin(std::string_view unique_id, int n_ranks, int rank) override {
    if (unique_id.size() != 128 || n_ranks != 2 || rank < 0 || rank > 1) return invalid_argument("fake nccl: bad init");
    comm_ = comm_for(std::string(unique_id), opt_);
    rank_ = rank;
    comm_->join(rank);
    return Status::Ok();
  }

  PollResult comm_state() override {
    if (!comm_) return {TransferState::kError, failed_precondition("fake nccl: no communicator")};
    if (comm_->aborted(rank_)) return {TransferState::kError, internal_error("fake nccl: aborted")};
    if (!comm_->up()) return {};
    if (enqueue_left_ > 0) {
      --enqueue_left_;
      return {};
    }
    return {TransferState::kDone, Status::Ok()};
  }

  Result<uint64_t> launch(bool send, void* ptr, size_t bytes, int peer, void* ready_event) override {
    if (peer != 1 - rank_) return invalid_argument("fake nccl: bad peer");
    if (ready_event && !static_cast<FakeEvent*>(ready_event)->fired.load()) {
      return internal_error("fake nccl: a ready_event that has not fired (the fake cannot wait on the device)");
    }
    const uint64_t tok = ++next_;
    comm_->launch(rank_, FakeOp{tok, send, static_cast<char*>(ptr), bytes});
    enqueue_left_ = opt_.enqueue_polls;
    return tok;
  }

  Status record(uint64_t /*token*/) override { return Status::Ok(); }
  Result<bool> done(uint64_t token) override { return comm_->done(rank_, token); }
  void* event(uint64_t token) override { return reinterpret_cast<void*>(uintptr_t(token)); }  // opaque, never used
  void release(uint64_t /*token*/) override {}

  void abort() override {
    ++stats_->aborts;
    if (comm_) comm_->abort(rank_);
  }
  void finalize() override {
    ++stats_->finalizes;
    comm_.reset();
  }

 private:
  const int device_;
  const std::string uuid_;
  const FakeDeviceOptions opt_;
  std::shared_ptr<FakeDeviceStats> stats_;
  std::shared_ptr<FakeComm> comm_;
  int rank_ = -1;
  int enqueue_left_ = 0;
  uint64_t next_ = 0;
};

}  // namespace

std::unique_ptr<IpcDeviceOps> make_host_ipc_ops(const FakeDeviceOptions& opt, std::shared_ptr<FakeDeviceStats> stats) {
  return std::make_unique<HostIpcOps>(opt, std::move(stats));
}

const TransportCaps& host_ipc_caps() { return kHostIpcCaps; }

std::unique_ptr<NcclDeviceOps> make_fake_nccl_ops(int device, std::string uuid, const FakeDeviceOptions& opt,
                                                  std::shared_ptr<FakeDeviceStats> stats) {
  return std::make_unique<FakeNcclOps>(device, std::move(uuid), opt, std::move(stats));
}

}  // namespace kvb::test
