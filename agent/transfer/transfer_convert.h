// Proto glue of cache transfers: a peer's TransportInfo (agent.proto) ↔ transport::EndpointInfo.
// The rest of agent/transfer/ speaks native types (pull_types.h, transport/select.h).
#pragma once

#include "kvbridge/v1/agent.pb.h"
#include "transport/select.h"

namespace kvb::agent {

transport::EndpointInfo endpoint_from_proto(const ::kvbridge::v1::TransportInfo& t);
void to_proto(const transport::EndpointInfo& e, ::kvbridge::v1::TransportInfo* out);

}  // namespace kvb::agent
