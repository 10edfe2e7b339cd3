// Choosing a transport for one pull (pure logic; the agents call it during negotiation).
//
// Names: "grpc" | "nccl" | "cuda-ipc" | "auto" (agent flag --transport, the negotiation message).
// "auto" prefers, for each pair of endpoints:
//   cuda-ipc  both on one host (equal host ids), both caches on a GPU, both built with cuda-ipc,
//             and either one GPU or two that can reach each other (peer access)
//   nccl      both caches on a GPU, different GPUs, both built with NCCL
//   grpc      always (the ExportCache stream), the fallback for everything else
// An explicit choice that the pair cannot use falls back to grpc with the reason (fell_back), or
// is FAILED_PRECONDITION when strict. Both agents run the same function on the same two
// EndpointInfos, so they agree without another round trip; the sharer re-checks the receiver's
// choice (a mismatch is FAILED_PRECONDITION).
#pragma once

#include <string>
#include <string_view>

#include "kernels/status.h"

namespace kvb::transport {

enum class TransportKind { kGrpc, kNccl, kCudaIpc };
enum class TransportChoice { kAuto, kGrpc, kNccl, kCudaIpc };

std::string_view transport_name(TransportKind k);      // "grpc" | "nccl" | "cuda-ipc"
std::string_view transport_name(TransportChoice c);    // the above or "auto"
// INVALID_ARGUMENT (naming the accepted values) for anything else; case-sensitive.
Result<TransportChoice> parse_transport(std::string_view name);

// What one agent tells the other about itself (GetInfo / the negotiation request).
struct EndpointInfo {
  std::string host_id;   // local_host_id() (metadata.h); empty: unknown, never "one host"
  std::string gpu_uuid;  // the GPU that holds this agent's caches ("GPU-…"); empty: host caches
  bool nccl = false;     // built with kvbridge::transport_nccl, and a GPU
  bool cuda_ipc = false; // built with kvbridge::transport_cuda, and a GPU that supports IPC
};

struct SelectOptions {
  bool strict = false;       // an explicit choice the pair cannot use is an error, not grpc
  // The receiver's cudaDeviceCanAccessPeer(its GPU, the sharer's GPU), for two GPUs on one host.
  bool peer_access = false;
};

struct Selection {
  TransportKind kind = TransportKind::kGrpc;
  bool fell_back = false;  // an explicit choice could not be used: grpc instead
  std::string reason;      // why this one: for logs and the negotiation reply
};

Result<Selection> select_transport(TransportChoice choice, const EndpointInfo& sharer, const EndpointInfo& receiver,
                                   const SelectOptions& opt = {});

// Why `kind` cannot serve this pair; empty when it can (grpc always can).
std::string why_not(TransportKind kind, const EndpointInfo& sharer, const EndpointInfo& receiver,
                    const SelectOptions& opt = {});

}  // namespace kvb::transport
