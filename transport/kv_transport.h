// KvTransport: moves the slices of a KV cache from a sharer to a receiver (STYLE R9).
//
// A transport moves bytes between registered memory regions of two endpoints; it knows nothing
// about layers or dtypes. The KV meaning lives in the tags and byte ranges both sides compute the
// same way (transport/kv_slices.h: one (layer, K|V, token range) slice per transfer), and the
// model identity and layout checks happen before any transfer, in the agents' negotiation (the
// KvWireHeader travels over gRPC, as today).
//
// Life of a transfer, the same for every implementation (NIXL's register → metadata → post → poll
// → release, with RAII instead of release calls):
//
//   sharer                                       receiver
//   ------                                       --------
//   t = NcclTransport::create(kSharer, …)        t = NcclTransport::create(kReceiver, …)
//   h = t->register_memory(cache region)         h = t->register_memory(cache region)
//   md = t->metadata()          ── out of band (gRPC) ──►   t->connect(md_sharer)
//   t->connect(md_receiver)     ◄── out of band (gRPC) ──   md = t->metadata()
//   x = t->post_send(h, off, n, tag)             y = t->post_recv(h, off, n, tag)
//   x.poll() … kDone                             y.poll() … kDone  → the bytes are there
//   (x, h, t destroyed: RAII)                    (y, h, t destroyed: RAII)
//
// Matching: a send and a recv with the same tag are one transfer; their sizes must be equal
// (INVALID_ARGUMENT on both sides otherwise, or — NCCL, which cannot check — a hang that ends at
// the deadline). Tags are scoped to one pair of endpoints (one pull), so they never collide
// across requests. caps().any_order tells whether posts may be made in any order (tags matched
// by value) or must be made in the same order on both sides (NCCL: both endpoints post the same
// (tag, bytes) sequence; kv_slices.h gives that order). One tag may be in flight at most once per
// endpoint and direction (ALREADY_EXISTS); it may be reused once the previous transfer ended.
//
// Completion: poll() is non-blocking and thread-safe; it reports kInProgress, kDone or kError
// with a Status. kDone and kError are final, and are only reported once the transport no longer
// touches the transfer's memory (a send: its bytes were handed on — copied into the stream,
// read by the peer's copy engine; a recv: every byte landed). One exception, one-sided reads
// (cuda-ipc): a send that ends early (cancel, deadline) may still be read by the peer's copy
// engine — whose recv then fails — until the region's MemoryHandle is destroyed, which waits for
// the peer to unmap it. Errors:
//   UNAVAILABLE        the deadline passed (the peer did not post, died, or hung), the peer went
//                      away, or the connection broke (NCCL: the communicator was aborted)
//   CANCELLED          cancel() (or the Transfer destroyed in flight); "by the peer" when the
//                      peer cancelled its side
//   ABORTED            collateral of another transfer's cancel on a transport that cannot cancel
//                      one transfer alone (NCCL aborts the whole communicator)
//   INVALID_ARGUMENT   the two sides' sizes differ
//   others             as the implementation's runtime reports them (INTERNAL for CUDA errors)
//
// Ownership (STYLE R8): MemoryHandle and Transfer are move-only RAII owners.
//   - A region must stay valid until its MemoryHandle is destroyed. Destroying a handle cancels
//     every transfer still using it and returns once nothing touches the region any more
//     (cuda-ipc: once the peer unmapped it, or gave up after a timeout).
//   - Destroying a Transfer in flight cancels it and returns once the transport no longer touches
//     its memory. It never blocks past the transfer's deadline plus the time to stop the copy.
//   - Handles and transfers may outlive their transport: destroying the transport fails whatever
//     is in flight (CANCELLED) and leaves them inert.
//
// Threading: every method of KvTransport, and poll()/cancel()/wait() of a Transfer, may be called
// from any thread (an internal mutex). Moving or destroying one Transfer or MemoryHandle needs the
// usual exclusive access. Hot paths (post, poll) return Status and never throw.
#pragma once

#include <chrono>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "kernels/status.h"

