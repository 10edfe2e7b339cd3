// TransferSessions: the sharer's side of raw cache transfers (OpenTransfer → TransferStream →
// CloseTransfer, transport/README.md).
//
// open() creates one endpoint per session from the TransportFactory, registers the cache's memory,
// binds the endpoint to the receiver's metadata and starts a worker thread that posts one send
// per slice (transport/kv_slices.h order, each with the session's deadline) and waits for them.
// The session then holds its endpoint, and the cache, until the receiver closes it or until the
// session's timeout passes once the sends ended (an abandoned session expires on its own): a
// cuda-ipc receiver may still be mapping the cache until the close, whose teardown waits for its
// UNMAPPED (transport/ipc_engine.h).
//
// Every session has a control pipe: one end is the cuda-ipc endpoint's (or, for NCCL, the
// session's own, watched for the stream's end), the other is handed once to the TransferStream
// call (take_stream). A control stream that ends before the sends did aborts them with UNAVAILABLE
// — NCCL cannot notice a dead peer before the deadline on its own.
//
// Ownership: a session keeps a reference to its cache (a shared_ptr from the store), so a drop or
// an eviction in the store never frees memory a transfer reads. Threading: every method is
// thread-safe; close() and the destructor block until the session's worker has torn the endpoint
// down (at most the transport's release timeout): call them off gRPC's reactor threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "agent/transfer/transfer_factory.h"
#include "agent/transfer/transfer_types.h"
#include "engine/kv_cache.h"
#include "engine/kv_wire.h"
#include "kernels/status.h"
#include "transport/kv_slices.h"
#include "transport/kv_transport.h"
#include "transport/select.h"

namespace kvb::agent {

struct SharerSessionSpec {
  std::string cache_id;                  // for logs
  std::shared_ptr<const KvCache> cache;  // kept until the session ends
  transport::TransportKind kind = transport::TransportKind::kNccl;
  std::optional<KvLayerSet> layers;      // absent: every layer
  uint32_t chunk_tokens = 0;             // plan_kv_slices' chunk (0: one slice per layer and K|V)
  std::chrono::milliseconds timeout = kDefaultTransferTimeout;  // the sends' deadline, and the hold
  std::string receiver_metadata;         // the receiver endpoint's metadata()
  std::string peer;                      // the receiver's gRPC peer, for logs
};

struct OpenedSession {
  transport::TransferId id;
  std::string metadata;                    // the sharer endpoint's metadata(), for the receiver
  std::vector<transport::KvSlice> plan;    // what the sends carry, in posting order
};

class TransferSessions {
 public:
  static constexpr size_t kDefaultMaxSessions = 64;

  // `factory` is borrowed and must outlive this table.
  explicit TransferSessions(TransportFactory& factory, size_t max_sessions = kDefaultMaxSessions);
  // Ends every session (UNAVAILABLE: the agent is shutting down) and joins the workers.
  ~TransferSessions();
  TransferSessions(const TransferSessions&) = delete;
  TransferSessions& operator=(const TransferSessions&) = delete;

  // Starts a session. INVALID_ARGUMENT for bad layers, an empty cache, or receiver metadata the
  // endpoint rejects; FAILED_PRECONDITION for a pair the transport cannot serve; UNIMPLEMENTED for
  // a transport the factory does not offer; RESOURCE_EXHAUSTED when max_sessions are open.
  Result<OpenedSession> open(SharerSessionSpec spec);
  // The session's end of its control pipe, for its TransferStream call: once (ALREADY_EXISTS the
  // second time); NOT_FOUND for an unknown, closed or expired session.
  Result<std::unique_ptr<transport::BytePipe>> take_stream(const transport::TransferId& id);
  // Ends a session: sends still in flight are aborted (with `receiver_outcome` when it is an
  // error, CANCELLED otherwise), the endpoint and the cache are released. Blocks until done.
  // Idempotent: OK for an unknown, closed or expired session.
  Status close(const transport::TransferId& id, const Status& receiver_outcome);
  // Sessions not yet torn down.
  size_t active();

 private:
  struct Session;
  void run(Session& s);
  // Removes (and joins) sessions whose worker finished on its own (expired). Returns them so that
  // the joins happen outside mu_.
  std::vector<std::unique_ptr<Session>> reap_locked();

  TransportFactory& factory_;
  const size_t max_sessions_;
  std::mutex mu_;
  std::map<transport::TransferId, std::unique_ptr<Session>> sessions_;  // guarded by mu_
};

}  // namespace kvb::agent
