// The NCCL transport's protocol, apart from NCCL itself (which lives in transport/cuda/).
//
// NcclTransport (transport/cuda/nccl_transport.h) is this engine over the real NcclDeviceOps; the
// tests run the same engine over a fake (tests/transport/fake_nccl.h), so that everything but the
// NCCL and CUDA calls is exercised on machines without GPUs.
//
// Protocol:
//   1. The receiver asks (its metadata: device, GPU UUID); the sharer answers with its metadata,
//      which carries a fresh ncclUniqueId. Both connect(): the sharer becomes rank 0, the
//      receiver rank 1 of a 2-rank communicator, initialized non-blocking
//      (ncclCommInitRankConfig, blocking = 0) on the endpoint's progress thread and polled with
//      ncclCommGetAsyncError. Two endpoints on one GPU are refused (FAILED_PRECONDITION: NCCL
//      cannot do that; select.h picks cuda-ipc there). A peer that has not joined by
//      connect_timeout → ncclCommAbort → UNAVAILABLE.
//   2. Transfers run in posting order (caps().any_order is false: both sides post the same (tag,
//      bytes) sequence — kv_slices.h), one ncclGroupStart/ncclSend|ncclRecv/ncclGroupEnd per
//      transfer (one (layer, K|V) slice) on the endpoint's CUDA stream, each followed by a
//      cudaEvent: a consumer can start on a layer as soon as its event fires (native_event()),
//      and poll() reports kDone when it has. A transfer with PostOptions::ready_event first makes
//      the stream wait for it (cudaStreamWaitEvent), so the sharer can post a layer while it is
//      still being computed.
//   3. Failures: an NCCL async error, a deadline, a cancel or an abort poison the ordered pairing,
//      so the endpoint aborts the communicator (ncclCommAbort, then the stream drains) and every
//      unfinished transfer ends: the one that timed out UNAVAILABLE, the one cancelled CANCELLED,
//      the others UNAVAILABLE (a timeout or a peer error) or ABORTED (a cancel); later posts fail
//      the same way. The peer notices by its own deadline, or sooner when the agents' control
//      stream tells it (KvTransport::abort). Sizes that differ between the two sides cannot be
//      detected by NCCL: they hang until the deadline.
// Device memory only; both directions.
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "kernels/status.h"
#include "transport/kv_transport.h"

namespace kvb::transport {

struct NcclOptions {
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};          // default transfer deadline
  std::chrono::milliseconds connect_timeout{std::chrono::seconds(30)};  // communicator init
};

// One rank's NCCL communicator and CUDA stream, as the engine uses them. device() and
// device_uuid() may be called from any thread; new_unique_id() before the endpoint starts; every
// other call comes from the endpoint's progress thread (or from close() once it has stopped), one
// at a time.
class NcclDeviceOps {
 public:
  virtual ~NcclDeviceOps() = default;
  virtual int device() const = 0;                  // CUDA ordinal
  virtual std::string device_uuid() const = 0;     // "GPU-…": the GPU's identity
  virtual Result<std::string> new_unique_id() = 0; // ncclGetUniqueId (the sharer's)
  // Starts the communicator's initialization (non-blocking). INVALID_ARGUMENT for a unique id of
  // the wrong size.
  virtual Status init_begin(std::string_view unique_id, int n_ranks, int rank) = 0;
  // ncclCommGetAsyncError: kInProgress while initializing or while the last launch is still being
  // enqueued, kDone when idle and healthy, kError (with NCCL's message) otherwise.
  virtual PollResult comm_state() = 0;
  // Waits for `ready_event` on the stream (when not null), then one group with one ncclSend or
  // ncclRecv of `bytes` bytes to/from rank `peer`. Returns a token. No other launch until
  // comm_state() is kDone again; then record() the token.
  virtual Result<uint64_t> launch(bool send, void* ptr, size_t bytes, int peer, void* ready_event) = 0;
  // Records the token's completion event on the stream (after its launch was enqueued).
  virtual Status record(uint64_t token) = 0;
  // Whether the token's event fired (cudaEventQuery).
  virtual Result<bool> done(uint64_t token) = 0;
  virtual void* event(uint64_t token) = 0;  // the token's cudaEvent_t, once recorded
  // The token is finished with. Its event goes back to a pool: event handles stay valid until the
  // ops are destroyed (a consumer may still hold one, see Transfer::native_event).
  virtual void release(uint64_t token) = 0;
  // ncclCommAbort, then waits for the stream: afterwards nothing launched touches memory.
  // Idempotent; fine before or during init.
  virtual void abort() = 0;
  // Orderly teardown once every token was released (ncclCommFinalize + ncclCommDestroy, or an
  // abort when that does not finish promptly).
  virtual void finalize() = 0;
};

// An NCCL endpoint over `ops`. The sharer's unique id is drawn here (errors: the ops').
Result<std::unique_ptr<KvTransport>> make_nccl_transport(Role role, std::unique_ptr<NcclDeviceOps> ops,
                                                         const NcclOptions& opt = {});

// Capabilities: name "nccl", device memory, ordered, not on one GPU, device events.
const TransportCaps& nccl_capabilities();

}  // namespace kvb::transport
