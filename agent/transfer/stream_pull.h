// A cache pulled over the ExportCache stream (the grpc transport): the receiver's side. The
// stream is read raw — each message stays in the slices gRPC received it in, and
// wire::CacheStreamReader checksums and decodes the payload from there, chunk by chunk as
// messages arrive — into host memory (PeerClientOptions::cache_buffers). Errors: the reader's
// (FAILED_PRECONDITION for another model, DATA_LOSS, INVALID_ARGUMENT, RESOURCE_EXHAUSTED), the
// consumer's (PullOptions::on_data), the peer's as PeerClient::peer_error reports them, CANCELLED.
//
// Threading: blocks the calling thread (a PeerClient worker).
#pragma once

#include <string>

#include "agent/transfer/peer_client.h"
#include "agent/transfer/transfer_types.h"
#include "kernels/status.h"
#include "runtime/cancel_token.h"

namespace kvb::agent {

Result<PulledCache> stream_pull(PeerClient& peers, const std::string& agent, const std::string& cache_id,
                                const PullOptions& po, runtime::CancelToken& cancel);

}  // namespace kvb::agent
