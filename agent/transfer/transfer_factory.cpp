#include "agent/transfer/transfer_factory.h"

#include <fmt/format.h>

#include <string>

#include "kernels/backend.h"
#include "transport/kv_slices.h"
#include "transport/metadata.h"

#ifdef KVB_TRANSFER_CUDA_IPC
#include "transport/cuda/cuda_ipc_transport.h"
#include "transport/cuda/cuda_runtime.h"
#endif
#ifdef KVB_TRANSFER_NCCL
#include "transport/cuda/nccl_transport.h"
#endif

namespace kvb::agent {

namespace {

// "cuda:N" → N; -1 for a device that is not a CUDA one.
int cuda_ordinal(const Device& device) {
  const std::string name = device.name();
  if (!name.starts_with("cuda:")) return -1;
  try {
    return std::stoi(name.substr(5));
  } catch (...) {
    return -1;
  }
}

class AgentTransportFactory final : public TransportFactory {
 public:
  AgentTransportFactory(int ordinal, transport::EndpointInfo self, const BufferType& buffers)
      : ordinal_(ordinal), self_(std::move(self)), buffers_(buffers) {}

  const transport::EndpointInfo& endpoint() const override { return self_; }

  Result<std::unique_ptr<transport::KvTransport>> create(transport::TransportKind kind, transport::Role role,
                                                         std::unique_ptr<transport::BytePipe> control) override {
#ifdef KVB_TRANSFER_CUDA_IPC
    if (kind == transport::TransportKind::kCudaIpc && self_.cuda_ipc) {
      return transport::CudaIpcTransport::create(role, ordinal_, std::move(control));
    }
#endif
#ifdef KVB_TRANSFER_NCCL
    if (kind == transport::TransportKind::kNccl && self_.nccl) return transport::NcclTransport::create(role, ordinal_);
#endif
    (void)role;
    (void)control;
    return unimplemented(fmt::format("this agent does not move caches over {}", transport::transport_name(kind)));
  }

  const BufferType& receive_buffers() const override { return buffers_; }

  transport::KvRegion region(transport::TransportKind, const KvCache& cache) const override {
    return transport::cache_region(cache, ordinal_);
  }

 private:
  const int ordinal_;
  const transport::EndpointInfo self_;
  const BufferType& buffers_;
};

}  // namespace

std::unique_ptr<TransportFactory> make_agent_transport_factory(const Device& device, const BufferType& device_buffers) {
  transport::EndpointInfo self;
  self.host_id = transport::local_host_id();
  const int ordinal = device.buffer_type().is_host() ? -1 : cuda_ordinal(device);
#ifdef KVB_TRANSFER_CUDA_IPC
  if (ordinal >= 0) {
    if (auto info = transport::cuda_endpoint_info(ordinal); info.ok()) self = std::move(info).value();
#ifdef KVB_TRANSFER_NCCL
    self.nccl = !self.gpu_uuid.empty() && transport::NcclTransport::available();
#endif
  }
#endif
  return std::make_unique<AgentTransportFactory>(ordinal, std::move(self), device_buffers);
}

}  // namespace kvb::agent
