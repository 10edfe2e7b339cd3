#include "transport/in_process_transport.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <map>
#include <thread>
#include <utility>

#include "transport/metadata.h"
#include "transport/transfer_core.h"

namespace kvb::transport {

namespace {

using detail::Op;

const TransportCaps kCaps = [] {
  TransportCaps c;
  c.name = "in-process";
  c.host_memory = true;
  c.same_node_only = true;
  return c;
}();

class InProcessCore;

// What both endpoints of a pair share, guarded by sync->mu.
struct Link {
  std::shared_ptr<detail::Sync> sync = std::make_shared<detail::Sync>();
  InProcessOptions opt;
  TransferId pair_id = TransferId::generate();
  InProcessCore* side[2] = {nullptr, nullptr};  // [sharer, receiver]; null once closed
  int open = 2;
  bool stop = false;
  std::deque<std::pair<std::shared_ptr<Op>, std::shared_ptr<Op>>> ready;  // matched (send, recv)
  std::thread worker;
};

Status peer_failure(const Status& st) { return Status(st.code(), "peer: " + st.message()); }

// A queued send, or the notice a cancelled send left in its place.
struct Offer {
  std::shared_ptr<Op> op;
  Status notice;
};

class InProcessCore final : public detail::Core {
 public:
  InProcessCore(std::shared_ptr<Link> link, int side)
      : Core(kCaps, side == 0 ? Role::kSharer : Role::kReceiver, link->opt.timeout, link->sync),
        link_(std::move(link)),
        side_(side) {}

  ~InProcessCore() override {
    std::lock_guard<std::mutex> lock(mu());
    if (link_->side[side_] == this) link_->side[side_] = nullptr;
  }

  void attach() {
    std::lock_guard<std::mutex> lock(mu());
    link_->side[side_] = this;
  }

  std::string metadata() const {
    Envelope e;
    e.transport = kCaps.name;
    e.role = role_;
    e.endpoint = endpoint_;
    e.process = process_nonce();
    e.host_id = local_host_id();
    detail::ByteWriter w;
    w.u64(link_->pair_id.hi);
    w.u64(link_->pair_id.lo);
    e.body = w.take();
    return encode_envelope(e);
  }

  Status connect(std::string_view peer_metadata) {
    KVB_ASSIGN_OR_RETURN(const Envelope e, decode_peer_envelope(peer_metadata, kCaps.name, role_));
    detail::ByteReader r(e.body);
    TransferId pair;
    if (!r.u64(pair.hi) || !r.u64(pair.lo) || !r.done()) {
      return invalid_argument("in-process: the peer's metadata body is malformed");
    }
    std::lock_guard<std::mutex> lock(mu());
    if (!broken_.ok()) return broken_;
    if (connect_called_) return failed_precondition("in-process: connect() was already called");
    if (pair != link_->pair_id) {
      return failed_precondition("in-process: the peer is not the other endpoint of this pair");
    }
    connect_called_ = true;
    set_connected_locked();
    if (InProcessCore* p = peer_locked(); p && p->connect_called_) {
      match_all_locked(*this, *p);
      match_all_locked(*p, *this);
    }
    return Status::Ok();
  }

  // The facade is going away: fail what is in flight, tell the peer, stop the thread when last.
  void close() {
    std::thread worker;
    {
      std::unique_lock<std::mutex> lock(mu());
      // Fails the peer too (on_abort_locked): UNAVAILABLE, the dead-peer case.
      drain_locked(lock);
      link_->side[side_] = nullptr;
      if (--link_->open == 0) {
        link_->stop = true;
        cv().notify_all();
        worker = std::move(link_->worker);
      }
    }
    if (worker.joinable()) worker.join();
  }

