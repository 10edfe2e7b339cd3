#include "transport/grpc_stream_transport.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <thread>

#include "transport/metadata.h"
#include "transport/transfer_core.h"

namespace kvb::transport {

namespace {

using detail::Op;

constexpr uint8_t kData = 1, kCancel = 2, kBye = 3;

const TransportCaps kCaps = [] {
  TransportCaps c;
  c.name = "grpc";
  c.host_memory = true;
  return c;
}();

Status peer_status(uint32_t code, const std::string& message) {
  const StatusCode c = code >= 1 && code <= 16 ? StatusCode(code) : StatusCode::kUnknown;
  return Status(c, "peer: " + message);
}

// One stream (one send) of the peer, as it arrives.
struct Incoming {
  uint64_t tag = 0, total = 0, received = 0;
  std::shared_ptr<Op> op;  // the recv it is bound to
  std::string buffer;      // bytes that arrived before a recv was posted
  Status failed;           // the sender's CANCEL, for the recv that will match it
  bool discard = false;    // its recv is gone: drop the rest
};

class StreamCore final : public detail::Core {
 public:
  StreamCore(Role role, std::unique_ptr<BytePipe> pipe, const StreamOptions& opt)
      : Core(kCaps, role, opt.timeout), pipe_(std::move(pipe)), opt_(opt) {
    opt_.max_frame_bytes = std::max<size_t>(1, opt_.max_frame_bytes);
  }

  void start() {
    writer_ = std::thread([this] { write_loop(); });
    reader_ = std::thread([this] { read_loop(); });
  }

  std::string metadata() const {
    Envelope e;
    e.transport = kCaps.name;
    e.role = role_;
    e.endpoint = endpoint_;
    e.process = process_nonce();
    e.host_id = local_host_id();
    detail::ByteWriter w;
    w.u64(opt_.max_frame_bytes);
    e.body = w.take();
    return encode_envelope(e);
  }

  Status connect(std::string_view peer_metadata) {
    KVB_ASSIGN_OR_RETURN(const Envelope e, decode_peer_envelope(peer_metadata, kCaps.name, role_));
    detail::ByteReader r(e.body);
    uint64_t frame = 0;
    if (!r.u64(frame) || !r.done()) return invalid_argument("grpc: the peer's metadata body is malformed");
    std::lock_guard<std::mutex> lock(mu());
    if (!broken_.ok()) return broken_;
    if (connect_called_) return failed_precondition("grpc: connect() was already called");
    connect_called_ = true;
    set_connected_locked();
    return Status::Ok();
  }

  void close() {
    {
      std::unique_lock<std::mutex> lock(mu());
      drain_locked(lock);
      stop_ = true;
      cv().notify_all();
    }
    if (writer_.joinable()) writer_.join();  // after flushing CANCEL/BYE frames, briefly
    pipe_->close();
    if (reader_.joinable()) reader_.join();
  }

 protected:
  void on_post_locked(const std::shared_ptr<Op>& op) override {
    if (op->is_send) {
      op->sid = ++next_sid_;
      op->token = 0;  // bytes handed to the pipe
      sendq_.push_back(op);
      cv().notify_all();
      return;
    }
    const auto u = unmatched_.find(op->tag);
    if (u == unmatched_.end()) {
      recvs_[op->tag].push_back(op);
      return;
    }
    const uint64_t sid = u->second.front();
    u->second.pop_front();
    if (u->second.empty()) unmatched_.erase(u);
    bind_locked(sid, op);
  }

  void on_fail_locked(Op& op) override {
    if (op.busy) return;  // the thread touching it finishes the job
    if (op.is_send) {
      ctrlq_.push_back(cancel_frame(op, op.pending));  // the matching recv must not wait for it
      cv().notify_all();
      return;
    }
    if (op.sid != 0) unbind_locked(op);
  }

  void on_finish_locked(Op& op) override {
    if (op.is_send) {
      std::erase_if(sendq_, [&](const std::shared_ptr<Op>& o) { return o.get() == &op; });
      return;
    }
    if (op.sid != 0) {
      unbind_locked(op);
      return;
    }
    const auto q = recvs_.find(op.tag);
    if (q == recvs_.end()) return;
    if (std::erase_if(q->second, [&](const std::shared_ptr<Op>& o) { return o.get() == &op; }) && q->second.empty()) {
      recvs_.erase(q);
    }
  }