namespace kvb::transport {

using Clock = std::chrono::steady_clock;

enum class MemoryKind { kHost, kDevice };
std::string_view memory_kind_name(MemoryKind k);  // "host" | "device"

// A contiguous region of host or device memory. Borrowed: the transport never frees it.
struct KvRegion {
  void* ptr = nullptr;
  size_t bytes = 0;
  bool is_device = false;  // CUDA device memory (cudaMalloc) rather than host memory
  int device = -1;         // the CUDA device ordinal when is_device; -1 for host memory

  MemoryKind kind() const { return is_device ? MemoryKind::kDevice : MemoryKind::kHost; }
};

// Which side of a pull an endpoint is. The sharer holds the cache and sends; the receiver asks for
// it and receives. Two endpoints connect only when their roles differ (NCCL: sharer = rank 0).
enum class Role { kSharer, kReceiver };
std::string_view role_name(Role r);  // "sharer" | "receiver"

// A transfer's id: 128 bits, unique across processes and hosts (a random 128-bit process seed plus
// a counter), for logs and metrics. Matching uses tags, not ids.
struct TransferId {
  uint64_t hi = 0, lo = 0;

  // Thread-safe; never returns the null id.
  static TransferId generate();
  bool is_null() const { return hi == 0 && lo == 0; }
  std::string to_string() const;  // 32 lowercase hex digits
  auto operator<=>(const TransferId&) const = default;
};

enum class TransferState { kInProgress, kDone, kError };

// What poll() says. `status` is OK unless state is kError.
struct PollResult {
  TransferState state = TransferState::kInProgress;
  Status status;

  bool in_progress() const { return state == TransferState::kInProgress; }
  bool done() const { return state == TransferState::kDone; }
  bool error() const { return state == TransferState::kError; }
};

// What an implementation can do; fixed for its lifetime.
struct TransportCaps {
  std::string_view name;       // "in-process" | "grpc" | "nccl" | "cuda-ipc" (transport/select.h)
  bool host_memory = false;    // can register host regions
  bool device_memory = false;  // can register device regions
  bool same_node_only = false; // both endpoints must be on one host (cuda-ipc, in-process)
  bool same_device = true;     // both endpoints may use the same GPU (false for NCCL)
  bool any_order = true;       // false: both sides must post matching transfers in the same order
  bool bidirectional = true;   // false: only sharer → receiver (cuda-ipc)
  bool device_events = false;  // Transfer::native_event() gives a cudaEvent_t

  bool supports(MemoryKind k) const { return k == MemoryKind::kHost ? host_memory : device_memory; }
};

struct PostOptions {
  // When the transfer fails with UNAVAILABLE if it has not completed. Absent: now + the
  // transport's default timeout (its options).
  std::optional<Clock::time_point> deadline;
  // Device transports: a cudaEvent_t (borrowed; it must stay valid until the transfer ends) that
  // marks the bytes as ready — the producer's event after writing that layer. The copy waits for
  // it on the device (NCCL) or the offer waits for it on the host (cuda-ipc). Null: the caller
  // guarantees the bytes are ready when posting. Host transports ignore it.
  void* ready_event = nullptr;
};

namespace detail {

// Implementation side of a MemoryHandle. Its destructor deregisters (see MemoryHandle).
class RegistrationImpl {
 public:
  RegistrationImpl(const void* owner, uint64_t id, const KvRegion& region) : owner_(owner), id_(id), region_(region) {}
  virtual ~RegistrationImpl() = default;
  RegistrationImpl(const RegistrationImpl&) = delete;
  RegistrationImpl& operator=(const RegistrationImpl&) = delete;

  const void* owner() const { return owner_; }  // the transport that registered it
  uint64_t id() const { return id_; }
  const KvRegion& region() const { return region_; }

