// Internal to transport/: the bookkeeping every KvTransport implementation shares.
//
// An Op is one posted send or recv; a Core is one endpoint's state (registrations, live ops, the
// connection) behind one mutex. Implementations derive from Core and fill in the hooks; the
// generic parts — argument checks, tag bookkeeping, deadlines, cancellation, RAII release,
// abort — live here once, so that every transport reports the same codes at the same moments.
//
// The one invariant all of it serves: an Op becomes final (kDone/kError) only while it is not
// `busy`, i.e. while no transport thread and no device copy may touch its memory. Whoever sets
// busy clears it and then calls settle_locked(), which applies a failure that arrived meanwhile.
//
// Handles and Transfers hold a shared_ptr to their Core, so they may outlive the facade
// (the KvTransport object); the facade's destructor calls Core::shutdown() first.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "transport/kv_transport.h"

namespace kvb::transport::detail {

// The mutex and condition variable of one Core; two Cores may share one (the in-process pair).
struct Sync {
  std::mutex mu;
  std::condition_variable cv;
};

class Core;

struct Op {
  Core* core = nullptr;  // the endpoint that posted it (alive while the op is not final)
  TransferId id;
  uint64_t tag = 0;
  size_t bytes = 0;
  bool is_send = false;
  uint64_t reg_id = 0;
  size_t offset = 0;
  char* ptr = nullptr;  // region.ptr + offset (a device pointer for device regions)
  Clock::time_point deadline;
  void* ready_event = nullptr;

  // ---- guarded by the Core's mutex ----
  TransferState state = TransferState::kInProgress;
  Status status;            // the final status
  Status pending;           // the first failure asked for; applied as soon as the op is not busy
  bool busy = false;        // memory may be touched right now (a copy thread, the device, the peer)
  bool user_cancelled = false;
  void* native_event = nullptr;
  // Free for the implementation (stream id, copy token, queue stage, peer op).
  uint64_t token = 0;
  uint64_t sid = 0;
  uint64_t aux = 0;
  int stage = 0;
  std::shared_ptr<Op> peer;

  bool final() const { return state != TransferState::kInProgress; }
  std::string describe() const;  // "recv 4096 B tag 0x… (id …)"
};

struct Registration {
  KvRegion region;
  std::string exported;  // implementation data (cuda-ipc: the exported handle)
  bool offered = false;  // implementation data (cuda-ipc: the peer may have mapped it)
};

class Core : public std::enable_shared_from_this<Core> {
 public:
  Core(const TransportCaps& caps, Role role, Clock::duration default_timeout,
       std::shared_ptr<Sync> sync = std::make_shared<Sync>());
  virtual ~Core() = default;
  Core(const Core&) = delete;
  Core& operator=(const Core&) = delete;

  const TransportCaps& caps() const { return caps_; }
  Role role() const { return role_; }

  // ---- the facade's calls (they lock) ----
  Result<MemoryHandle> register_memory(const KvRegion& region);
  Result<Transfer> post(bool is_send, const MemoryHandle& mem, size_t offset, size_t bytes, uint64_t tag,
                        const PostOptions& opt);
  PollResult connection() const;
  // Fails everything with `reason`, makes later posts fail with it, waits until no op is busy.
  // Not from a transport thread (it waits for them).
  void abort(const Status& reason);

  // ---- the handles' and transfers' calls (they lock) ----
  PollResult poll(Op& op);
  void cancel(Op& op);
  PollResult wait(Op& op, Clock::time_point until);
  void release(Op& op);  // cancel if unfinished, then wait until final
  void deregister(uint64_t reg_id);
  void* native_event(const Op& op) const;

 protected:
  // ---- hooks; called with the mutex held unless stated otherwise ----
  // Extra checks of a region being registered (cuda-ipc exports it here).
  virtual Status check_region_locked(const KvRegion& /*region*/, Registration& /*reg*/) { return Status::Ok(); }
  // Extra checks of a post (direction, connection state).
  virtual Status check_post_locked(const Op& /*op*/) { return Status::Ok(); }
  // A new op, already live: queue it, match it, start it.
  virtual void on_post_locked(const std::shared_ptr<Op>& op) = 0;
  // `op` just got a pending failure (cancel, deadline, abort). Runs before the Core finishes a
  // non-busy op, so it can tell the peer or ask a thread to stop a busy one.
  virtual void on_fail_locked(Op& /*op*/) {}
  // `op` just became final: drop it from the implementation's queues.
  virtual void on_finish_locked(Op& /*op*/) {}
  // poll()/wait(): a cheap progress check (a device event query). May finish the op.
  virtual void refresh_locked(Op& /*op*/) {}
  // deregister(), after every op on the region ended and before it is forgotten. May wait on the
  // condition variable with `lock` (cuda-ipc waits for the peer to unmap the region).
  virtual void on_deregister(uint64_t /*reg_id*/, Registration& /*reg*/, std::unique_lock<std::mutex>& /*lock*/) {}
  // abort()/connection failure: everything is failing with `reason` (stop device work here).
  virtual void on_abort_locked(const Status& /*reason*/) {}