  void on_abort_locked(const Status& reason) override {
    if (bye_queued_ || pipe_dead_) return;
    bye_queued_ = true;
    detail::ByteWriter w;
    w.u8(kBye);
    w.str(reason.message());
    ctrlq_.push_back(w.take());
    cv().notify_all();
  }

 private:
  static std::string cancel_frame(const Op& op, const Status& why) {
    detail::ByteWriter w;
    w.u8(kCancel);
    w.u64(op.sid);
    w.u64(op.tag);
    w.u32(uint32_t(why.code()));
    w.str(why.message());
    return w.take();
  }

  // ---- receiving ----

  // Attaches recv `op` to the peer's stream `sid` (its buffered bytes are copied now).
  void bind_locked(uint64_t sid, const std::shared_ptr<Op>& op) {
    Incoming& in = incoming_.at(sid);
    if (!in.failed.ok()) {
      const Status st = in.failed;
      incoming_.erase(sid);
      fail_locked(*op, st);
      return;
    }
    if (in.total != op->bytes) {
      drop_buffer_locked(in);
      in.discard = true;
      if (in.received == in.total) incoming_.erase(sid);
      fail_locked(*op, invalid_argument(fmt::format("grpc: tag {:#x}: the peer sends {} bytes, the recv has {}", op->tag,
                                                    in.total, op->bytes)));
      return;
    }
    std::memcpy(op->ptr, in.buffer.data(), in.buffer.size());
    drop_buffer_locked(in);
    if (in.received == in.total) {
      incoming_.erase(sid);
      finish_locked(*op, Status::Ok());
      return;
    }
    in.op = op;
    op->sid = sid;
  }

  // A bound recv that ended early: the rest of its stream is dropped.
  void unbind_locked(Op& op) {
    const auto it = incoming_.find(op.sid);
    if (it == incoming_.end() || it->second.op.get() != &op) return;
    it->second.op.reset();
    it->second.discard = true;
    if (it->second.received == it->second.total) incoming_.erase(it);
  }

  void drop_buffer_locked(Incoming& in) {
    unmatched_bytes_ -= in.buffer.size();
    std::string().swap(in.buffer);
    cv().notify_all();  // a reader waiting for buffer room
  }

  void protocol_error_locked(const std::string& what) {
    fail_all_locked(invalid_argument("grpc: a malformed frame from the peer: " + what));
  }

  void on_data_locked(std::unique_lock<std::mutex>& lock, uint64_t sid, uint64_t tag, uint64_t total, uint64_t off,
                      std::string_view payload) {
    auto it = incoming_.find(sid);
    if (it == incoming_.end()) {
      if (off != 0 || total == 0) return protocol_error_locked("a stream that does not start at 0");
      Incoming in;
      in.tag = tag;
      in.total = total;
      it = incoming_.emplace(sid, std::move(in)).first;
      const auto q = recvs_.find(tag);
      if (q != recvs_.end()) {
        std::shared_ptr<Op> op = q->second.front();
        q->second.pop_front();
        if (q->second.empty()) recvs_.erase(q);
        bind_locked(sid, op);
      } else {
        unmatched_[tag].push_back(sid);
      }
      it = incoming_.find(sid);
      if (it == incoming_.end()) return;  // the recv failed (size) and nothing is left to receive
    }
    if (it->second.tag != tag || it->second.total != total || off != it->second.received || payload.empty() ||
        payload.size() > total - off) {
      return protocol_error_locked(fmt::format("stream {}: frame [{}, {}) out of place", sid, off, off + payload.size()));
    }
    const size_t n = payload.size();
    // Unbound and the buffer is full: wait for a recv (backpressure on the stream).
    while (!it->second.op && !it->second.discard && it->second.failed.ok() && unmatched_bytes_ > 0 &&
           unmatched_bytes_ + n > opt_.max_unmatched_bytes && !stop_ && broken_.ok()) {
      cv().wait_for(lock, std::chrono::milliseconds(20));
      expire_due_locked(Clock::now());
      it = incoming_.find(sid);
      if (it == incoming_.end()) return;
    }
    if (stop_ || !broken_.ok()) return;
    Incoming& in = it->second;
    if (in.discard || !in.failed.ok()) {
      in.received += n;
      if (in.received == in.total && in.discard) incoming_.erase(it);
      return;
    }
    if (!in.op) {
      in.buffer.append(payload);
      unmatched_bytes_ += n;
      in.received += n;
      return;
    }
    std::shared_ptr<Op> op = in.op;
    op->busy = true;
    lock.unlock();
    std::memcpy(op->ptr + off, payload.data(), n);
    lock.lock();
    op->busy = false;
    it = incoming_.find(sid);  // still there: only this thread erases bound streams
    it->second.received += n;
    if (!op->pending.ok()) {
      it->second.op.reset();
      it->second.discard = true;
      if (it->second.received == it->second.total) incoming_.erase(it);
      settle_locked(*op);
    } else if (it->second.received == it->second.total) {
      incoming_.erase(it);
      op->sid = 0;
      finish_locked(*op, Status::Ok());
    }
  }

