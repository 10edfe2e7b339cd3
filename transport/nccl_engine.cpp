#include "transport/nccl_engine.h"

#include <fmt/format.h>

#include <deque>
#include <thread>
#include <vector>

#include "transport/metadata.h"
#include "transport/transfer_core.h"

namespace kvb::transport {

namespace {

using detail::Op;

const TransportCaps kCaps = [] {
  TransportCaps c;
  c.name = "nccl";
  c.device_memory = true;
  c.same_device = false;
  c.any_order = false;
  c.device_events = true;
  return c;
}();

// Where the communicator is.
enum class CommStage { kIdle, kNeedInit, kInitializing, kReady, kBroken };
// Where an op is (Op::stage).
constexpr int kQueued = 0, kEnqueuing = 1, kRunning = 2;

class NcclCore final : public detail::Core {
 public:
  NcclCore(Role role, std::unique_ptr<NcclDeviceOps> ops, const NcclOptions& opt, std::string unique_id)
      : Core(kCaps, role, opt.timeout),
        ops_(std::move(ops)),
        opt_(opt),
        device_(ops_->device()),
        uuid_(ops_->device_uuid()),
        uid_(std::move(unique_id)) {
    poll_interval_ = std::chrono::milliseconds(1);
  }

  void start() { thread_ = std::thread([this] { run(); }); }

  std::string metadata() const {
    Envelope e;
    e.transport = kCaps.name;
    e.role = role_;
    e.endpoint = endpoint_;
    e.process = process_nonce();
    e.host_id = local_host_id();
    detail::ByteWriter w;
    w.u32(uint32_t(device_));
    w.str(uuid_);
    w.str(role_ == Role::kSharer ? uid_ : std::string());
    e.body = w.take();
    return encode_envelope(e);
  }

  Status connect(std::string_view peer_metadata) {
    KVB_ASSIGN_OR_RETURN(const Envelope e, decode_peer_envelope(peer_metadata, kCaps.name, role_));
    detail::ByteReader r(e.body);
    uint32_t device = 0;
    std::string uuid, uid;
    if (!r.u32(device) || !r.str(uuid, 256) || !r.str(uid, 4096) || !r.done()) {
      return invalid_argument("nccl: the peer's metadata body is malformed");
    }
    std::lock_guard<std::mutex> lock(mu());
    if (!broken_.ok()) return broken_;
    if (connect_called_) return failed_precondition("nccl: connect() was already called");
    if (!uuid.empty() && uuid == uuid_) {
      return failed_precondition(fmt::format(
          "nccl: both endpoints use GPU {}: NCCL cannot run two ranks on one GPU (cuda-ipc can)", uuid));
    }
    if (role_ == Role::kReceiver) {
      if (uid.empty()) return invalid_argument("nccl: the sharer's metadata carries no NCCL unique id");
      uid_ = uid;
    }
    connect_called_ = true;
    stage_ = CommStage::kNeedInit;
    cv().notify_all();
    return Status::Ok();
  }

  void close() {
    {
      std::unique_lock<std::mutex> lock(mu());
      drain_locked(lock);
      stop_ = true;
      cv().notify_all();
    }
    if (thread_.joinable()) thread_.join();
    // Only this thread is left: tear the communicator down.
    if (stage_ == CommStage::kReady) {
      ops_->finalize();
    } else if (stage_ == CommStage::kInitializing) {
      ops_->abort();
    }
    stage_ = CommStage::kBroken;
  }

 protected:
  void on_post_locked(const std::shared_ptr<Op>& op) override {
    op->stage = kQueued;
    queue_.push_back(op);
    cv().notify_all();
  }

  // Any transfer ending early breaks the ordered pairing with the peer: abort the communicator.
  void on_fail_locked(Op& op) override {
    if (abort_requested_) return;
    if (op.user_cancelled) {
      request_abort_locked(Status(StatusCode::kAborted, fmt::format("nccl: the communicator was aborted: {} was cancelled",
                                                                    op.describe())));
    } else {
      request_abort_locked(op.pending.code() == StatusCode::kUnavailable
                               ? unavailable("nccl: the communicator was aborted: " + op.pending.message())
                               : Status(op.pending.code(), "nccl: the communicator was aborted: " + op.pending.message()));
    }
  }

  void on_finish_locked(Op& op) override {
    std::erase_if(queue_, [&](const std::shared_ptr<Op>& o) { return o.get() == &op; });
  }

  void on_abort_locked(const Status& reason) override {
    // With nothing in flight the communicator stays healthy (close() finalizes it).
    if (!live_.empty()) request_abort_locked(reason);
  }

 private:
  int peer_rank() const { return role_ == Role::kSharer ? 1 : 0; }
  int rank() const { return role_ == Role::kSharer ? 0 : 1; }

  void request_abort_locked(const Status& why) {
    if (abort_requested_) return;
    abort_requested_ = true;
    abort_status_ = why;
    cv().notify_all();
  }

  // ncclCommAbort, then every unfinished op ends: its own failure, or the abort's cause.
  void abort_comm_locked(std::unique_lock<std::mutex>& lock) {
    const bool had_comm = stage_ == CommStage::kInitializing || stage_ == CommStage::kReady;
    stage_ = CommStage::kBroken;
    if (had_comm) {
      lock.unlock();
      ops_->abort();
      lock.lock();
    }
    std::vector<std::shared_ptr<Op>> launched(running_.begin(), running_.end());
    if (enqueuing_) launched.push_back(enqueuing_);
    running_.clear();
    enqueuing_.reset();
    for (const auto& op : launched) {
      op->busy = false;
      ops_->release(op->token);
      op->native_event = nullptr;
    }
    fail_all_locked(abort_status_);
    std::vector<std::shared_ptr<Op>> all;
    for (const auto& [id, op] : live_) all.push_back(op);
    for (const auto& op : all) settle_locked(*op);
  }

