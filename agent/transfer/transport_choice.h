// Every transport-kind decision of a cache transfer between agents, in one place, on top of
// transport::select_transport (the pure pair rule both sides share):
//   - the receiver's pull: which transport (choose_pull_transport), and after a raw pull failed,
//     whether and how it falls back to grpc (retry_over_grpc, fall_back_to_grpc);
//   - the sharer's OpenTransfer: the transport asked for, checked against what the sharer itself
//     would select for the pair (sharer_transport);
//   - both sides' endpoints: whether one owns the session's control pipe (endpoint_owns_control).
// Protobuf-free; pure functions.
#pragma once

#include <string_view>

#include "agent/transfer/transfer_types.h"
#include "kernels/status.h"
#include "transport/select.h"

namespace kvb::agent {

// Whether choosing needs the sharer's TransportInfo: every choice but plain grpc does.
bool needs_sharer_info(transport::TransportChoice requested);

// The transport of one pull, `po.transport` resolved against the sharer and this agent (the
// receiver). A pull with po.host_cache stays on grpc when raw pulls land in device memory
// (`raw_lands_on_device`). INTERNAL when a raw transport is selected but the receiver has none
// (`has_raw_transports`: it advertised what it cannot serve).
Result<PullTransport> choose_pull_transport(const PullOptions& po, const transport::EndpointInfo& sharer,
                                            const transport::EndpointInfo& receiver, bool has_raw_transports,
                                            bool raw_lands_on_device);

// After a raw pull failed with `error`: true when grpc should be tried instead — not when the
// pull's own consumer failed (`consumer_failed`), the request was cancelled, the cache is unknown
// or this agent's token was refused (grpc would fail the same way).
bool retry_over_grpc(const Status& error, bool consumer_failed, bool cancelled);
// Marks `chosen` as grpc after `failed` could not move the cache, with `error` as the reason.
void fall_back_to_grpc(PullTransport& chosen, transport::TransportKind failed, const Status& error);

// OpenTransfer's transport: `requested` must be nccl or cuda-ipc (INVALID_ARGUMENT otherwise: grpc
// pulls use ExportCache, and the receiver resolves auto) and what this agent, the sharer, selects
// for the pair with the receiver's own rule (FAILED_PRECONDITION when it would select another).
Result<transport::TransportKind> sharer_transport(std::string_view requested, const transport::EndpointInfo& sharer,
                                                  const transport::EndpointInfo& receiver);

// Whether an endpoint of `kind` speaks on the session's control pipe itself (cuda-ipc: handles,
// acks, UNMAPPED) or leaves it to the session, which only watches it for the peer's end (nccl).
bool endpoint_owns_control(transport::TransportKind kind);

}  // namespace kvb::agent
