#include "transport/select.h"

#include <fmt/format.h>

namespace kvb::transport {

std::string_view transport_name(TransportKind k) {
  switch (k) {
    case TransportKind::kGrpc:
      return "grpc";
    case TransportKind::kNccl:
      return "nccl";
    case TransportKind::kCudaIpc:
      return "cuda-ipc";
  }
  return "?";
}

std::string_view transport_name(TransportChoice c) {
  switch (c) {
    case TransportChoice::kAuto:
      return "auto";
    case TransportChoice::kGrpc:
      return "grpc";
    case TransportChoice::kNccl:
      return "nccl";
    case TransportChoice::kCudaIpc:
      return "cuda-ipc";
  }
  return "?";
}

Result<TransportChoice> parse_transport(std::string_view name) {
  if (name == "auto") return TransportChoice::kAuto;
  if (name == "grpc") return TransportChoice::kGrpc;
  if (name == "nccl") return TransportChoice::kNccl;
  if (name == "cuda-ipc") return TransportChoice::kCudaIpc;
  return invalid_argument(fmt::format("transport \"{}\": expected grpc, nccl, cuda-ipc or auto", name));
}

std::string why_not(TransportKind kind, const EndpointInfo& s, const EndpointInfo& r, const SelectOptions& opt) {
  const bool one_host = !s.host_id.empty() && s.host_id == r.host_id;
  const bool on_gpus = !s.gpu_uuid.empty() && !r.gpu_uuid.empty();
  const bool one_gpu = on_gpus && s.gpu_uuid == r.gpu_uuid;
  switch (kind) {
    case TransportKind::kGrpc:
      return {};
    case TransportKind::kCudaIpc:
      if (!on_gpus) return fmt::format("the {}'s caches are not on a GPU", s.gpu_uuid.empty() ? "sharer" : "receiver");
      if (!s.cuda_ipc || !r.cuda_ipc) return fmt::format("the {} has no cuda-ipc", !s.cuda_ipc ? "sharer" : "receiver");
      if (!one_host) return "the agents are on different hosts";
      if (!one_gpu && !opt.peer_access) return "the two GPUs cannot access each other (no peer access)";
      return {};
    case TransportKind::kNccl:
      if (!on_gpus) return fmt::format("the {}'s caches are not on a GPU", s.gpu_uuid.empty() ? "sharer" : "receiver");
      if (!s.nccl || !r.nccl) return fmt::format("the {} has no NCCL", !s.nccl ? "sharer" : "receiver");
      if (one_gpu) return "both caches are on one GPU, where NCCL cannot run two ranks";
      return {};
  }
  return "unknown transport";
}

Result<Selection> select_transport(TransportChoice choice, const EndpointInfo& s, const EndpointInfo& r,
                                   const SelectOptions& opt) {
  Selection sel;
  if (choice == TransportChoice::kAuto) {
    std::string skipped;
    for (const TransportKind k : {TransportKind::kCudaIpc, TransportKind::kNccl}) {
      const std::string why = why_not(k, s, r, opt);
      if (why.empty()) {
        sel.kind = k;
        sel.reason = fmt::format("auto: {}{}", transport_name(k), skipped.empty() ? "" : " (" + skipped + ")");
        return sel;
      }
      skipped += fmt::format("{}{}: {}", skipped.empty() ? "" : "; ", transport_name(k), why);
    }
    sel.kind = TransportKind::kGrpc;
    sel.reason = "auto: grpc (" + skipped + ")";
    return sel;
  }
  const TransportKind want = choice == TransportChoice::kGrpc  ? TransportKind::kGrpc
                             : choice == TransportChoice::kNccl ? TransportKind::kNccl
                                                                : TransportKind::kCudaIpc;
  const std::string why = why_not(want, s, r, opt);
  if (why.empty()) {
    sel.kind = want;
    sel.reason = fmt::format("{} as asked", transport_name(want));
    return sel;
  }
  if (opt.strict) return failed_precondition(fmt::format("transport {} cannot serve this pair: {}", transport_name(want), why));
  sel.kind = TransportKind::kGrpc;
  sel.fell_back = true;
  sel.reason = fmt::format("{} asked, grpc used: {}", transport_name(want), why);
  return sel;
}

}  // namespace kvb::transport
