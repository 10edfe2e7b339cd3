// CudaIpcTransport ("cuda-ipc"): agents on one node — on one GPU too, which NCCL refuses — share
// a cache through CUDA IPC memory handles. The protocol is transport/ipc_engine.h (offers, DONE
// acks, the UNMAP/UNMAPPED release handshake over a control BytePipe); this file supplies the
// CUDA side, with the runtime API only (cudart):
//   sharer    register_memory → cudaIpcGetMemHandle (the region must be the base of a cudaMalloc
//             allocation, as a KvCache buffer from the CUDA backend is; cudart cannot check this)
//   receiver  cudaIpcOpenMemHandle(cudaIpcMemLazyEnablePeerAccess) once per region, then one
//             cudaMemcpyAsync (device to device, or peer) per transfer on its own stream, followed
//             by a pooled cudaEvent (Transfer::native_event); cudaIpcCloseMemHandle on UNMAP.
// Two endpoints in one process (CUDA refuses to open a handle in its own process) use the
// sharer's pointer directly. Device memory only; sharer → receiver only. Part of
// kvbridge::transport_cuda (KVBRIDGE_CUDA builds).
#pragma once

#include <memory>

#include "transport/byte_pipe.h"
#include "transport/ipc_engine.h"
#include "transport/kv_transport.h"

namespace kvb::transport {

class CudaIpcTransport {
 public:
  // An endpoint whose copies (receiver) run on `device`. FAILED_PRECONDITION when there is no
  // such device; INTERNAL for other CUDA errors.
  static Result<std::unique_ptr<KvTransport>> create(Role role, int device, std::unique_ptr<BytePipe> control,
                                                     const IpcOptions& opt = {});
  static const TransportCaps& capabilities();  // name "cuda-ipc"
};

}  // namespace kvb::transport