 private:
  const void* owner_;
  uint64_t id_;
  KvRegion region_;
};

// Implementation side of a Transfer. Its destructor cancels an unfinished transfer and returns
// once the transport no longer touches the transfer's memory.
class TransferImpl {
 public:
  TransferImpl(TransferId id, uint64_t tag, size_t bytes, bool is_send)
      : id_(id), tag_(tag), bytes_(bytes), is_send_(is_send) {}
  virtual ~TransferImpl() = default;
  TransferImpl(const TransferImpl&) = delete;
  TransferImpl& operator=(const TransferImpl&) = delete;

  virtual PollResult poll() = 0;
  virtual void cancel() = 0;
  virtual PollResult wait(Clock::time_point until) = 0;
  virtual void* native_event() const = 0;

  const TransferId& id() const { return id_; }
  uint64_t tag() const { return tag_; }
  size_t bytes() const { return bytes_; }
  bool is_send() const { return is_send_; }

 private:
  TransferId id_;
  uint64_t tag_;
  size_t bytes_;
  bool is_send_;
};

}  // namespace detail

// A registered region (move-only). Destroying it (or reset()) deregisters the region: transfers
// still using it are cancelled, and the call returns once nothing touches the memory any more.
class MemoryHandle {
 public:
  MemoryHandle() = default;
  explicit MemoryHandle(std::unique_ptr<detail::RegistrationImpl> impl) : impl_(std::move(impl)) {}
  MemoryHandle(MemoryHandle&&) noexcept = default;
  MemoryHandle& operator=(MemoryHandle&&) noexcept = default;
  ~MemoryHandle() = default;

  bool valid() const { return impl_ != nullptr; }
  uint64_t id() const { return impl_ ? impl_->id() : 0; }
  // The region as registered. Only valid() handles.
  const KvRegion& region() const { return impl_->region(); }
  void reset() { impl_.reset(); }

  const detail::RegistrationImpl* impl() const { return impl_.get(); }

 private:
  std::unique_ptr<detail::RegistrationImpl> impl_;
};

// One posted send or recv (move-only). Destroying an unfinished Transfer cancels it and waits
// until the transport no longer touches its memory (see the header comment).
class Transfer {
 public:
  Transfer() = default;
  explicit Transfer(std::unique_ptr<detail::TransferImpl> impl) : impl_(std::move(impl)) {}
  Transfer(Transfer&&) noexcept = default;
  // Releases (cancels, if unfinished) the transfer held before.
  Transfer& operator=(Transfer&&) noexcept = default;
  ~Transfer() = default;

  bool valid() const { return impl_ != nullptr; }
  const TransferId& id() const;
  uint64_t tag() const { return impl_ ? impl_->tag() : 0; }
  size_t bytes() const { return impl_ ? impl_->bytes() : 0; }
  bool is_send() const { return impl_ && impl_->is_send(); }

  // Non-blocking; thread-safe. Also enforces the deadline (a poll after it reports UNAVAILABLE,
  // once the copy has stopped). An empty Transfer reports kError FAILED_PRECONDITION.
  PollResult poll();
  // Asks to stop; non-blocking and idempotent. poll() then reports CANCELLED once the copy has
  // stopped — or kDone when the transfer completed first. On NCCL this aborts the communicator
  // (other transfers of that endpoint end with ABORTED).
  void cancel();
  // Blocks until the transfer is no longer in progress or `until` passes (then kInProgress). The
  // transfer's own deadline bounds the wait in any case.
  PollResult wait(Clock::time_point until = Clock::time_point::max());
  // Device transports (caps().device_events): the cudaEvent_t recorded after this transfer's copy
  // on the transport's stream, once the copy is enqueued; null before that, once the transfer is
  // final (its bytes are ready: nothing to wait for), and on host transports. A consumer may
  // cudaStreamWaitEvent on it while poll() says kInProgress, to start on a layer as soon as it
  // lands; the handle stays valid while the Transfer lives (events are pooled, so a stale one may
  // already mark a later copy: waiting on it then only costs time). The bytes are trustworthy
  // only once poll() reports kDone (an aborted copy completes its event too).
  void* native_event() const { return impl_ ? impl_->native_event() : nullptr; }

