#include "agent/transfer/transport_choice.h"

#include <fmt/format.h>

#include <string>

namespace kvb::agent {

using transport::TransportChoice;
using transport::TransportKind;

bool needs_sharer_info(TransportChoice requested) { return requested != TransportChoice::kGrpc; }

Result<PullTransport> choose_pull_transport(const PullOptions& po, const transport::EndpointInfo& sharer,
                                            const transport::EndpointInfo& receiver, bool has_raw_transports,
                                            bool raw_lands_on_device) {
  PullTransport out;
  out.requested = po.transport;
  if (!needs_sharer_info(po.transport)) {
    out.selection.reason = "grpc as asked";
    return out;
  }
  KVB_ASSIGN_OR_RETURN(out.selection, transport::select_transport(po.transport, sharer, receiver));
  if (out.selection.kind == TransportKind::kGrpc) return out;
  if (po.host_cache && has_raw_transports && raw_lands_on_device) {
    out.selection.kind = TransportKind::kGrpc;
    out.selection.fell_back = po.transport != TransportChoice::kAuto;
    out.selection.reason = "this cache is read in host memory (sent on to a remote fuser), and raw transports "
                           "land caches in device memory";
  } else if (!has_raw_transports) {
    // select_transport checks both ends' flags, and this agent advertised none without a factory.
    return internal_error(fmt::format("transport {} selected, but this agent has no raw transports",
                                      transport::transport_name(out.selection.kind)));
  }
  return out;
}

bool retry_over_grpc(const Status& error, bool consumer_failed, bool cancelled) {
  const StatusCode code = error.code();
  return !(consumer_failed || cancelled || code == StatusCode::kCancelled || code == StatusCode::kNotFound ||
           code == StatusCode::kPermissionDenied);
}

void fall_back_to_grpc(PullTransport& chosen, TransportKind failed, const Status& error) {
  chosen.selection.kind = TransportKind::kGrpc;
  chosen.selection.fell_back = true;
  chosen.selection.reason =
      fmt::format("{} failed ({}: {}); pulled over grpc instead", transport::transport_name(failed),
                  status_code_name(error.code()), error.message());
}

Result<TransportKind> sharer_transport(std::string_view requested, const transport::EndpointInfo& sharer,
                                       const transport::EndpointInfo& receiver) {
  auto choice = transport::parse_transport(requested);
  if (!choice.ok()) return choice.status().with_context("transport");
  TransportKind kind;
  if (*choice == TransportChoice::kNccl) {
    kind = TransportKind::kNccl;
  } else if (*choice == TransportChoice::kCudaIpc) {
    kind = TransportKind::kCudaIpc;
  } else {
    return invalid_argument(fmt::format("transport: OpenTransfer moves caches over nccl or cuda-ipc, not {} "
                                        "(grpc pulls use ExportCache; the receiver resolves auto)",
                                        requested));
  }
  // The receiver chose with select_transport; the same function, on the same two endpoints, must
  // agree here.
  transport::SelectOptions so;
  so.strict = true;
  auto sel = transport::select_transport(*choice, sharer, receiver, so);
  if (!sel.ok()) return failed_precondition(std::string(sel.status().message()));
  if (sel->kind != kind) {
    return failed_precondition(fmt::format("transport {} is not what this agent selects for the pair ({}: {})",
                                           requested, transport::transport_name(sel->kind), sel->reason));
  }
  return kind;
}

bool endpoint_owns_control(TransportKind kind) { return kind == TransportKind::kCudaIpc; }

}  // namespace kvb::agent
