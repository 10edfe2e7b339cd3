// TransportFactory: where an agent gets the endpoints of raw cache transfers (NCCL, CUDA IPC).
//
// The agent asks it what to advertise (GetInfo's TransportInfo, and its own side of
// select_transport), for a new endpoint per pull, for the memory a received cache lives in, and
// for the region a cache is registered as. The agent's own factory (make_agent_transport_factory)
// offers cuda-ipc, and nccl where NCCL was found, to an agent whose caches live on a GPU of a
// KVBRIDGE_CUDA build; on the CPU it offers nothing and every pull is grpc. Tests give agents a
// factory over the host fakes of tests/transport, so the whole OpenTransfer flow runs on the CPU.
//
// Threading: every method may be called from any thread.
#pragma once

#include <chrono>
#include <memory>

#include "engine/kv_cache.h"
#include "kernels/status.h"
#include "transport/byte_pipe.h"
#include "transport/kv_transport.h"
#include "transport/select.h"

namespace kvb {
class Device;
}

namespace kvb::agent {

class TransportFactory {
 public:
  virtual ~TransportFactory() = default;
  // This agent as an endpoint: host id, GPU UUID, nccl, cuda-ipc.
  virtual const transport::EndpointInfo& endpoint() const = 0;
  // A new endpoint of `kind` (nccl or cuda-ipc; UNIMPLEMENTED for what endpoint() does not offer).
  // `control` is the session's control pipe, owned by the endpoint when it takes one (cuda-ipc);
  // an endpoint that needs none drops it.
  virtual Result<std::unique_ptr<transport::KvTransport>> create(transport::TransportKind kind, transport::Role role,
                                                                 std::unique_ptr<transport::BytePipe> control) = 0;
  // Where a cache received over a raw transport is allocated (device memory on a GPU). Borrowed:
  // valid while the factory lives.
  virtual const BufferType& receive_buffers() const = 0;
  // `cache` as the region an endpoint of `kind` registers (transport::cache_region with the
  // device ordinal on a GPU).
  virtual transport::KvRegion region(transport::TransportKind kind, const KvCache& cache) const = 0;
};

// The agent's own factory for caches held on `device` (borrowed; it outlives the factory), whose
// received caches are allocated from `device_buffers` (borrowed likewise). Offers cuda-ipc, and
// nccl when the NCCL library is usable, when the device is a GPU of a KVBRIDGE_CUDA build; nothing
// but its host id otherwise.
std::unique_ptr<TransportFactory> make_agent_transport_factory(const Device& device, const BufferType& device_buffers);

}  // namespace kvb::agent
