// The cuda-ipc transport's protocol, apart from CUDA itself (which lives in transport/cuda/).
//
// CudaIpcTransport (transport/cuda/cuda_ipc_transport.h) is this engine over the real
// IpcDeviceOps (cudaIpcGetMemHandle / cudaIpcOpenMemHandle / cudaMemcpyAsync); the tests run the
// same engine over host-memory ops, so the protocol — offers, acks, revokes, the unmap handshake,
// deadlines — is exercised on machines without GPUs.
//
// For two agents on one node, including two on one GPU (which NCCL refuses). One-sided: the
// receiver's copy engine reads the sharer's memory; only sharer → receiver (caps().bidirectional
// is false). Control messages go over a BytePipe (the agents' gRPC stream):
//   OFFER    sharer → receiver: u8 1, u64 sid, u64 tag, u64 region id, u64 region bytes, u64 offset,
//            u64 bytes, str handle (the region's exported handle)
//   DONE     receiver → sharer: u8 2, u64 sid, u32 code, str message — the copy of offer sid ended
//   REVOKE   sharer → receiver: u8 3, u64 sid, u64 tag, u32 code, str message — send sid ended
//            without being read (offered or not: an unknown sid is a notice for its tag's next recv)
//   UNMAP    sharer → receiver: u8 4, u64 region id — close your mapping of it
//   UNMAPPED receiver → sharer: u8 5, u64 region id
//   BYE      either way:        u8 6, str reason
// post_send offers the bytes (after its ready_event fired, polled on the host); the receiver
// matches offers and recvs by tag (any order, FIFO per tag), opens the region's handle once
// (cached per region), copies asynchronously on its stream, and answers DONE when the copy's
// event fired. The send is kDone on DONE: until then the receiver may be reading the sharer's
// memory. The mapping stays open for later offers of the same region, and the cache stays
// pinned on the sharer until the receiver releases it: destroying a MemoryHandle (or the
// transport) that was offered sends UNMAP and waits for UNMAPPED — or BYE, a broken pipe, or
// release_timeout (the peer is presumed dead; its driver released its mappings).
//
// A cancelled or expired send sends REVOKE and ends at once (its memory stays readable until the
// handle is released, see above); the receiver's matching recv ends CANCELLED/UNAVAILABLE, "peer:
// …" (after its copy stopped, when it had started). A receiver-side cancel during a copy waits for
// the copy (a cudaMemcpyAsync cannot be stopped), then reports CANCELLED and DONE(CANCELLED).
//
// The receiver checks each offer against its recv: equal sizes, the range inside the region
// (INVALID_ARGUMENT otherwise, on both sides). Endpoints on different hosts: FAILED_PRECONDITION
// at connect().
#pragma once

#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "kernels/status.h"
#include "transport/byte_pipe.h"
#include "transport/kv_transport.h"

namespace kvb::transport {

struct IpcOptions {
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};          // default transfer deadline
  std::chrono::milliseconds release_timeout{std::chrono::seconds(10)};  // waiting for UNMAPPED
};

// One endpoint's device side. Thread-safe (calls come from the endpoint's threads and from
// poll()), though the engine makes them one at a time, under its mutex.
class IpcDeviceOps {
 public:
  virtual ~IpcDeviceOps() = default;
  // What the engine declares: the real ops say "cuda-ipc" with device memory; the host fake
  // (tests) another name with host memory.
  virtual const TransportCaps& caps() const = 0;
  // ---- sharer ----
  // The handle the receiver opens (cudaIpcGetMemHandle + what the receiver needs to recognise its
  // own process). INVALID_ARGUMENT when the region cannot be exported (not the base of a
  // cudaMalloc allocation).
  virtual Result<std::string> export_region(const KvRegion& region) = 0;
  // Whether a PostOptions::ready_event fired (cudaEventQuery).
  virtual Result<bool> event_ready(void* event) = 0;
  // ---- receiver ----
  // Maps a handle from export_region() (cudaIpcOpenMemHandle; in the exporting process itself, the
  // pointer as is). Returns the region's base in this process.
  virtual Result<void*> open(std::string_view handle) = 0;
  virtual Status close(void* base) = 0;  // cudaIpcCloseMemHandle of what open() returned
  // dst ← src, `bytes` bytes, asynchronously on the endpoint's stream, then an event. A token.
  virtual Result<uint64_t> copy_async(void* dst, const void* src, size_t bytes) = 0;
  virtual Result<bool> copy_done(uint64_t token) = 0;  // the event fired (cudaEventQuery)
  virtual void* copy_event(uint64_t token) = 0;        // the cudaEvent_t (null for host copies)
  // The token is finished with; its event returns to a pool (handles stay valid until the ops die).
  virtual void release_copy(uint64_t token) = 0;
};

// An endpoint of the cuda-ipc protocol over `ops` and the control pipe (both owned).
std::unique_ptr<KvTransport> make_ipc_transport(Role role, std::unique_ptr<IpcDeviceOps> ops,
                                                std::unique_ptr<BytePipe> control, const IpcOptions& opt = {});

}  // namespace kvb::transport
