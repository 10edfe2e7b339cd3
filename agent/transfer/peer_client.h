// PeerClient: this agent as a client of other agents and fusers — one gRPC channel per peer
// address (rpc::make_channel with this agent's TLS settings, message limits and keepalive), calls
// carrying its bearer token and deadline, the worker pool that runs every blocking peer call, the
// peers' TransportInfo — and pull(), which brings a context cache held by another agent here.
//
// A Generate/Prefill that names a cache held by another agent is served by pulling that cache
// here, never through the client. pull() runs in three steps:
//   1. the transport: the request's choice (PullOptions::transport) resolved against the sharer's
//      TransportInfo (its GetInfo, cached per address for kPeerInfoTtl) with this agent's own
//      EndpointInfo (its TransportFactory's) as the receiver (transport_choice.h);
//   2. nccl or cuda-ipc: a raw pull (raw_pull.h); one that fails for any reason but a cancel, an
//      unknown cache or a refused token is retried over grpc, and the summary says so (fell_back,
//      with the raw error as reason);
//   3. grpc: the ExportCache stream (stream_pull.h), decoded as messages arrive.
// Either way the header is checked against this agent's ModelIdentity (or PullOptions::identity):
// FAILED_PRECONDITION naming the differing field; checksums (DATA_LOSS), sizes and token ids
// (INVALID_ARGUMENT) and the limits (RESOURCE_EXHAUSTED) as wire::CacheStreamReader checks them.
// The result is a KvCache the caller owns, with PullOptions::reserve_cells free cells after the
// received ones (so that a session can run in it). A raw pull moves the cache as it is (f32,
// exact): PullOptions::dtype and compression apply to grpc only. Pulls for a fuser (layers,
// another model's identity, on_data) use the same transports; on_data sees each (layer, K/V)
// slice as it completes (a stream message, a raw slice's last run). A pull with host_cache stays
// on grpc where raw pulls land in device memory. on_data's own error ends the pull (never
// retried); after a transport's failure the grpc retry reports the same slices complete again,
// so consumers must be idempotent per slice. PulledCache::transport carries what happened to the
// request's summary. A sharer whose GetInfo is UNIMPLEMENTED counts as one without TransportInfo
// (grpc); any other GetInfo error fails the pull (peer_error's codes).
//
// Failure model: a peer that cannot be reached, dies mid-transfer, or stops answering
// (HTTP/2 keepalive pings every 5 s, 5 s timeout; a whole-pull deadline) → UNAVAILABLE; the
// peer's own errors keep their code (NOT_FOUND for an unknown cache there) with the peer named in
// the message, except its UNAUTHENTICATED (this agent's token was refused), which becomes
// PERMISSION_DENIED so that the caller does not read it as its own credentials failing. A
// cancelled request (CancelToken) interrupts the pull at once (CANCELLED). Nothing is kept from a
// failed pull.
//
// Outgoing calls carry this agent's bearer token and, when the agent serves TLS, use TLS with
// root = --tls-client-ca when given, else the agent's own certificate chain (a self-signed or
// shared-CA deployment), presenting the agent's certificate as client certificate (mutual TLS).
//
// Threading: pull() is blocking and thread-safe; run it on the worker pool (post()), never on a
// gRPC reactor callback or the engine thread. stop() (or the destructor) makes pulls answer
// UNAVAILABLE, lets the queued tasks run (quickly, then) and joins the workers.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/channel.h>
#include <grpcpp/client_context.h>

#include "agent/transfer/transfer_factory.h"
#include "agent/transfer/transfer_types.h"
#include "engine/kv_cache.h"
#include "engine/kv_wire.h"
#include "kernels/status.h"
#include "rpc/auth.h"
#include "rpc/metrics.h"
#include "runtime/cancel_token.h"
#include "transport/select.h"

namespace kvb::agent {

struct PeerClientOptions {
  ModelIdentity identity;        // what pulled caches must match
  KvWireLimits limits;           // cells and raw bytes a pulled cache may have
  uint64_t max_message_bytes = 64 << 20;
  bool tls = false;
  std::string tls_root_pem;      // roots that must have signed the peers' certificates
  std::string tls_cert_pem, tls_key_pem;  // this agent's certificate, presented to peers
  std::string auth_token;        // sent as "authorization: Bearer <token>"; empty = none
  std::chrono::milliseconds pull_timeout{std::chrono::minutes(5)};  // whole-transfer deadline
  int n_workers = 4;
  rpc::CallMetrics* metrics = nullptr;  // borrowed, may be null: received bytes are counted there
  // Host memory for pulled caches (borrowed, may be null: cpu_device().buffer_type()), e.g. a
  // BufferPool shared with the engine's sessions.
  const BufferType* cache_buffers = nullptr;
  // This agent as the receiver of a pull (GetInfo's transport_info says the same): the
  // factory's endpoint() when there is one.
  transport::EndpointInfo endpoint;
  // Raw-pull endpoints (borrowed, may be null: grpc only; then `endpoint` must offer neither nccl
  // nor cuda-ipc).
  TransportFactory* transports = nullptr;
  // Per-transfer deadline of a raw pull (OpenTransferRequest.timeout_ms).
  std::chrono::milliseconds transfer_timeout = kDefaultTransferTimeout;
};

// How long a peer's TransportInfo is reused before GetInfo is asked again.
inline constexpr std::chrono::seconds kPeerInfoTtl{30};

class PeerClient {
 public:
  explicit PeerClient(PeerClientOptions opt);
  ~PeerClient();  // stop()
  PeerClient(const PeerClient&) = delete;
  PeerClient& operator=(const PeerClient&) = delete;

