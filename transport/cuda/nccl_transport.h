// NcclTransport ("nccl"): GPU to GPU between agents on different GPUs (one node or several),
// through a 2-rank NCCL communicator per pull. The protocol — unique id in the sharer's
// metadata, non-blocking init, one group call and one cudaEvent per transfer, abort on errors and
// deadlines — is transport/nccl_engine.h; this file supplies NCCL and cudart. Part of
// kvbridge::transport_nccl (KVBRIDGE_CUDA builds where NCCL was found).
#pragma once

#include <memory>

#include "transport/kv_transport.h"
#include "transport/nccl_engine.h"

namespace kvb::transport {

class NcclTransport {
 public:
  // An endpoint whose communicator and stream live on `device`. FAILED_PRECONDITION when there is
  // no such device; INTERNAL/UNAVAILABLE for CUDA and NCCL errors (the sharer draws its unique id
  // here, which starts NCCL's bootstrap network).
  static Result<std::unique_ptr<KvTransport>> create(Role role, int device, const NcclOptions& opt = {});
  static const TransportCaps& capabilities();  // name "nccl"
  // Whether the NCCL library is usable (ncclGetVersion), and its version as NCCL encodes it.
  static bool available(int* version = nullptr);
};

}  // namespace kvb::transport
