// A cache pulled over a raw transport (nccl, cuda-ipc; transport/README.md): the receiver's side
// of OpenTransfer → TransferStream → one recv per slice → CloseTransfer. OpenTransfer makes the
// sharer pin the cache and answer with its endpoint's metadata and the cache's header, which is
// checked as a stream's header would be (PullOptions::identity or this agent's, the limits); the
// TransferStream carries the endpoints' control messages; the slices land in a cache allocated
// from the TransportFactory's memory (device memory on a GPU) and PullOptions::on_data sees each
// (layer, K/V) slice as its last run lands; CloseTransfer releases the sharer's session whatever
// happened. The cache moves as it is (f32, exact). The sharer's side is CacheSharer.
//
// Errors: the sharer's and the endpoints' (PeerClient::peer_error codes), the header checks',
// the consumer's, CANCELLED. Threading: blocks the calling thread (a PeerClient worker).
#pragma once

#include <string>

#include "agent/transfer/peer_client.h"
#include "agent/transfer/transfer_types.h"
#include "kernels/status.h"
#include "runtime/cancel_token.h"
#include "transport/select.h"

namespace kvb::agent {

// `peers.options().transports` must be set (it offers `kind`).
Result<PulledCache> raw_pull(PeerClient& peers, const std::string& agent, const std::string& cache_id,
                             transport::TransportKind kind, const PullOptions& po, runtime::CancelToken& cancel);

}  // namespace kvb::agent
