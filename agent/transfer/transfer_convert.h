// Proto glue of cache transfers (agent.proto ↔ transfer_types.h and transport::EndpointInfo).
// The rest of agent/transfer/ speaks native types. Requests are validated here, field by field:
// INVALID_ARGUMENT naming the field.
#pragma once

#include <string>

#include "agent/transfer/transfer_types.h"
#include "kernels/status.h"
#include "kvbridge/v1/agent.pb.h"
#include "transport/select.h"

namespace kvb::agent {

transport::EndpointInfo endpoint_from_proto(const ::kvbridge::v1::TransportInfo& t);
void to_proto(const transport::EndpointInfo& e, ::kvbridge::v1::TransportInfo* out);

Result<ExportSpec> convert_export(const ::kvbridge::v1::ExportCacheRequest& r);
// `peer`: the receiver's gRPC peer, for logs. The transport name is checked by CacheSharer.
OpenTransferSpec convert_open_transfer(const ::kvbridge::v1::OpenTransferRequest& r, std::string peer);
void to_proto(const OpenedTransfer& t, ::kvbridge::v1::OpenTransferResponse* out);

}  // namespace kvb::agent
