#include "transport/ipc_engine.h"

#include <fmt/format.h>

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "transport/metadata.h"
#include "transport/transfer_core.h"

namespace kvb::transport {

namespace {

using detail::Op;

constexpr uint8_t kOffer = 1, kDone = 2, kRevoke = 3, kUnmap = 4, kUnmapped = 5, kBye = 6;
constexpr int kWaitingReady = 1, kOffered = 2, kCopying = 3;  // Op::stage

Status peer_status(uint32_t code, const std::string& message) {
  const StatusCode c = code >= 1 && code <= 16 ? StatusCode(code) : StatusCode::kUnknown;
  return Status(c, "peer: " + message);
}

// An offer the receiver has not matched yet (or the notice of a send that ended unread).
struct Offer {
  uint64_t sid = 0, tag = 0, reg_id = 0, reg_bytes = 0, offset = 0, bytes = 0;
  std::string handle;
  Status failed;  // revoked before it matched
};

// The receiver's mapping of one of the sharer's regions.
struct Mapping {
  void* base = nullptr;
  int inflight = 0;      // copies reading it
  bool closing = false;  // UNMAP received (or shutting down): close once idle
};

class IpcCore final : public detail::Core {
 public:
  IpcCore(Role role, std::unique_ptr<IpcDeviceOps> ops, std::unique_ptr<BytePipe> pipe, const IpcOptions& opt)
      : Core(ops->caps(), role, opt.timeout), ops_(std::move(ops)), pipe_(std::move(pipe)), opt_(opt) {
    poll_interval_ = std::chrono::milliseconds(1);
  }

  void start() {
    writer_ = std::thread([this] { write_loop(); });
    reader_ = std::thread([this] { read_loop(); });
  }

  std::string metadata() const {
    Envelope e;
    e.transport = caps_.name;
    e.role = role_;
    e.endpoint = endpoint_;
    e.process = process_nonce();
    e.host_id = local_host_id();
    return encode_envelope(e);
  }

  Status connect(std::string_view peer_metadata) {
    KVB_ASSIGN_OR_RETURN(const Envelope e, decode_peer_envelope(peer_metadata, caps_.name, role_));
    if (e.host_id.empty() || e.host_id != local_host_id()) {
      return failed_precondition(fmt::format("{}: the peer is on another host ({} vs {})", caps_.name, e.host_id,
                                             local_host_id()));
    }
    std::lock_guard<std::mutex> lock(mu());
    if (!broken_.ok()) return broken_;
    if (connect_called_) return failed_precondition(fmt::format("{}: connect() was already called", caps_.name));
    connect_called_ = true;
    set_connected_locked();
    if (role_ == Role::kReceiver) match_all_locked();
    cv().notify_all();
    return Status::Ok();
  }

  void close() {
    {
      std::unique_lock<std::mutex> lock(mu());
      closing_ = true;
      drain_locked(lock);
      const Clock::time_point until = Clock::now() + opt_.release_timeout;
      if (role_ == Role::kSharer) {
        // The receiver unmaps everything before this side may let the memory go.
        std::set<uint64_t> asked;
        for (auto& [id, reg] : regs_) {
          if (reg.offered && !peer_gone_) {
            send_locked(unmap_msg(kUnmap, id));
            asked.insert(id);
            reg.offered = false;
          }
        }
        wait_locked(lock, [&] {
          return peer_gone_ || std::all_of(asked.begin(), asked.end(), [&](uint64_t id) { return unmapped_.count(id) > 0; });
        }, until);
        if (!bye_sent_) send_locked(bye_msg("the transport was destroyed"));
        bye_sent_ = true;
      } else {
        wait_locked(lock, [&] { return mappings_.empty() && !bye_pending_; }, until);
      }
      stop_ = true;
      cv().notify_all();
    }
    if (writer_.joinable()) writer_.join();  // after flushing the outbox, briefly
    pipe_->close();
    if (reader_.joinable()) reader_.join();
    std::lock_guard<std::mutex> lock(mu());
    for (auto& [id, m] : mappings_) {
      if (m.base) (void)ops_->close(m.base);  // only after a timeout: copies are over (no live op)
    }
    mappings_.clear();
  }

 protected:
  Status check_region_locked(const KvRegion& region, detail::Registration& reg) override {
    if (role_ != Role::kSharer) return Status::Ok();
    KVB_ASSIGN_OR_RETURN(reg.exported, ops_->export_region(region));
    return Status::Ok();
  }

