#include "agent/transfer/transfer_convert.h"

#include "proto/wire_convert.h"
#include "runtime/cache_store.h"

namespace kvb::agent {

namespace pb = ::kvbridge::v1;

transport::EndpointInfo endpoint_from_proto(const pb::TransportInfo& t) {
  return {t.host_id(), t.gpu_uuid(), t.nccl(), t.cuda_ipc()};
}

void to_proto(const transport::EndpointInfo& e, pb::TransportInfo* out) {
  out->set_host_id(e.host_id);
  out->set_gpu_uuid(e.gpu_uuid);
  out->set_nccl(e.nccl);
  out->set_cuda_ipc(e.cuda_ipc);
}

Result<ExportSpec> convert_export(const pb::ExportCacheRequest& r) {
  ExportSpec e;
  KVB_RETURN_IF_ERROR(runtime::check_cache_id(r.cache_id(), "cache_id"));
  e.cache_id = r.cache_id();
  auto dtype = wire::wire_dtype_from_proto(r.dtype());
  if (!dtype.ok()) return invalid_argument("dtype: " + dtype.status().message());
  auto comp = wire::compression_from_proto(r.compression());
  if (!comp.ok()) return invalid_argument("compression: " + comp.status().message());
  e.dtype = *dtype;
  e.compression = *comp;
  e.chunk_tokens = r.chunk_tokens();
  if (r.has_layers()) e.layers = wire::from_proto(r.layers());
  return e;
}

OpenTransferSpec convert_open_transfer(const pb::OpenTransferRequest& r, std::string peer) {
  OpenTransferSpec s;
  s.cache_id = r.cache_id();
  s.transport = r.transport();
  s.receiver = endpoint_from_proto(r.receiver());
  s.receiver_metadata = r.receiver_metadata();
  if (r.has_layers()) s.layers = wire::from_proto(r.layers());
  s.chunk_tokens = r.chunk_tokens();
  s.timeout = std::chrono::milliseconds(r.timeout_ms());
  s.peer = std::move(peer);
  return s;
}

void to_proto(const OpenedTransfer& t, pb::OpenTransferResponse* out) {
  out->set_session_hi(t.id.hi);
  out->set_session_lo(t.id.lo);
  out->set_transport(std::string(transport::transport_name(t.kind)));
  out->set_sharer_metadata(t.metadata);
  wire::to_proto(t.header, out->mutable_header());
  out->set_chunk_tokens(t.chunk_tokens);
  out->set_timeout_ms(uint32_t(t.timeout.count()));
}

}  // namespace kvb::agent
