// ContextFuser: receiver mode — a context cache held by an agent that runs a different model,
// projected into this agent's cache space by a C2C fuser (agent.proto FuserRef, fuser.proto).
//
// For one CacheRef {sharer agent, cache id} and a fuser (remote FuserService or the embedded one):
//   1. the fuser's description (GetInfo, or the embedded Fuser): its receiver side must be this
//      model and its sharer side the sharer's model (FAILED_PRECONDITION naming the mismatch);
//      when the sharer runs this very model, the cache is simply pulled, nothing is fused;
//   2. the cache's text (sharer Detokenize) → this agent's tokens R (BOS when the sharer's cache
//      starts with its BOS);
//   3. sharer tokens aligned one per receiver position (fuser/align.h, the sharer's tokenizer
//      reached through its Tokenize/Detokenize RPCs), or R itself when both tokenizers are equal;
//      when they differ from the cache's own tokens the sharer prefills them into a temporary
//      cache (dropped afterwards);
//   4. this agent prefills R on its engine thread into a cache it owns (EngineLoop hand_back);
//   5. the sharer slices the fuser needs are pulled (a LayerSet: gated-off layers never travel),
//      over the transport the request chose (PeerClient::pull: grpc, or nccl / cuda-ipc into the
//      agent's device memory; for a remote fuser the cache is read in host memory, so grpc);
//   6. fusion: in process (Fuser::fuse per gated-on slice, each as soon as its sharer slice has
//      landed, while the pull goes on; read in place when it landed on the GPU) or over a Fuse
//      stream (the sharer's and the receiver's slices out, the fused receiver slices back into the
//      cache, layer by layer).
// The result is a context cache like any pulled one (positions from 0, free cells reserved).
//
// Errors: the peers' codes (PeerClient::peer_error: a dead sharer or fuser → UNAVAILABLE),
// FAILED_PRECONDITION for a fuser of another pair or a missing embedded fuser, RESOURCE_EXHAUSTED
// when the context does not fit. Threading: fuse() is blocking and thread-safe; run it on the
// PeerClient's workers. Borrows everything it is given (all must outlive it).
#pragma once

#include <cstdint>
#include <future>
#include <memory>
#include <string>
#include <vector>

#include "agent/request_types.h"
#include "agent/transfer/peer_client.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "fuser/fuser.h"
#include "fuser/fuser_description.h"
#include "runtime/cancel_token.h"
#include "runtime/engine_loop.h"

namespace kvb::agent {

class SharerRpc;
struct SharerInfo;

struct FusedContext {
  std::unique_ptr<KvCache> cache;  // this model's cache over the context, fused
  FuseReport report;
};

class ContextFuser {
 public:
  // `embedded` may be null (no --fuser).
  ContextFuser(const Model& model, const ModelIdentity& identity, runtime::EngineLoop& engine, PeerClient& peers,
               fuser::Fuser* embedded);

  // `request_pull`: the request's pull options, of which the transport choice and reserve_cells
  // (free cells to leave after the context: the request's input and output) apply.
  Result<FusedContext> fuse(const std::string& sharer, const std::string& cache_id, const FuserSpec& spec,
                            const PullOptions& request_pull, const runtime::CancelTokenPtr& cancel_ptr);

  // AgentInfo.fuser: "sharer -> receiver" of the embedded fuser, or empty.
  std::string embedded_description() const;

 private:
  // The embedded fuser's description, or the remote one's (GetInfo).
  Result<fuser::FuserDescription> describe_fuser(const FuserSpec& spec, runtime::CancelToken& cancel) const;
  // The sharer runs this very model: the cache is pulled as it is into `result`.
  Status pull_unfused(const std::string& sharer, const std::string& cache_id, const FuserSpec& spec,
                      const PullOptions& request_pull, runtime::CancelToken& cancel, FusedContext& result);
  // Submits the prefill of `ids` on the engine thread into a cache handed back to the caller.
  std::future<Result<runtime::PrefillOutcome>> prefill_context(const std::vector<int32_t>& ids,
                                                               const PullOptions& request_pull,
                                                               const runtime::CancelTokenPtr& cancel);
  // Sharer tokens, one per receiver position (fuser/align.h through the sharer's tokenizer RPCs).
  Result<std::vector<int32_t>> align(SharerRpc& rpc, const SharerInfo& info, const std::vector<int32_t>& ids,
                                     fuser::AlignStrategy strategy);
  // Pulls the sharer slices of desc.plan and fuses them into `receiver`: embedded, slice by slice
  // as they land; remote, over a Fuse stream once the pull is in.
  Status pull_and_fuse(const std::string& sharer, const std::string& sharer_cache, const FuserSpec& spec,
                       const fuser::FuserDescription& desc, const ModelIdentity& sharer_id,
                       const PullOptions& request_pull, runtime::CancelToken& cancel, KvCache& receiver,
                       FuseReport& report);

  const Model& model_;
  const ModelIdentity& identity_;
  runtime::EngineLoop& engine_;
  PeerClient& peers_;
  fuser::Fuser* embedded_;
};

}  // namespace kvb::agent