  void on_post_locked(const std::shared_ptr<Op>& op) override {
    if (role_ == Role::kSharer) {
      op->sid = ++next_sid_;
      op->stage = kWaitingReady;
      waiting_.push_back(op);
      cv().notify_all();
      return;
    }
    if (!connect_called_ || !match_recv_locked(op)) recvs_[op->tag].push_back(op);
  }

  void on_fail_locked(Op& op) override {
    if (role_ == Role::kSharer && (op.stage == kWaitingReady || op.stage == kOffered)) {
      // The receiver must not wait for it, nor keep reading for it.
      send_locked(revoke_msg(op.sid, op.tag, op.pending));
    }
    // Receiver: a copy in flight cannot be stopped; the sweep finishes the op when it is over.
  }

  void on_finish_locked(Op& op) override {
    if (role_ == Role::kSharer) {
      std::erase_if(waiting_, [&](const std::shared_ptr<Op>& o) { return o.get() == &op; });
      offered_.erase(op.sid);
      return;
    }
    const auto q = recvs_.find(op.tag);
    if (q == recvs_.end()) return;
    if (std::erase_if(q->second, [&](const std::shared_ptr<Op>& o) { return o.get() == &op; }) && q->second.empty()) {
      recvs_.erase(q);
    }
  }

  void refresh_locked(Op& op) override {
    if (role_ == Role::kReceiver && op.stage == kCopying && op.busy) check_copy_locked(op);
  }

  void on_deregister(uint64_t reg_id, detail::Registration& reg, std::unique_lock<std::mutex>& lock) override {
    if (role_ != Role::kSharer || !reg.offered || peer_gone_ || stop_) return;
    send_locked(unmap_msg(kUnmap, reg_id));
    wait_locked(lock, [&] { return unmapped_.count(reg_id) > 0 || peer_gone_; },
                Clock::now() + opt_.release_timeout);
    unmapped_.erase(reg_id);
  }

  void on_abort_locked(const Status& reason) override {
    if (role_ == Role::kSharer) {
      if (!closing_ && !bye_sent_) {
        bye_sent_ = true;
        send_locked(bye_msg(reason.message()));
      }
      return;
    }
    // The receiver closes its mappings (once their copies are over), then says goodbye.
    for (auto& [id, m] : mappings_) m.closing = true;
    bye_pending_ = !peer_gone_ && !bye_sent_ && !pipe_dead_;
    bye_reason_ = reason.message();
    cv().notify_all();
  }

 private:
  // ---- messages ----
  static std::string unmap_msg(uint8_t kind, uint64_t reg_id) {
    detail::ByteWriter w;
    w.u8(kind);
    w.u64(reg_id);
    return w.take();
  }
  static std::string bye_msg(std::string_view reason) {
    detail::ByteWriter w;
    w.u8(kBye);
    w.str(reason);
    return w.take();
  }
  static std::string revoke_msg(uint64_t sid, uint64_t tag, const Status& why) {
    detail::ByteWriter w;
    w.u8(kRevoke);
    w.u64(sid);
    w.u64(tag);
    w.u32(uint32_t(why.code()));
    w.str(why.message());
    return w.take();
  }
  static std::string done_msg(uint64_t sid, const Status& st) {
    detail::ByteWriter w;
    w.u8(kDone);
    w.u64(sid);
    w.u32(uint32_t(st.code()));
    w.str(st.message());
    return w.take();
  }
  void send_locked(std::string msg) {
    if (pipe_dead_) return;
    outbox_.push_back(std::move(msg));
    cv().notify_all();
  }

  // ---- sharer ----

  void offer_locked(const std::shared_ptr<Op>& op) {
    detail::Registration& reg = regs_.at(op->reg_id);
    detail::ByteWriter w;
    w.u8(kOffer);
    w.u64(op->sid);
    w.u64(op->tag);
    w.u64(op->reg_id);
    w.u64(reg.region.bytes);
    w.u64(op->offset);
    w.u64(op->bytes);
    w.str(reg.exported);
    send_locked(w.take());
    reg.offered = true;
    op->stage = kOffered;
    offered_[op->sid] = op;
  }

