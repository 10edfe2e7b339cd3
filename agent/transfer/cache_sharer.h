// CacheSharer: the sharer's side of cache transfers — this agent handing the caches it holds to
// other agents. Two ways out:
//   - open_export: an ExportCache stream (the grpc transport). The stored cache, staged to host
//     memory on a GPU (so the bytes on the wire are the same whatever the device), and a
//     KvWireEncoder over it whose chunks fit the message limit (~1 MiB unless asked otherwise).
//     The stream itself is written by ExportCall (export_call.h).
//   - open_transfer / take_stream / close: a raw transfer (nccl, cuda-ipc) run by
//     TransferSessions, after the transport asked for is checked against what this agent would
//     select for the pair (transport_choice.h).
// Protobuf-free; the gRPC glue is export_call.h, transfer_stream_call.h and the agent's
// transfer_service.cpp.
//
// Errors: NOT_FOUND for an unknown cache; INVALID_ARGUMENT for a bad id, transport or layers;
// FAILED_PRECONDITION for a pair the transport cannot serve; RESOURCE_EXHAUSTED for a cache
// whose header alone exceeds the message limit, or too many open sessions; UNIMPLEMENTED when
// this agent serves no raw transfers. Threading: every method is thread-safe; open_transfer and
// close may block (endpoint set-up and teardown): call them off gRPC's reactor threads.
// Ownership: borrows everything it is given; all of it must outlive the sharer.
#pragma once

#include <cstdint>
#include <memory>

#include "agent/transfer/transfer_sessions.h"
#include "agent/transfer/transfer_types.h"
#include "engine/kv_wire.h"
#include "kernels/status.h"
#include "runtime/cache_staging.h"
#include "runtime/cache_store.h"
#include "transport/byte_pipe.h"
#include "transport/select.h"

namespace kvb::agent {

// One ExportCache stream's source: the cache (kept alive even if dropped meanwhile) and its encoder.
struct ExportSource {
  std::shared_ptr<const KvCache> cache;  // in host memory
  std::unique_ptr<KvWireEncoder> encoder;
};

class CacheSharer {
 public:
  // `self`: this agent as an endpoint (its TransportFactory's). `sessions` may be null: no raw
  // transfers. `max_message_bytes`: --max-message-bytes, which every exported message must fit.
  CacheSharer(runtime::CacheStore& store, runtime::CacheStager& stager, const ModelIdentity& identity,
              transport::EndpointInfo self, TransferSessions* sessions, uint64_t max_message_bytes);

  Result<ExportSource> open_export(const ExportSpec& spec);

  bool serves_transfers() const { return sessions_ != nullptr; }
  // UNIMPLEMENTED when !serves_transfers(), as every raw-transfer method answers then.
  static Status no_transfers();
  Result<OpenedTransfer> open_transfer(const OpenTransferSpec& spec);
  // The session's control pipe, for its TransferStream call (TransferSessions::take_stream).
  Result<std::unique_ptr<transport::BytePipe>> take_stream(const transport::TransferId& id);
  // Ends a session (TransferSessions::close); OK when there are no sessions at all.
  Status close(const transport::TransferId& id, const Status& receiver_outcome);

 private:
  runtime::CacheStore& store_;
  runtime::CacheStager& stager_;
  const ModelIdentity& identity_;
  const transport::EndpointInfo self_;
  TransferSessions* const sessions_;
  const uint64_t max_message_bytes_;
};

}  // namespace kvb::agent