  void on_cancel_locked(uint64_t sid, uint64_t tag, const Status& st) {
    const auto it = incoming_.find(sid);
    if (it == incoming_.end()) {  // nothing of it arrived: a notice for the recv that matches it
      const auto q = recvs_.find(tag);
      if (q != recvs_.end()) {
        std::shared_ptr<Op> op = q->second.front();
        q->second.pop_front();
        if (q->second.empty()) recvs_.erase(q);
        fail_locked(*op, st);
        return;
      }
      Incoming in;
      in.tag = tag;
      in.failed = st;
      incoming_.emplace(sid, std::move(in));
      unmatched_[tag].push_back(sid);
      return;
    }
    Incoming& in = it->second;
    if (in.op) {
      std::shared_ptr<Op> op = std::move(in.op);
      incoming_.erase(it);
      op->sid = 0;
      fail_locked(*op, st);
    } else if (in.discard) {
      incoming_.erase(it);
    } else {  // buffered, not matched yet: becomes a notice
      drop_buffer_locked(in);
      in.failed = st;
    }
  }

  void handle_locked(std::unique_lock<std::mutex>& lock, std::string_view msg) {
    detail::ByteReader r(msg);
    uint8_t kind = 0;
    if (!r.u8(kind)) return protocol_error_locked("an empty message");
    if (kind == kData) {
      uint64_t sid = 0, tag = 0, total = 0, off = 0;
      if (!r.u64(sid) || !r.u64(tag) || !r.u64(total) || !r.u64(off)) return protocol_error_locked("a short DATA frame");
      return on_data_locked(lock, sid, tag, total, off, r.rest());
    }
    if (kind == kCancel) {
      uint64_t sid = 0, tag = 0;
      uint32_t code = 0;
      std::string message;
      if (!r.u64(sid) || !r.u64(tag) || !r.u32(code) || !r.str(message, 4096) || !r.done()) {
        return protocol_error_locked("a malformed CANCEL frame");
      }
      return on_cancel_locked(sid, tag, peer_status(code, message));
    }
    if (kind == kBye) {
      std::string reason;
      if (!r.str(reason, 4096)) reason = "(no reason)";
      fail_all_locked(unavailable("grpc: the peer closed the transport: " + reason));
      return;
    }
    protocol_error_locked(fmt::format("unknown frame kind {}", kind));
  }

  void read_loop() {
    for (;;) {
      auto m = pipe_->recv(Clock::now() + std::chrono::milliseconds(20));
      std::unique_lock<std::mutex> lock(mu());
      expire_due_locked(Clock::now());
      if (stop_) return;
      if (!m.ok()) {
        pipe_dead_ = true;
        ctrlq_.clear();
        fail_all_locked(unavailable("grpc: the stream from the peer ended: " + m.status().message()));
        return;
      }
      if (*m) handle_locked(lock, **m);
    }
  }

  // ---- sending ----