  // Offers the sends whose bytes are ready. True while some wait for their event.
  bool sweep_sends_locked() {
    if (!connect_called_ || !broken_.ok()) return false;
    bool waiting = false;
    std::vector<std::shared_ptr<Op>> ready;
    std::vector<std::pair<std::shared_ptr<Op>, Status>> failed;
    for (const auto& op : waiting_) {
      if (op->ready_event) {
        const Result<bool> r = ops_->event_ready(op->ready_event);
        if (!r.ok()) {
          failed.emplace_back(op, r.status());
          continue;
        }
        if (!*r) {
          waiting = true;
          continue;
        }
      }
      ready.push_back(op);
    }
    for (auto& [op, st] : failed) fail_locked(*op, st.with_context(fmt::format("{}: the ready event", caps_.name)));
    for (const auto& op : ready) {
      if (op->final()) continue;
      std::erase(waiting_, op);
      offer_locked(op);
    }
    return waiting;
  }

  void on_done_locked(uint64_t sid, const Status& st) {
    const auto it = offered_.find(sid);
    if (it == offered_.end()) return;  // revoked meanwhile
    const std::shared_ptr<Op> op = it->second;
    offered_.erase(it);
    op->stage = 0;  // the receiver is done with it: nothing to revoke
    if (st.ok()) {
      finish_locked(*op, Status::Ok());
    } else {
      fail_locked(*op, st);
    }
  }

  // ---- receiver ----

  bool match_recv_locked(const std::shared_ptr<Op>& op) {
    const auto q = offers_.find(op->tag);
    if (q == offers_.end()) return false;
    Offer o = std::move(q->second.front());
    q->second.pop_front();
    if (q->second.empty()) offers_.erase(q);
    start_copy_locked(op, o);
    return true;
  }

  bool match_offer_locked(Offer& o) {
    const auto q = recvs_.find(o.tag);
    if (q == recvs_.end()) return false;
    std::shared_ptr<Op> op = q->second.front();
    q->second.pop_front();
    if (q->second.empty()) recvs_.erase(q);
    start_copy_locked(op, o);
    return true;
  }

  void match_all_locked() {
    for (auto it = recvs_.begin(); it != recvs_.end();) {
      std::deque<std::shared_ptr<Op>>& q = it->second;
      while (!q.empty() && offers_.count(it->first)) {
        std::shared_ptr<Op> op = q.front();
        q.pop_front();
        match_recv_locked(op);
      }
      it = q.empty() ? recvs_.erase(it) : std::next(it);
    }
  }

  void refuse_locked(Op& op, const Offer& o, const Status& st) {
    send_locked(done_msg(o.sid, st));
    fail_locked(op, st);
  }

  void start_copy_locked(const std::shared_ptr<Op>& op, const Offer& o) {
    op->sid = o.sid;
    if (!o.failed.ok()) return fail_locked(*op, o.failed);
    if (o.bytes != op->bytes) {
      return refuse_locked(*op, o, invalid_argument(fmt::format("{}: tag {:#x}: the sharer offers {} bytes, the recv has {}",
                                                                caps_.name, o.tag, o.bytes, op->bytes)));
    }
    if (o.offset > o.reg_bytes || o.bytes > o.reg_bytes - o.offset) {
      return refuse_locked(*op, o, invalid_argument(fmt::format("{}: tag {:#x}: the offer lies outside its region",
                                                                caps_.name, o.tag)));
    }
    Mapping& m = mappings_[o.reg_id];
    if (m.closing) {
      return refuse_locked(*op, o, cancelled(fmt::format("{}: the sharer is releasing that region", caps_.name)));
    }
    if (!m.base) {
      Result<void*> base = ops_->open(o.handle);
      if (!base.ok()) {
        mappings_.erase(o.reg_id);
        return refuse_locked(*op, o, base.status().with_context(fmt::format("{}: opening the sharer's region", caps_.name)));
      }
      m.base = *base;
    }
    Result<uint64_t> token = ops_->copy_async(op->ptr, static_cast<const char*>(m.base) + o.offset, o.bytes);
    if (!token.ok()) return refuse_locked(*op, o, token.status().with_context(caps_.name));
    ++m.inflight;
    op->aux = o.reg_id;
    op->token = *token;
    op->busy = true;
    op->stage = kCopying;
    op->native_event = ops_->copy_event(*token);
    copying_.push_back(op);
    cv().notify_all();
  }

  // Finishes a copy whose event fired (or failed); answers DONE.
  void check_copy_locked(Op& op) {
    const Result<bool> r = ops_->copy_done(op.token);
    if (r.ok() && !*r) return;
    op.busy = false;
    ops_->release_copy(op.token);
    op.native_event = nullptr;
    op.stage = 0;
    std::erase_if(copying_, [&](const std::shared_ptr<Op>& o) { return o.get() == &op; });
    const auto m = mappings_.find(op.aux);
    if (m != mappings_.end()) --m->second.inflight;
    Status st = r.ok() ? Status::Ok() : r.status().with_context(fmt::format("{}: the copy failed", caps_.name));
    if (st.ok() && !op.pending.ok()) st = op.pending;
    send_locked(done_msg(op.sid, st));
    if (st.ok()) {
      finish_locked(op, Status::Ok());
    } else if (op.pending.ok()) {
      fail_locked(op, st);
    } else {
      settle_locked(op);
    }
  }

