// Host-memory stand-ins for the device sides of the cuda-ipc and NCCL transports, so that their
// protocol engines (transport/ipc_engine.h, transport/nccl_engine.h) run in the CPU suite.
//
// HostIpcOps: "handles" are pointers, copies run on a worker thread in chunks.
// FakeNccl:   a process-wide registry of 2-rank "communicators" keyed by unique id; each rank's
//             launches form a stream (in order, one at a time); a worker pairs the two heads
//             (a send with a recv) and copies in chunks. Like NCCL it cannot match tags or check
//             sizes: mismatched heads hang until the engine's deadline aborts.
// Both take the suite's fault injection: chunk size, a delay and a hook after each chunk.
#pragma once

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include "transport/ipc_engine.h"
#include "transport/nccl_engine.h"

namespace kvb::test {

struct FakeDeviceOptions {
  size_t chunk = size_t(1) << 20;
  std::chrono::microseconds chunk_delay{0};
  // After each chunk, on the fake device's thread, with the bytes copied so far of that copy.
  std::function<void(size_t copied)> on_chunk;
  // NCCL only: init completes this long after both ranks joined; each launch reports
  // "enqueuing" for this many comm_state() polls.
  std::chrono::microseconds init_delay{0};
  int enqueue_polls = 1;
  // NCCL only: the communicator fails once this many send/recv pairs have completed, as one whose
  // peer died does (both ranks' comm_state() reports an error; nothing more is copied). 0 = never.
  // The options of the rank that joins first apply.
  int fail_after_pairs = 0;
};

// Counters the tests read (shared by both ends of a pair).
struct FakeDeviceStats {
  std::atomic<int> opens{0}, closes{0}, aborts{0}, finalizes{0};
};

std::unique_ptr<transport::IpcDeviceOps> make_host_ipc_ops(const FakeDeviceOptions& opt,
                                                           std::shared_ptr<FakeDeviceStats> stats);
const transport::TransportCaps& host_ipc_caps();  // name "ipc-host"

// `uuid` stands for the GPU (equal uuids: "one GPU", which the engine refuses).
std::unique_ptr<transport::NcclDeviceOps> make_fake_nccl_ops(int device, std::string uuid, const FakeDeviceOptions& opt,
                                                             std::shared_ptr<FakeDeviceStats> stats);

// The event type the host fakes accept as PostOptions::ready_event.
struct FakeEvent {
  std::atomic<bool> fired{false};
};

}  // namespace kvb::test
