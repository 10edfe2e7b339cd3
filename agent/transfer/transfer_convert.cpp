#include "agent/transfer/transfer_convert.h"

namespace kvb::agent {

transport::EndpointInfo endpoint_from_proto(const ::kvbridge::v1::TransportInfo& t) {
  return {t.host_id(), t.gpu_uuid(), t.nccl(), t.cuda_ipc()};
}

void to_proto(const transport::EndpointInfo& e, ::kvbridge::v1::TransportInfo* out) {
  out->set_host_id(e.host_id);
  out->set_gpu_uuid(e.gpu_uuid);
  out->set_nccl(e.nccl);
  out->set_cuda_ipc(e.cuda_ipc);
}

}  // namespace kvb::agent