  // Copies done, idle mappings closed. True while copies are in flight.
  bool sweep_receiver_locked() {
    std::vector<std::shared_ptr<Op>> copies(copying_.begin(), copying_.end());
    for (const auto& op : copies) check_copy_locked(*op);
    for (auto it = mappings_.begin(); it != mappings_.end();) {
      if (it->second.closing && it->second.inflight == 0) {
        if (it->second.base) (void)ops_->close(it->second.base);
        if (!peer_gone_) send_locked(unmap_msg(kUnmapped, it->first));
        it = mappings_.erase(it);
      } else {
        ++it;
      }
    }
    if (bye_pending_ && mappings_.empty()) {
      bye_pending_ = false;
      bye_sent_ = true;
      send_locked(bye_msg(bye_reason_));
    }
    return !copying_.empty();
  }

  void on_revoke_locked(uint64_t sid, uint64_t tag, const Status& st) {
    for (auto& [t, q] : offers_) {
      for (Offer& o : q) {
        if (o.sid == sid) {
          o.failed = st;
          return;
        }
      }
    }
    for (const auto& op : copying_) {
      if (op->sid == sid) return fail_locked(*op, st);  // ends when its copy is over
    }
    if (seen_sids_.count(sid)) return;  // already read (its DONE crossed this REVOKE)
    // Never offered: a notice for the next recv of that tag.
    Offer o;
    o.sid = sid;
    o.tag = tag;
    o.failed = st;
    if (!connect_called_ || !match_offer_locked(o)) offers_[tag].push_back(std::move(o));
  }

  void on_unmap_locked(uint64_t reg_id) {
    for (auto& [t, q] : offers_) {
      for (Offer& o : q) {
        if (o.reg_id == reg_id && o.failed.ok()) {
          o.failed = cancelled(fmt::format("{}: peer: the region was released", caps_.name));
        }
      }
    }
    const auto m = mappings_.find(reg_id);
    if (m == mappings_.end()) {
      send_locked(unmap_msg(kUnmapped, reg_id));
      return;
    }
    m->second.closing = true;
    cv().notify_all();
  }

  // ---- both ----

  void protocol_error_locked(const std::string& what) {
    fail_all_locked(invalid_argument(fmt::format("{}: a malformed control message from the peer: {}", caps_.name, what)));
  }

  void handle_locked(std::string_view msg) {
    detail::ByteReader r(msg);
    uint8_t kind = 0;
    if (!r.u8(kind)) return protocol_error_locked("an empty message");
    const bool sharer = role_ == Role::kSharer;
    switch (kind) {
      case kOffer: {
        Offer o;
        if (sharer || !r.u64(o.sid) || !r.u64(o.tag) || !r.u64(o.reg_id) || !r.u64(o.reg_bytes) || !r.u64(o.offset) ||
            !r.u64(o.bytes) || !r.str(o.handle, 4096) || !r.done()) {
          return protocol_error_locked("OFFER");
        }
        seen_sids_.insert(o.sid);
        if (!connect_called_ || !match_offer_locked(o)) offers_[o.tag].push_back(std::move(o));
        return;
      }
      case kDone:
      case kRevoke: {
        uint64_t sid = 0, tag = 0;
        uint32_t code = 0;
        std::string message;
        if (sharer != (kind == kDone) || !r.u64(sid) || (kind == kRevoke && !r.u64(tag)) || !r.u32(code) ||
            !r.str(message, 4096) || !r.done()) {
          return protocol_error_locked(kind == kDone ? "DONE" : "REVOKE");
        }
        const Status st = code == 0 ? Status::Ok() : peer_status(code, message);
        if (kind == kDone) return on_done_locked(sid, st);
        return on_revoke_locked(sid, tag, st.ok() ? cancelled("peer: revoked") : st);
      }
      case kUnmap:
      case kUnmapped: {
        uint64_t reg_id = 0;
        if (sharer != (kind == kUnmapped) || !r.u64(reg_id) || !r.done()) return protocol_error_locked("UNMAP(PED)");
        if (kind == kUnmap) return on_unmap_locked(reg_id);
        unmapped_.insert(reg_id);
        cv().notify_all();
        return;
      }
      case kBye: {
        std::string reason;
        if (!r.str(reason, 4096)) reason = "(no reason)";
        peer_gone_ = true;
        fail_all_locked(unavailable(fmt::format("{}: the peer closed the transport: {}", caps_.name, reason)));
        cv().notify_all();
        return;
      }
      default:
        return protocol_error_locked(fmt::format("unknown message kind {}", kind));
    }
  }