  // The pair's copy thread.
  static void run(std::shared_ptr<Link> link) {
    std::unique_lock<std::mutex> lock(link->sync->mu);
    for (;;) {
      const Clock::time_point now = Clock::now();
      for (InProcessCore* c : link->side) {
        if (c) c->expire_due_locked(now);
      }
      if (link->ready.empty()) {
        if (link->stop) return;
        link->sync->cv.wait_for(lock, std::chrono::milliseconds(10));
        continue;
      }
      auto [s, r] = std::move(link->ready.front());
      link->ready.pop_front();
      copy_locked(*link, lock, *s, *r);
    }
  }

 protected:
  void on_post_locked(const std::shared_ptr<Op>& op) override {
    InProcessCore* p = peer_locked();
    const bool matching = connect_called_ && p && p->connect_called_;
    if (op->is_send) {
      if (matching && match_send_locked(op, *p)) return;
      sends_[op->tag].push_back({op, Status::Ok()});
    } else {
      if (matching && match_recv_locked(op, *p)) return;
      recvs_[op->tag].push_back(op);
    }
  }

  void on_fail_locked(Op& op) override {
    // A send cancelled before it matched: its recv learns it (FIFO per tag).
    if (!op.is_send || op.peer || !op.user_cancelled) return;
    auto q = sends_.find(op.tag);
    if (q == sends_.end()) return;
    for (Offer& o : q->second) {
      if (o.op.get() == &op) {
        o.op.reset();
        o.notice = cancelled(fmt::format("in-process: the peer cancelled its send of tag {:#x}", op.tag));
      }
    }
  }

  void on_finish_locked(Op& op) override {
    op.peer.reset();  // breaks the send ↔ recv cycle
    if (op.is_send) {
      auto q = sends_.find(op.tag);
      if (q == sends_.end()) return;
      if (std::erase_if(q->second, [&](const Offer& o) { return o.op.get() == &op; }) && q->second.empty()) {
        sends_.erase(q);
      }
    } else {
      auto q = recvs_.find(op.tag);
      if (q == recvs_.end()) return;
      if (std::erase_if(q->second, [&](const std::shared_ptr<Op>& o) { return o.get() == &op; }) &&
          q->second.empty()) {
        recvs_.erase(q);
      }
    }
  }

  void on_abort_locked(const Status& reason) override {
    InProcessCore* p = peer_locked();
    if (p && p->broken_.ok()) p->fail_all_locked(unavailable("in-process: the peer endpoint ended: " + reason.message()));
  }

 private:
  InProcessCore* peer_locked() const { return link_->side[1 - side_]; }

  static InProcessCore& core_of(const Op& op) { return *static_cast<InProcessCore*>(op.core); }

  // Matches a send of this endpoint against the peer's queued recvs.
  bool match_send_locked(const std::shared_ptr<Op>& s, InProcessCore& peer) {
    auto q = peer.recvs_.find(s->tag);
    if (q == peer.recvs_.end() || q->second.empty()) return false;
    std::shared_ptr<Op> r = q->second.front();
    q->second.pop_front();
    if (q->second.empty()) peer.recvs_.erase(q);
    bind_locked(s, r);
    return true;
  }

  // Matches a recv of this endpoint against the peer's queued sends (and cancel notices).
  bool match_recv_locked(const std::shared_ptr<Op>& r, InProcessCore& peer) {
    auto q = peer.sends_.find(r->tag);
    if (q == peer.sends_.end() || q->second.empty()) return false;
    Offer o = std::move(q->second.front());
    q->second.pop_front();
    if (q->second.empty()) peer.sends_.erase(q);
    if (!o.op) {
      fail_locked(*r, o.notice);
    } else {
      bind_locked(o.op, r);
    }
    return true;
  }

  // Once both endpoints are connected: matches what was queued before, head to head per tag.
  static void match_all_locked(InProcessCore& senders, InProcessCore& receivers) {
    for (auto it = receivers.recvs_.begin(); it != receivers.recvs_.end();) {
      std::deque<std::shared_ptr<Op>>& q = it->second;
      while (!q.empty()) {
        std::shared_ptr<Op> r = q.front();
        q.pop_front();
        if (!receivers.match_recv_locked(r, senders)) {
          q.push_front(std::move(r));
          break;
        }
      }
      it = q.empty() ? receivers.recvs_.erase(it) : std::next(it);
    }
  }

