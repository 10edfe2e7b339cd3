// InProcessTransport: two endpoints in one process, moving host memory with memcpy.
//
// The reference implementation of kv_transport.h, and what tests use: a pair shares one copy
// thread, which copies each matched (send, recv) in chunks of `copy_chunk` bytes and checks for
// cancellation, deadlines and aborts between chunks. It supports host memory only, any posting
// order and both directions.
//
// Semantics it shares with the other transports (the suite in tests/transport checks them all):
//   - a send and a recv with one tag match in posting order per tag (FIFO);
//   - cancelling a send before it matched leaves a cancel notice in its place: the peer's recv
//     for that tag ends with CANCELLED ("the peer cancelled"); cancelling a recv before it matched
//     is local (the send waits for the next recv with that tag, or its deadline);
//   - a cancel, deadline or abort during the copy stops it at the next chunk boundary and ends
//     both sides (the other one with the same code, "peer: …");
//   - destroying one endpoint fails the other's transfers in flight and later posts with
//     UNAVAILABLE (the dead-peer case).
// metadata() is an envelope naming the pair; connect() accepts only the other endpoint of the
// same pair. Transfers match once both endpoints are connected.
//
// Threading: as kv_transport.h; the copy thread also calls options.on_chunk (no lock held).
#pragma once

#include <chrono>
#include <functional>
#include <memory>

#include "transport/kv_transport.h"

namespace kvb::transport {

struct InProcessOptions {
  std::chrono::milliseconds timeout{std::chrono::seconds(30)};  // default transfer deadline
  size_t copy_chunk = size_t(1) << 20;  // bytes copied between checks for cancel/deadline/abort
  // ---- fault injection (tests) ----
  std::chrono::microseconds chunk_delay{0};  // sleep after each chunk: a slow link
  // Called on the copy thread after each chunk, with no lock held: `copied` bytes of the send
  // `send_id` have landed. Tests block here to cancel or destroy transfers mid-copy.
  std::function<void(const TransferId& send_id, size_t copied)> on_chunk;
};

class InProcessTransport {
 public:
  struct Pair {
    std::unique_ptr<KvTransport> sharer, receiver;
  };
  // A sharer and a receiver endpoint. Each still needs the other's metadata() in connect().
  static Pair create_pair(const InProcessOptions& opt = {});
  static const TransportCaps& capabilities();  // name "in-process"
};

}  // namespace kvb::transport
