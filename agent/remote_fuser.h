// Receiver mode with a remote fuser (a FuserService at an address, fuser.proto): its description
// (GetInfo, checked for internal consistency: it is input from the network) and the Fuse stream.
// Calls go through PeerClient (the agent's token and deadline, interrupted by `cancel`; errors as
// PeerClient::peer_error reports them). Threading: blocking, on a PeerClient worker.
#pragma once

#include <cstdint>
#include <string>

#include "agent/transfer/peer_client.h"
#include "engine/kv_cache.h"
#include "engine/kv_wire.h"
#include "fuser/fuser_description.h"
#include "kernels/status.h"
#include "runtime/cancel_token.h"

namespace kvb::agent {

// What one Fuse stream did.
struct RemoteFuseStats {
  uint32_t slices_fused = 0;  // the fuser's own count (its FuseDone)
  uint64_t bytes_sent = 0, bytes_received = 0;
};

// The fuser at `address`: GetInfo → its description. INVALID_ARGUMENT for an inconsistent description.
Result<fuser::FuserDescription> describe_remote_fuser(PeerClient& peers, const std::string& address,
                                                      runtime::CancelToken& cancel);

// The Fuse stream: a writer thread sends the start message and both input streams (`sharer`'s
// and `receiver`'s slices of desc.plan, interleaved one message each so the fuser can start on
// early layers) in `dtype`, while this thread decodes the fused slices straight over `receiver`'s
// cells. UNAVAILABLE when the fuser ends the stream early.
Status fuse_remote(PeerClient& peers, const std::string& address, WireDType dtype, const fuser::FuserDescription& desc,
                   const KvCache& sharer, const ModelIdentity& sharer_id, KvCache& receiver,
                   const ModelIdentity& receiver_id, runtime::CancelToken& cancel, RemoteFuseStats& stats);

}  // namespace kvb::agent
