// The one boundary between kvb::Status and grpc::Status (STYLE R6).
//
// Both use the canonical gRPC codes, so the mapping is by value; it exists in exactly one place so
// that every handler answers errors the same way and no handler builds a grpc::Status by hand.
// Thread-safe, allocation only for the message.
#pragma once

#include <grpcpp/support/status.h>

#include "kernels/status.h"

namespace kvb::server {

// kvb::Status → grpc::Status (code and message). An OK Status maps to grpc::Status::OK.
grpc::Status to_grpc_status(const Status& s);

// grpc::Status → kvb::Status, for replies of peer agents (peer_client). Codes outside the
// canonical range become UNKNOWN.
Status from_grpc_status(const grpc::Status& s);

}  // namespace kvb::server
