// ExportCall: one ExportCache stream, the sharer's gRPC side of a grpc pull (agent.proto). The
// request is admitted (rpc::admit) and converted (transfer_convert.h), CacheSharer::open_export
// gives the cache and its encoder, and the messages are written raw: as byte buffers whose
// payload slices are the cache's own memory (f32, no compression) or the encoder's output, never
// copied into a protobuf message and serialized again. A slice keeps what it points into alive
// (the cache, or the payload string) until the transport is done with it, which may be after this
// call ended. One write is in flight while the next message is encoded.
//
// Ownership: deletes itself when gRPC is done with it (OnDone); borrows the sharer and what
// `policy` points to, which outlive the server. Threading: gRPC's callback threads.
#pragma once

#include <memory>
#include <mutex>

#include <grpcpp/grpcpp.h>

#include "agent/transfer/cache_sharer.h"
#include "engine/kv_wire.h"
#include "proto/wire_convert.h"
#include "rpc/call.h"

namespace kvb::agent {

class ExportCall final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  ExportCall(CacheSharer& sharer, const rpc::CallPolicy& policy, grpc::CallbackServerContext* ctx,
             const grpc::ByteBuffer& raw);

  void OnWriteDone(bool ok) override;
  void OnDone() override;

 private:
  Status start(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer& raw);
  // The message as slices: head and tail copied (a few bytes), the payload by reference.
  grpc::ByteBuffer to_byte_buffer(wire::SerializedChunk& m) const;
  // Keeps one write in flight and, while it is on the wire, encodes the next message into next_
  // (outside the lock). OnWriteDone may run on another thread while a message is being encoded;
  // whoever finds the write slot free and a message ready starts it. Finish is called without the
  // lock held, as the last action on `this`.
  void advance(std::unique_lock<std::mutex> lock);
  // True when this call should Finish now (only once).
  bool finish_locked(Status st);

  CacheSharer& sharer_;
  const rpc::CallPolicy policy_;
  rpc::CallLog log_;
  Status status_;
  ExportSource source_;  // the cache (kept alive even if dropped meanwhile) and its encoder
  std::unique_ptr<wire::SerializedStreamWriter> writer_;
  wire::SerializedChunk message_;  // being prepared
  std::mutex mu_;
  grpc::ByteBuffer current_, next_;  // on the wire / ready
  bool writing_ = false, producing_ = false, next_ready_ = false, exhausted_ = false, finished_ = false;
};

}  // namespace kvb::agent
