// AgentServiceImpl: the kvbridge.v1.AgentService handlers (gRPC callback API), kept thin.
//
// Every handler: counts the request bytes, checks the bearer token (UNAUTHENTICATED), checks the
// message size against --max-message-bytes (INVALID_ARGUMENT, as agent.proto says; gRPC itself
// refuses messages over twice that limit with RESOURCE_EXHAUSTED before any handler runs) —
// rpc::admit — validates and converts the request (request_convert.h), and then either answers
// from the cache store at once (GetInfo, ListCaches, DropCache, PinCache), rebuilds and stores a
// streamed cache (ImportCache: CacheStreamReader; nothing is stored on any error), or resolves
// the context caches (store reads; pulls from other agents on the PeerClient's workers; receiver
// mode through the ContextFuser) and submits a task to the EngineLoop (Generate, Prefill), whose
// results stream back through a per-call queue. The cache-moving methods (transfer_service.cpp)
// hand the work to CacheSharer: ExportCache streams a stored cache (ExportCall: ~1 MiB chunks
// unless chunk_tokens says otherwise, the next chunk encoded while the previous one is on the
// wire, f32 payloads sent from the cache's memory as they are); OpenTransfer / TransferStream /
// CloseTransfer serve raw pulls of held caches over NCCL or CUDA IPC (transport/README.md).
// Nothing throws into gRPC; a bad request never reaches the engine. A cancelled client cancels
// its CancelToken: queued or running generations stop at their next step, pulls are interrupted.
// Each call gets a request id (response metadata "x-request-id"), one log line when it ends
// (method, peer, code, duration) and its metrics (rpc::CallLog).
//
// Ownership: the service borrows everything in ServiceDeps; all of it must outlive the
// grpc::Server the service is registered with (and the EngineLoop and PeerClient must be stopped
// before what they reference is destroyed). Threading: handlers run on gRPC's callback threads.
#pragma once

#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "agent/agent_config.h"
#include "agent/agent_metrics.h"
#include "agent/context_fuser.h"
#include "agent/request_convert.h"
#include "agent/transfer/cache_sharer.h"
#include "agent/transfer/peer_client.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "kvbridge/v1/agent.grpc.pb.h"
#include "rpc/auth.h"
#include "rpc/call.h"
#include "runtime/cache_staging.h"
#include "runtime/cache_store.h"
#include "runtime/engine_loop.h"

namespace kvb::agent {

// The addresses a CacheRef.agent may use to name this agent (its --name, its bound address and,
// when bound to a wildcard or loopback address, the loopback spellings of its port). Thread-safe.
// Also holds the agent's display name (AgentInfo.name), known only once the port is bound.
class SelfAddresses {
 public:
  void set(std::string name, std::vector<std::string> addresses);
  bool contains(std::string_view agent) const;
  std::string name() const;

 private:
  mutable std::mutex mu_;
  std::string name_;
  std::vector<std::string> addresses_;
};

struct ServiceDeps {
  const AgentConfig* config = nullptr;
  const Model* model = nullptr;
  const ModelIdentity* identity = nullptr;
  runtime::CacheStore* store = nullptr;
  runtime::EngineLoop* engine = nullptr;
  PeerClient* peers = nullptr;
  Metrics* metrics = nullptr;
  const rpc::BearerAuth* auth = nullptr;
  const SelfAddresses* self = nullptr;
  ContextFuser* fuser = nullptr;  // receiver mode (context caches from other models)
  KvWireLimits import_limits;  // for ImportCache streams
  // Stages device caches to host memory for ExportCache and uploads imports (an identity on the CPU).
  runtime::CacheStager* stager = nullptr;
  const BufferType* import_buffers = nullptr;  // host memory ImportCache decodes into
  // The caches this agent shares: ExportCache streams and raw transfers (OpenTransfer /
  // TransferStream / CloseTransfer).
  CacheSharer* sharer = nullptr;

  // How every handler admits and accounts its call (token, --max-message-bytes, bytes).
  rpc::CallPolicy call_policy() const { return {metrics, auth, config->max_message_bytes}; }
};

// ExportCache is served raw (byte buffers, see ExportCall) so that payloads go out without a copy;
// every other method uses the generated message types.
using AgentServiceBase =
    kvbridge::v1::AgentService::WithRawCallbackMethod_ExportCache<kvbridge::v1::AgentService::CallbackService>;

class AgentServiceImpl final : public AgentServiceBase {
 public:
  explicit AgentServiceImpl(ServiceDeps deps);

  grpc::ServerUnaryReactor* GetInfo(grpc::CallbackServerContext* ctx, const pb::GetInfoRequest* req,
                                    pb::AgentInfo* resp) override;
  grpc::ServerWriteReactor<pb::GenerateResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                           const pb::GenerateRequest* req) override;
  grpc::ServerUnaryReactor* Prefill(grpc::CallbackServerContext* ctx, const pb::PrefillRequest* req,
                                    pb::PrefillResponse* resp) override;
  grpc::ServerReadReactor<pb::CacheChunk>* ImportCache(grpc::CallbackServerContext* ctx,
                                                       pb::ImportCacheResponse* resp) override;
  grpc::ServerUnaryReactor* ListCaches(grpc::CallbackServerContext* ctx, const pb::ListCachesRequest* req,
                                       pb::ListCachesResponse* resp) override;
  grpc::ServerUnaryReactor* DropCache(grpc::CallbackServerContext* ctx, const pb::DropCacheRequest* req,
                                      pb::DropCacheResponse* resp) override;
  grpc::ServerUnaryReactor* PinCache(grpc::CallbackServerContext* ctx, const pb::PinCacheRequest* req,
                                     pb::PinCacheResponse* resp) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* ctx, const pb::TokenizeRequest* req,
                                     pb::TokenizeResponse* resp) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* ctx, const pb::DetokenizeRequest* req,
                                       pb::DetokenizeResponse* resp) override;
  // Cache transfers, the sharer's side (transfer_service.cpp, over CacheSharer).
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ExportCache(grpc::CallbackServerContext* ctx,
                                                          const grpc::ByteBuffer* req) override;
  grpc::ServerUnaryReactor* OpenTransfer(grpc::CallbackServerContext* ctx, const pb::OpenTransferRequest* req,
                                         pb::OpenTransferResponse* resp) override;
  grpc::ServerBidiReactor<pb::TransferFrame, pb::TransferFrame>* TransferStream(
      grpc::CallbackServerContext* ctx) override;
  grpc::ServerUnaryReactor* CloseTransfer(grpc::CallbackServerContext* ctx, const pb::CloseTransferRequest* req,
                                          pb::CloseTransferResponse* resp) override;

 private:
  ServiceDeps d_;
};

}  // namespace kvb::agent
