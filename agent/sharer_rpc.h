// SharerRpc: receiver mode's calls to the sharer agent (AgentService), behind native types so that
// ContextFuser reads as its steps. Every call goes through PeerClient::unary: the agent's token,
// the pull deadline, interrupted by `cancel`, errors as PeerClient::peer_error reports them.
//
// Threading: one SharerRpc per fusion, on a PeerClient worker; it borrows `peers` and `cancel`.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "agent/transfer/peer_client.h"
#include "engine/kv_wire.h"
#include "fuser/align.h"
#include "kernels/status.h"
#include "runtime/cancel_token.h"

namespace kvb::agent {

// What receiver mode needs to know of the sharer (its GetInfo).
struct SharerInfo {
  ModelIdentity identity;
  int32_t bos_id = -1, eos_id = -1;
};

// A sharer cache's context (Detokenize): its token ids and their text.
struct SharerContext {
  std::vector<int32_t> ids;
  std::string text;
};

class SharerRpc {
 public:
  SharerRpc(PeerClient& peers, std::string sharer, runtime::CancelToken& cancel);
  ~SharerRpc();

  // GetInfo; the sharer's TransportInfo is remembered by `peers`, so the pull need not ask again.
  Result<SharerInfo> info();
  Result<SharerContext> read_context(const std::string& cache_id);
  // The sharer's tokenizer reached through Tokenize / Detokenize, for fuser::align_tokens.
  fuser::BatchEncoder encoder();
  fuser::PieceTexts piece_texts();
  // Prefill of exactly `ids` (no BOS added) into a cache that expires after 300 s: its id.
  Result<std::string> prefill(const std::vector<int32_t>& ids);
  // DropCache, never interrupted: a failure is only logged (the TTL removes the cache).
  void drop(const std::string& cache_id);

  const std::string& address() const { return sharer_; }

 private:
  struct Stub;
  PeerClient& peers_;
  const std::string sharer_;
  runtime::CancelToken& cancel_;
  std::unique_ptr<Stub> stub_;
};

}  // namespace kvb::agent
