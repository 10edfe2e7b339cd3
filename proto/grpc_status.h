// The one boundary between kvb::Status and grpc::Status (STYLE R6), shared by the agent (agent/:
// handlers answering, peer pulls reading other agents' replies) and the client library (client/).
//
// Both use the canonical gRPC codes (kernels/status.h keeps the values equal), so the mapping is by
// value; it exists in exactly one place so that every handler answers errors the same way and
// neither side builds a grpc::Status or reads a grpc::StatusCode by hand.
// Thread-safe; allocates only for the message.
#pragma once

#include <grpcpp/support/status.h>

#include "kernels/status.h"

namespace kvb {

// kvb::Status → grpc::Status (code and message). An OK Status maps to grpc::Status::OK; a code
// outside the canonical range (a bug) becomes UNKNOWN.
grpc::Status to_grpc_status(const Status& s);

// grpc::Status → kvb::Status: same code, same message. Codes outside the canonical range (a peer
// speaking a newer gRPC) become UNKNOWN.
Status from_grpc_status(const grpc::Status& s);

}  // namespace kvb
