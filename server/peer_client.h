// PeerClient: this agent pulling context caches directly from other agents (ExportCache).
//
// A Generate/Prefill that names a cache held by another agent is served by pulling that cache
// here, never through the client: PeerClient opens (and keeps) one gRPC channel per peer address,
// calls ExportCache with the request's pull options (dtype, compression), and feeds the stream
// through wire::CacheStreamReader, which checks the header against this agent's ModelIdentity
// (FAILED_PRECONDITION naming the differing field), every chunk's checksum and the trailer digest
// (DATA_LOSS), sizes and token ids (INVALID_ARGUMENT), and the limits (RESOURCE_EXHAUSTED), and
// yields a host KvCache that the caller owns, decoded chunk by chunk as messages arrive, with
// PullOptions::reserve_cells free cells after the received ones (so that a session can run in it).
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

#include "engine/kv_cache.h"
#include "engine/kv_wire.h"
#include "kernels/status.h"
#include "server/auth.h"
#include "server/cancel_token.h"
#include "server/metrics.h"
#include "server/request_convert.h"

namespace kvb::server {

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
  Metrics* metrics = nullptr;    // borrowed, may be null: received bytes are counted there
  // Host memory for pulled caches (borrowed, may be null: cpu_device().buffer_type()), e.g. a
  // BufferPool shared with the engine's sessions.
  const BufferType* cache_buffers = nullptr;
};

struct PulledCache {
  std::unique_ptr<KvCache> cache;  // never null on success; nobody else holds it
  uint64_t wire_bytes = 0;         // serialized CacheChunk bytes received
};

class PeerClient {
 public:
  explicit PeerClient(PeerClientOptions opt);
  ~PeerClient();  // stop()
  PeerClient(const PeerClient&) = delete;
  PeerClient& operator=(const PeerClient&) = delete;

  // Pulls cache `cache_id` held by the agent at `agent` ("host:port"). Blocking.
  Result<PulledCache> pull(const std::string& agent, const std::string& cache_id, const PullOptions& opt,
                           CancelToken& cancel);

  // For other calls to peers (agents, fusers): the shared channel to `address` (created on first
  // use, with this agent's TLS settings and message limits) and a context carrying the bearer
  // token, the pull deadline and `cancel` (whose hook stays set until the returned guard dies).
  std::shared_ptr<grpc::Channel> channel(const std::string& address);
  void prepare(grpc::ClientContext& ctx) const;
  // A peer's gRPC error as this agent reports it: a deadline or a cancel it did not ask for →
  // UNAVAILABLE, a refused token → PERMISSION_DENIED; `what` names the call.
  static Status peer_error(const grpc::Status& gs, const std::string& what);
  bool stopping();
  uint64_t max_message_bytes() const { return opt_.max_message_bytes; }
  Metrics* metrics() const { return opt_.metrics; }

  // Runs `fn` on a worker thread (FIFO). After stop() has begun, runs it on the caller's thread
  // (where pull() answers UNAVAILABLE), so that every posted task runs exactly once.
  void post(std::function<void()> fn);

  // Stops accepting pulls, runs the queued tasks, joins the workers. Idempotent.
  void stop();

 private:
  void worker();

  const PeerClientOptions opt_;
  BearerAuth auth_;
  std::mutex channels_mu_;
  std::map<std::string, std::shared_ptr<grpc::Channel>> channels_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> workers_;
};

}  // namespace kvb::server