 private:
  std::unique_ptr<detail::TransferImpl> impl_;
};

// The transport interface. Implementations: InProcessTransport (memcpy; tests and reference),
// GrpcStreamTransport (a byte stream, the gRPC path), NcclTransport and CudaIpcTransport
// (transport/cuda/, built with KVBRIDGE_CUDA). The public methods validate what is common and call
// the do_* hooks.
class KvTransport {
 public:
  virtual ~KvTransport() = default;
  KvTransport(const KvTransport&) = delete;
  KvTransport& operator=(const KvTransport&) = delete;

  // ---- capabilities ----
  virtual const TransportCaps& caps() const = 0;
  std::string_view name() const { return caps().name; }
  bool supports(MemoryKind k) const { return caps().supports(k); }
  bool same_node_only() const { return caps().same_node_only; }
  virtual Role role() const = 0;

  // ---- setup ----
  // Registers a region for transfers. INVALID_ARGUMENT for a null or empty region; UNIMPLEMENTED
  // for a memory kind this transport does not support (supports()); device transports may also
  // reject memory their runtime cannot use (INVALID_ARGUMENT: cuda-ipc needs the base of a
  // cudaMalloc allocation). The region is borrowed; the caller keeps it valid until the handle
  // is destroyed.
  virtual Result<MemoryHandle> register_memory(const KvRegion& region) = 0;
  // This endpoint's description for the peer: an opaque byte string (envelope + NCCL unique id,
  // device UUID, host id, …), exchanged out of band by the caller (agent.proto). Stable for the
  // endpoint's lifetime. The NCCL sharer's holds the communicator's unique id: send it only to
  // the intended receiver.
  virtual Result<std::string> metadata() const = 0;
  // Binds this endpoint to the peer whose metadata() this is. Checks it before anything else:
  // INVALID_ARGUMENT for a malformed blob or another transport's; FAILED_PRECONDITION for the
  // same role on both sides, or a pair this transport cannot serve (cuda-ipc across hosts, NCCL on
  // one GPU). May complete asynchronously (NCCL's communicator init): connection() tells; the
  // connect timeout turns a peer that never shows up into UNAVAILABLE. Once only
  // (FAILED_PRECONDITION the second time). Transfers may be posted before connect(): they wait,
  // their deadlines running.
  virtual Status connect(std::string_view peer_metadata) = 0;
  // kInProgress before connect() or while connecting; kDone once connected; kError (final) when
  // the connection failed or the transport was aborted.
  virtual PollResult connection() const = 0;

  // ---- transfers ----
  // Posts `bytes` bytes of `mem` at `offset` to be sent to (received from) the peer's transfer
  // with the same tag. `mem` must come from this transport (INVALID_ARGUMENT), the range must lie
  // in the region (OUT_OF_RANGE), bytes > 0 (INVALID_ARGUMENT); ALREADY_EXISTS for a tag already
  // in flight in that direction; UNIMPLEMENTED for a direction the transport does not move
  // (caps().bidirectional); the abort reason after abort(). A send's bytes must not change until
  // it ends; a recv's bytes must not be read until it is kDone.
  Result<Transfer> post_send(const MemoryHandle& mem, size_t offset, size_t bytes, uint64_t tag,
                             const PostOptions& opt = {}) {
    return do_post(true, mem, offset, bytes, tag, opt);
  }
  Result<Transfer> post_recv(const MemoryHandle& mem, size_t offset, size_t bytes, uint64_t tag,
                             const PostOptions& opt = {}) {
    return do_post(false, mem, offset, bytes, tag, opt);
  }

  // ---- teardown ----
  // Ends every transfer in flight with `reason` (not OK; e.g. UNAVAILABLE when the agents' control
  // stream says the peer died) and makes later posts fail with it. Returns once nothing touches
  // registered memory. Tells the peer where the transport can (a goodbye on the stream). Idempotent.
  virtual void abort(const Status& reason) = 0;

 protected:
  KvTransport() = default;
  virtual Result<Transfer> do_post(bool is_send, const MemoryHandle& mem, size_t offset, size_t bytes, uint64_t tag,
                                   const PostOptions& opt) = 0;
};

}  // namespace kvb::transport