  void bind_locked(const std::shared_ptr<Op>& s, const std::shared_ptr<Op>& r) {
    s->peer = r;
    r->peer = s;
    link_->ready.emplace_back(s, r);
    cv().notify_all();
  }

  // Ends a pair where one side failed: the other fails with the same code, "peer: …".
  static void resolve_locked(Op& s, Op& r) {
    for (Op* a : {&s, &r}) {
      Op* b = a == &s ? &r : &s;
      if (b->final() || !b->pending.ok()) continue;
      const Status& why = a->final() ? a->status : a->pending;
      if (!why.ok()) core_of(*b).fail_locked(*b, peer_failure(why));
    }
    for (Op* a : {&s, &r}) {
      if (!a->final()) core_of(*a).settle_locked(*a);
    }
  }

  static void copy_locked(Link& link, std::unique_lock<std::mutex>& lock, Op& s, Op& r) {
    if (s.final() || r.final() || !s.pending.ok() || !r.pending.ok()) return resolve_locked(s, r);
    if (s.bytes != r.bytes) {
      const Status st = invalid_argument(
          fmt::format("in-process: tag {:#x}: the send has {} bytes, the recv {}", s.tag, s.bytes, r.bytes));
      core_of(s).fail_locked(s, st);
      core_of(r).fail_locked(r, st);
      return;
    }
    s.busy = r.busy = true;
    const size_t chunk = std::max<size_t>(1, link.opt.copy_chunk);
    const TransferId sid = s.id;
    size_t copied = 0;
    while (copied < s.bytes) {
      const size_t n = std::min(chunk, s.bytes - copied);
      lock.unlock();
      std::memcpy(r.ptr + copied, s.ptr + copied, n);
      copied += n;
      if (link.opt.on_chunk) link.opt.on_chunk(sid, copied);
      if (link.opt.chunk_delay.count() > 0) std::this_thread::sleep_for(link.opt.chunk_delay);
      lock.lock();
      const Clock::time_point now = Clock::now();
      core_of(s).expire_locked(s, now);
      core_of(r).expire_locked(r, now);
      if (!s.pending.ok() || !r.pending.ok()) break;
    }
    s.busy = r.busy = false;
    if (s.pending.ok() && r.pending.ok()) {
      core_of(s).finish_locked(s, Status::Ok());
      core_of(r).finish_locked(r, Status::Ok());
    } else {
      resolve_locked(s, r);
    }
  }

  std::shared_ptr<Link> link_;
  const int side_;
  const TransferId endpoint_ = TransferId::generate();
  std::map<uint64_t, std::deque<Offer>> sends_;                // unmatched sends, FIFO per tag
  std::map<uint64_t, std::deque<std::shared_ptr<Op>>> recvs_;  // unmatched recvs, FIFO per tag
};

class InProcessEndpoint final : public detail::CoreTransport<InProcessCore> {
 public:
  explicit InProcessEndpoint(std::shared_ptr<InProcessCore> core) : CoreTransport(std::move(core)) {}
  Result<std::string> metadata() const override { return core_->metadata(); }
  Status connect(std::string_view peer_metadata) override { return core_->connect(peer_metadata); }
};

}  // namespace

InProcessTransport::Pair InProcessTransport::create_pair(const InProcessOptions& opt) {
  auto link = std::make_shared<Link>();
  link->opt = opt;
  auto a = std::make_shared<InProcessCore>(link, 0);
  auto b = std::make_shared<InProcessCore>(link, 1);
  a->attach();
  b->attach();
  link->worker = std::thread(&InProcessCore::run, link);
  Pair p;
  p.sharer = std::make_unique<InProcessEndpoint>(std::move(a));
  p.receiver = std::make_unique<InProcessEndpoint>(std::move(b));
  return p;
}

const TransportCaps& InProcessTransport::capabilities() { return kCaps; }

}  // namespace kvb::transport