  void write_loop() {
    std::unique_lock<std::mutex> lock(mu());
    for (;;) {
      expire_due_locked(Clock::now());
      if (pipe_dead_) ctrlq_.clear();
      if (!ctrlq_.empty()) {
        const std::string frame = std::move(ctrlq_.front());
        ctrlq_.pop_front();
        const auto budget = stop_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(1000);
        lock.unlock();
        const Status st = pipe_->send(frame, Clock::now() + budget);
        lock.lock();
        if (!st.ok() && stop_) ctrlq_.clear();  // closing: a peer that does not read gets no goodbye
        if (st.code() == StatusCode::kUnavailable) pipe_broken_locked(st);
        continue;
      }
      if (stop_) return;
      if (!connect_called_ || !broken_.ok() || pipe_dead_ || sendq_.empty()) {
        cv().wait_for(lock, std::chrono::milliseconds(20));
        continue;
      }
      const std::shared_ptr<Op> op = sendq_.front();  // not final: final sends leave the queue
      const size_t off = op->token;
      const size_t n = std::min(opt_.max_frame_bytes, op->bytes - off);
      detail::ByteWriter w;
      w.u8(kData);
      w.u64(op->sid);
      w.u64(op->tag);
      w.u64(op->bytes);
      w.u64(off);
      const std::string_view pieces[2] = {w.out(), std::string_view(op->ptr + off, n)};
      const Clock::time_point until = std::min(op->deadline, Clock::now() + std::chrono::milliseconds(50));
      op->busy = true;
      lock.unlock();
      const Status st = pipe_->send(pieces, until);
      lock.lock();
      op->busy = false;
      if (st.ok()) {
        op->token += n;
        if (op->token == op->bytes) {  // all handed on: done, even if a cancel raced the last frame
          finish_locked(*op, Status::Ok());
          continue;
        }
      } else if (st.code() != StatusCode::kDeadlineExceeded) {
        pipe_broken_locked(st);
      }
      if (!op->pending.ok()) {
        ctrlq_.push_back(cancel_frame(*op, op->pending));
        settle_locked(*op);
      }
    }
  }

  void pipe_broken_locked(const Status& st) {
    pipe_dead_ = true;  // nothing more goes out (no goodbye either)
    ctrlq_.clear();
    fail_all_locked(unavailable("grpc: the stream to the peer broke: " + st.message()));
  }

  std::unique_ptr<BytePipe> pipe_;
  StreamOptions opt_;
  const TransferId endpoint_ = TransferId::generate();
  bool stop_ = false;
  bool pipe_dead_ = false;   // the pipe failed: nothing more is written
  bool bye_queued_ = false;
  std::deque<std::shared_ptr<Op>> sendq_;  // sends not fully handed to the pipe, in posting order
  std::deque<std::string> ctrlq_;          // CANCEL and BYE frames, written before the next DATA frame
  uint64_t next_sid_ = 0;
  std::map<uint64_t, Incoming> incoming_;                      // the peer's streams, by sid
  std::map<uint64_t, std::deque<uint64_t>> unmatched_;         // tag → streams without a recv, FIFO
  std::map<uint64_t, std::deque<std::shared_ptr<Op>>> recvs_;  // tag → recvs without a stream, FIFO
  size_t unmatched_bytes_ = 0;
  std::thread writer_, reader_;
};

class StreamEndpoint final : public detail::CoreTransport<StreamCore> {
 public:
  explicit StreamEndpoint(std::shared_ptr<StreamCore> core) : CoreTransport(std::move(core)) {}
  Result<std::string> metadata() const override { return core_->metadata(); }
  Status connect(std::string_view peer_metadata) override { return core_->connect(peer_metadata); }
};

}  // namespace

std::unique_ptr<KvTransport> GrpcStreamTransport::create(Role role, std::unique_ptr<BytePipe> pipe,
                                                        const StreamOptions& opt) {
  KVB_ASSERT(pipe != nullptr, "GrpcStreamTransport needs a pipe");
  auto core = std::make_shared<StreamCore>(role, std::move(pipe), opt);
  core->start();
  return std::make_unique<StreamEndpoint>(std::move(core));
}

const TransportCaps& GrpcStreamTransport::capabilities() { return kCaps; }

}  // namespace kvb::transport