  void pipe_broken_locked(const Status& st) {
    pipe_dead_ = true;  // nothing more goes out
    outbox_.clear();
    peer_gone_ = true;
    fail_all_locked(unavailable(fmt::format("{}: the control stream broke: {}", caps_.name, st.message())));
    cv().notify_all();
  }

  void read_loop() {
    for (;;) {
      auto m = pipe_->recv(Clock::now() + std::chrono::milliseconds(20));
      std::lock_guard<std::mutex> lock(mu());
      if (stop_) return;
      if (!m.ok()) {
        pipe_broken_locked(m.status());
        return;
      }
      if (*m) handle_locked(**m);
    }
  }

  // The writer: the outbox, then the sweeps (ready events, copy completions, deadlines).
  void write_loop() {
    std::unique_lock<std::mutex> lock(mu());
    for (;;) {
      expire_due_locked(Clock::now());
      if (!outbox_.empty()) {
        const std::string msg = std::move(outbox_.front());
        outbox_.pop_front();
        const auto budget = stop_ ? std::chrono::milliseconds(100) : std::chrono::milliseconds(1000);
        lock.unlock();
        const Status st = pipe_->send(msg, Clock::now() + budget);
        lock.lock();
        if (!st.ok() && stop_) outbox_.clear();
        if (st.code() == StatusCode::kUnavailable) pipe_broken_locked(st);
        continue;
      }
      if (stop_) return;
      const bool active = role_ == Role::kSharer ? sweep_sends_locked() : sweep_receiver_locked();
      if (!outbox_.empty()) continue;
      cv().wait_for(lock, active ? std::chrono::microseconds(50) : std::chrono::microseconds(20000));
    }
  }

  std::unique_ptr<IpcDeviceOps> ops_;
  std::unique_ptr<BytePipe> pipe_;
  const IpcOptions opt_;
  const TransferId endpoint_ = TransferId::generate();
  std::thread writer_, reader_;

  // ---- guarded by mu() ----
  bool stop_ = false, closing_ = false, peer_gone_ = false;
  bool pipe_dead_ = false;  // the pipe failed: nothing more is written
  bool bye_sent_ = false;
  std::deque<std::string> outbox_;
  // sharer
  uint64_t next_sid_ = 0;
  std::deque<std::shared_ptr<Op>> waiting_;             // posted, not offered yet (ready event, connect)
  std::map<uint64_t, std::shared_ptr<Op>> offered_;     // sid → offered, awaiting DONE
  std::set<uint64_t> unmapped_;                         // UNMAPPED acks not consumed yet
  // receiver
  std::map<uint64_t, std::deque<Offer>> offers_;               // tag → unmatched offers, FIFO
  std::map<uint64_t, std::deque<std::shared_ptr<Op>>> recvs_;  // tag → unmatched recvs, FIFO
  std::deque<std::shared_ptr<Op>> copying_;
  std::map<uint64_t, Mapping> mappings_;                       // the sharer's region id → mapping
  std::set<uint64_t> seen_sids_;                               // offers received (one pull: small)
  bool bye_pending_ = false;
  std::string bye_reason_;
};

class IpcEndpoint final : public detail::CoreTransport<IpcCore> {
 public:
  explicit IpcEndpoint(std::shared_ptr<IpcCore> core) : CoreTransport(std::move(core)) {}
  Result<std::string> metadata() const override { return core_->metadata(); }
  Status connect(std::string_view peer_metadata) override { return core_->connect(peer_metadata); }
};

}  // namespace

std::unique_ptr<KvTransport> make_ipc_transport(Role role, std::unique_ptr<IpcDeviceOps> ops,
                                                std::unique_ptr<BytePipe> control, const IpcOptions& opt) {
  KVB_ASSERT(ops != nullptr && control != nullptr, "make_ipc_transport needs ops and a control pipe");
  auto core = std::make_shared<IpcCore>(role, std::move(ops), std::move(control), opt);
  core->start();
  return std::make_unique<IpcEndpoint>(std::move(core));
}

}  // namespace kvb::transport