  // One pass over the ready communicator; true while anything is in flight.
  bool step_locked() {
    const PollResult s = ops_->comm_state();
    if (s.error()) {
      request_abort_locked(unavailable("nccl: " + s.status.message()));
      return true;
    }
    if (enqueuing_ && s.done()) {
      std::shared_ptr<Op> op = std::move(enqueuing_);
      enqueuing_.reset();
      const Status st = ops_->record(op->token);
      running_.push_back(op);  // busy until the abort releases it, if the record failed
      if (!st.ok()) {
        request_abort_locked(st.with_context("nccl"));
        return true;
      }
      op->stage = kRunning;
      op->native_event = ops_->event(op->token);
    }
    if (!enqueuing_ && s.done() && !queue_.empty()) {
      std::shared_ptr<Op> op = queue_.front();
      queue_.pop_front();
      auto token = ops_->launch(op->is_send, op->ptr, op->bytes, peer_rank(), op->ready_event);
      if (!token.ok()) {
        request_abort_locked(token.status().with_context("nccl: " + op->describe()));
        return true;
      }
      op->token = *token;
      op->busy = true;
      op->stage = kEnqueuing;
      enqueuing_ = op;
    }
    // Completions come in stream order.
    while (!running_.empty()) {
      const std::shared_ptr<Op> op = running_.front();
      const Result<bool> d = ops_->done(op->token);
      if (!d.ok()) {
        request_abort_locked(d.status().with_context("nccl"));
        return true;
      }
      if (!*d) break;
      running_.pop_front();
      op->busy = false;
      ops_->release(op->token);  // its event goes back to the pool (it stays a valid handle)
      op->native_event = nullptr;
      finish_locked(*op, Status::Ok());  // done, even if a cancel raced the copy
    }
    return enqueuing_ || !running_.empty() || !queue_.empty();
  }

  void run() {
    std::unique_lock<std::mutex> lock(mu());
    for (;;) {
      const Clock::time_point now = Clock::now();
      expire_due_locked(now);
      if (abort_requested_ && stage_ != CommStage::kBroken) {
        abort_comm_locked(lock);
        continue;
      }
      if (stop_) break;
      bool active = false;
      switch (stage_) {
        case CommStage::kIdle:
        case CommStage::kBroken:
          break;
        case CommStage::kNeedInit: {
          stage_ = CommStage::kInitializing;
          init_deadline_ = now + opt_.connect_timeout;
          const std::string uid = uid_;
          lock.unlock();
          const Status st = ops_->init_begin(uid, 2, rank());
          lock.lock();
          if (!st.ok()) request_abort_locked(unavailable("nccl: communicator init failed: " + st.message()));
          active = true;
          break;
        }
        case CommStage::kInitializing: {
          const PollResult s = ops_->comm_state();
          if (s.done()) {
            stage_ = CommStage::kReady;
            set_connected_locked();
          } else if (s.error()) {
            request_abort_locked(unavailable("nccl: communicator init failed: " + s.status.message()));
          } else if (now >= init_deadline_) {
            request_abort_locked(unavailable(fmt::format(
                "nccl: the communicator was not up after {} ms: the peer never joined",
                std::chrono::duration_cast<std::chrono::milliseconds>(opt_.connect_timeout).count())));
          }
          active = true;
          break;
        }
        case CommStage::kReady:
          active = step_locked();
          break;
      }
      if (abort_requested_ && stage_ != CommStage::kBroken) continue;
      // In flight: poll the device often (events are not signalled to the host).
      cv().wait_for(lock, active ? std::chrono::microseconds(50) : std::chrono::microseconds(20000));
    }
  }

  std::unique_ptr<NcclDeviceOps> ops_;
  const NcclOptions opt_;
  const int device_;
  const std::string uuid_;
  const TransferId endpoint_ = TransferId::generate();
  std::thread thread_;

  // ---- guarded by mu() (stage_ also read by close() after the thread is joined) ----
  std::string uid_;  // the communicator's unique id (the sharer's, or received from it)
  CommStage stage_ = CommStage::kIdle;
  Clock::time_point init_deadline_;
  bool stop_ = false;
  bool abort_requested_ = false;
  Status abort_status_;
  std::deque<std::shared_ptr<Op>> queue_;    // posted, not launched, in posting order
  std::shared_ptr<Op> enqueuing_;            // launched, its group still being enqueued
  std::deque<std::shared_ptr<Op>> running_;  // enqueued, event recorded, in stream order
};

class NcclEndpoint final : public detail::CoreTransport<NcclCore> {
 public:
  explicit NcclEndpoint(std::shared_ptr<NcclCore> core) : CoreTransport(std::move(core)) {}
  Result<std::string> metadata() const override { return core_->metadata(); }
  Status connect(std::string_view peer_metadata) override { return core_->connect(peer_metadata); }
};

}  // namespace

Result<std::unique_ptr<KvTransport>> make_nccl_transport(Role role, std::unique_ptr<NcclDeviceOps> ops,
                                                         const NcclOptions& opt) {
  if (!ops) return invalid_argument("nccl: no device ops");
  std::string uid;
  if (role == Role::kSharer) {
    KVB_ASSIGN_OR_RETURN(uid, ops->new_unique_id());
  }
  auto core = std::make_shared<NcclCore>(role, std::move(ops), opt, std::move(uid));
  core->start();
  return std::unique_ptr<KvTransport>(std::make_unique<NcclEndpoint>(std::move(core)));
}

const TransportCaps& nccl_capabilities() { return kCaps; }

}  // namespace kvb::transport
