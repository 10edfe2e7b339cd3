// GrpcStreamTransport ("grpc"): KvTransport semantics over an ordered byte stream (a BytePipe).
//
// The gRPC path, as a transport. Two things carry KV caches over gRPC in kvbridge:
//   1. ExportCache (agent/transfer/export_call.cpp → agent/transfer/stream_pull.cpp): the receiver pulls a
//      whole cache as kv_wire messages (header, checksummed chunks, trailer), converting dtypes
//      and compressing on the way. It stays the default path for "grpc" and needs nothing from
//      this file: an agent that selects "grpc" (transport/select.h) keeps calling ExportCache.
//   2. This class: the same post → poll semantics as NCCL and cuda-ipc, over any BytePipe, for
//      callers that want one code path for every transport (the fuser's per-layer consumer).
//      In an agent the pipe is one bidirectional gRPC stream whose messages are the frames below,
//      each as one `bytes` field; the tests use an in-memory pipe.
//
// Frames (little-endian, one per pipe message):
//   DATA   u8 1, u64 sid, u64 tag, u64 total, u64 offset, payload (≤ max_frame_bytes)
//   CANCEL u8 2, u64 sid, u64 tag, u32 code, str message   — the send `sid` ended without its bytes
//   BYE    u8 3, str reason                                 — the endpoint is going away
// A send is cut into DATA frames in order (sid: the sender's counter); sends go out one after the
// other, in posting order. A send is kDone when its last frame was accepted by the pipe (as a
// gRPC write completion: delivery is the stream's business). A recv is kDone when every byte
// landed. Frames for a tag nobody posted a recv for yet are buffered, up to
// max_unmatched_bytes; beyond that the reader stops reading (backpressure) until a recv is posted.
//
// Cancellation: a send that fails before all its frames were accepted sends CANCEL: the matching
// recv (posted now or later; FIFO per tag) ends with the same code, "peer: …". A recv cancelled
// locally drops the rest of its stream; the send side is not told (its bytes are already on the
// way). BYE, a broken pipe, or an abort fail everything in flight with UNAVAILABLE.
//
// Host memory only; any order; both directions. Threading: as kv_transport.h; each endpoint runs
// a writer thread and a reader thread.
#pragma once

#include <chrono>
#include <memory>

#include "transport/byte_pipe.h"
#include "transport/kv_transport.h"

namespace kvb::transport {

struct StreamOptions {
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};  // default transfer deadline
  size_t max_frame_bytes = size_t(1) << 20;     // payload bytes per DATA frame (under gRPC's message limit)
  size_t max_unmatched_bytes = size_t(256) << 20;  // bytes buffered for recvs not posted yet
};

class GrpcStreamTransport {
 public:
  // One endpoint over `pipe` (owned; closed when the transport is destroyed).
  static std::unique_ptr<KvTransport> create(Role role, std::unique_ptr<BytePipe> pipe, const StreamOptions& opt = {});
  static const TransportCaps& capabilities();  // name "grpc"
};

}  // namespace kvb::transport