  // ---- helpers; mutex held ----
  // Records `st` as the op's failure (the first one wins) and finishes it unless it is busy.
  void fail_locked(Op& op, Status st);
  // Makes the op final with `st`. The op must not be busy.
  void finish_locked(Op& op, Status st);
  // After clearing op.busy: finishes the op with its pending failure, if any.
  void settle_locked(Op& op);
  // Fails the op (UNAVAILABLE) if its deadline passed; true when it did now.
  bool expire_locked(Op& op, Clock::time_point now);
  void expire_due_locked(Clock::time_point now);
  // Fails every live op with `reason`, records it as the abort reason and the connection error.
  // Does not wait.
  void fail_all_locked(const Status& reason);
  // The transport is being destroyed: fails every live op (CANCELLED "<name>: the transport was
  // destroyed", as fail_all_locked) and waits until none is live.
  void drain_locked(std::unique_lock<std::mutex>& lock);
  void set_connected_locked();
  // Waits on the condition variable (through `lock`) until pred() or `until`, re-checking at
  // least every poll_interval_ (device completions are not signalled). True when pred() held.
  bool wait_locked(std::unique_lock<std::mutex>& lock, const std::function<bool()>& pred,
                   Clock::time_point until = Clock::time_point::max());
  std::shared_ptr<Op> find_live_locked(const TransferId& id) const;
  Status timeout_status(const Op& op) const;

  std::mutex& mu() const { return sync_->mu; }
  std::condition_variable& cv() const { return sync_->cv; }

  const TransportCaps caps_;  // its name points to static storage
  const Role role_;
  const Clock::duration default_timeout_;
  Clock::duration poll_interval_ = std::chrono::milliseconds(20);
  std::shared_ptr<Sync> sync_;

  // ---- guarded by mu() ----
  std::map<uint64_t, Registration> regs_;
  uint64_t next_reg_id_ = 0;
  std::map<TransferId, std::shared_ptr<Op>> live_;   // ops in progress
  std::set<std::pair<bool, uint64_t>> tags_in_flight_;  // (is_send, tag) of live ops
  Status broken_;                                    // non-OK after abort / connection failure
  PollResult conn_;                                  // connection state
  bool connect_called_ = false;
};

// Shared code of the facades: forwards to a Core. `C` is the implementation's Core type; its
// close() fails what is in flight, says goodbye to the peer and stops the Core's threads.
template <class C>
class CoreTransport : public KvTransport {
 public:
  ~CoreTransport() override { core_->close(); }
  const TransportCaps& caps() const override { return core_->caps(); }
  Role role() const override { return core_->role(); }
  Result<MemoryHandle> register_memory(const KvRegion& region) override { return core_->register_memory(region); }
  PollResult connection() const override { return core_->connection(); }
  void abort(const Status& reason) override { core_->abort(reason); }

 protected:
  explicit CoreTransport(std::shared_ptr<C> core) : core_(std::move(core)) {}
  Result<Transfer> do_post(bool is_send, const MemoryHandle& mem, size_t offset, size_t bytes, uint64_t tag,
                           const PostOptions& opt) override {
    return core_->post(is_send, mem, offset, bytes, tag, opt);
  }

  std::shared_ptr<C> core_;
};

// Little-endian byte packing for metadata blobs and control frames.
class ByteWriter {
 public:
  void u8(uint8_t v) { out_.push_back(char(v)); }
  void u32(uint32_t v);
  void u64(uint64_t v);
  void str(std::string_view s);  // u32 length + bytes
  void raw(std::string_view s) { out_.append(s); }
  std::string& out() { return out_; }
  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

// Reads what ByteWriter wrote. A getter past the end (or a string over max_len) returns false,
// and so does every later one.
class ByteReader {
 public:
  explicit ByteReader(std::string_view in) : in_(in) {}
  bool u8(uint8_t& v);
  bool u32(uint32_t& v);
  bool u64(uint64_t& v);
  bool str(std::string& s, size_t max_len = 1 << 20);
  bool raw(size_t n, std::string_view& s);  // a view into the input
  std::string_view rest() const { return in_.substr(pos_); }
  // Everything was read, and nothing failed.
  bool done() const { return !failed_ && pos_ == in_.size(); }
  bool failed() const { return failed_; }

 private:
  bool take(size_t n, std::string_view& s);

  std::string_view in_;
  size_t pos_ = 0;
  bool failed_ = false;
};

}  // namespace kvb::transport::detail
