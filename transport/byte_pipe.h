// BytePipe: an ordered, reliable, message-oriented duplex pipe between two endpoints.
//
// The "grpc" transport (grpc_stream_transport.h) moves its frames over one, and the cuda-ipc
// transport its control messages (offers, acks, releases). In an agent it is one gRPC
// bidirectional stream (each message one `bytes` field; transport/README.md has the proto);
// in tests it is make_memory_pipe() (in memory, with fault injection) or a socket.
//
// Threading: send() and close() may be called from any thread; recv() by one thread at a time.
#pragma once

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include "kernels/status.h"
#include "transport/kv_transport.h"

namespace kvb::transport {

class BytePipe {
 public:
  virtual ~BytePipe() = default;
  // Queues one message, the concatenation of `pieces` (copied before returning). Blocks while the
  // pipe's send window is full, until `deadline`: then DEADLINE_EXCEEDED and nothing was queued.
  // UNAVAILABLE once the pipe is closed or broken. Messages queued by one thread stay in order.
  virtual Status send(std::span<const std::string_view> pieces, Clock::time_point deadline) = 0;
  Status send(std::string_view message, Clock::time_point deadline) { return send({&message, 1}, deadline); }
  // The next message, waiting until `deadline`: nullopt when none arrived by then. UNAVAILABLE
  // once the pipe is broken, or closed (by either end) and every message sent before was read.
  virtual Result<std::optional<std::string>> recv(Clock::time_point deadline) = 0;
  // Closes both directions (a stream's end): wakes blocked calls; later sends fail UNAVAILABLE; the
  // peer still reads what was sent before. Idempotent.
  virtual void close() = 0;
};

struct MemoryPipeOptions {
  size_t window_bytes = size_t(64) << 20;  // bytes in flight per direction before send() blocks
  std::chrono::microseconds latency{0};    // a message is readable this long after send()
  // ---- fault injection (tests) ----
  std::chrono::microseconds send_delay{0};  // each send() sleeps this long first: a slow link
  // Called at the start of each send() (the sender's thread, no lock held) with the message size:
  // tests block here to freeze a transfer between two messages.
  std::function<void(size_t bytes)> on_send;
};

// Fault injection for an in-memory pipe pair (tests).
class MemoryPipeFaults {
 public:
  virtual ~MemoryPipeFaults() = default;
  // Both ends fail at once with UNAVAILABLE, queued messages lost: the peer crashed, the TCP
  // connection was reset.
  virtual void break_pipe() = 0;
  // While stalled, nothing is delivered in either direction (a hung peer or network); the windows
  // fill up and send() blocks.
  virtual void set_stalled(bool stalled) = 0;
  virtual uint64_t messages_sent() const = 0;  // both directions
};

struct MemoryPipePair {
  std::unique_ptr<BytePipe> a, b;
  std::shared_ptr<MemoryPipeFaults> faults;
};
MemoryPipePair make_memory_pipe(const MemoryPipeOptions& opt = {});

}  // namespace kvb::transport