  // Pulls cache `cache_id` held by the agent at `agent` ("host:port"). Blocking.
  Result<PulledCache> pull(const std::string& agent, const std::string& cache_id, const PullOptions& opt,
                           runtime::CancelToken& cancel);

  // For other calls to peers (agents, fusers): the shared channel to `address` (created on first
  // use, with this agent's TLS settings and message limits) and a context carrying the bearer
  // token, the pull deadline and `cancel` (whose hook stays set until the returned guard dies).
  std::shared_ptr<grpc::Channel> channel(const std::string& address);
  void prepare(grpc::ClientContext& ctx) const;
  // A peer's gRPC error as this agent reports it: a deadline or a cancel it did not ask for →
  // UNAVAILABLE, a refused token → PERMISSION_DENIED; `what` names the call.
  static Status peer_error(const grpc::Status& gs, const std::string& what);
  // One unary call to a peer (prepare()'s token and deadline, interrupted by `cancel`), its bytes
  // counted in the metrics; errors as peer_error, or CANCELLED when `cancel` fired.
  template <class Stub, class Req, class Resp>
  Status unary(Stub& stub, grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*), const Req& req,
               Resp* resp, runtime::CancelToken& cancel, const std::string& what);
  bool stopping();
  uint64_t max_message_bytes() const { return opt_.max_message_bytes; }
  const transport::EndpointInfo& endpoint() const { return opt_.endpoint; }
  // A peer's TransportInfo, from a GetInfo the caller already made (so that the next pull from
  // that peer need not ask again within kPeerInfoTtl).
  void remember_endpoint(const std::string& agent, const transport::EndpointInfo& info);
  // The sharer at `agent` as an endpoint: its remembered TransportInfo, or a GetInfo (errors as
  // unary's; a sharer without GetInfo offers grpc only).
  Result<transport::EndpointInfo> peer_endpoint(const std::string& agent, runtime::CancelToken& cancel);
  // Asks now (GetInfo) and remembers the answer, however fresh the remembered one is (PeerWarmer).
  Result<transport::EndpointInfo> fetch_endpoint(const std::string& agent, runtime::CancelToken& cancel);
  const PeerClientOptions& options() const { return opt_; }
  rpc::CallMetrics* metrics() const { return opt_.metrics; }

  // Runs `fn` on a worker thread (FIFO). After stop() has begun, runs it on the caller's thread
  // (where pull() answers UNAVAILABLE), so that every posted task runs exactly once.
  void post(std::function<void()> fn);

  // Stops accepting pulls, runs the queued tasks, joins the workers. Idempotent.
  void stop();

 private:
  void worker();
  // The transport `po` asks for, resolved against the sharer at `agent` (transport_choice.h).
  Result<PullTransport> choose_transport(const std::string& agent, const PullOptions& po, runtime::CancelToken& cancel);

  const PeerClientOptions opt_;
  rpc::BearerAuth auth_;
  std::mutex channels_mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;
  struct PeerInfo {
    std::chrono::steady_clock::time_point fetched;
    transport::EndpointInfo endpoint;
  };
  std::map<std::string, PeerInfo> peer_info_;  // guarded by channels_mu_

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> workers_;
};

template <class Stub, class Req, class Resp>
Status PeerClient::unary(Stub& stub, grpc::Status (Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
                         const Req& req, Resp* resp, runtime::CancelToken& cancel, const std::string& what) {
  if (cancel.cancelled()) return cancelled(what + ": the request was cancelled");
  grpc::ClientContext ctx;
  prepare(ctx);
  const runtime::ScopedCancelHook hook(cancel, [&ctx] { ctx.TryCancel(); });
  if (opt_.metrics) opt_.metrics->add_bytes_sent(req.ByteSizeLong());
  const grpc::Status gs = (stub.*method)(&ctx, req, resp);
  if (cancel.cancelled()) return cancelled(what + ": the request was cancelled");
  if (!gs.ok()) return peer_error(gs, what);
  if (opt_.metrics) opt_.metrics->add_bytes_received(resp->ByteSizeLong());
  return Status::Ok();
}

}  // namespace kvb::agent
