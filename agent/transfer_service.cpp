// AgentService's cache-transfer methods, the sharer's side: ExportCache (the grpc transport) and
// the raw transfers' OpenTransfer, TransferStream and CloseTransfer (transport/README.md). Thin:
// the work is CacheSharer's (agent/transfer/), the streams are ExportCall and TransferStreamCall.
#include <fmt/format.h>

#include "agent/agent_service.h"
#include "agent/transfer/export_call.h"
#include "agent/transfer/transfer_convert.h"
#include "agent/transfer/transfer_stream_call.h"
#include "rpc/call.h"

namespace kvb::agent {

grpc::ServerWriteReactor<grpc::ByteBuffer>* AgentServiceImpl::ExportCache(grpc::CallbackServerContext* ctx,
                                                                          const grpc::ByteBuffer* req) {
  return new ExportCall(*d_.sharer, d_.call_policy(), ctx, *req);
}

grpc::ServerUnaryReactor* AgentServiceImpl::OpenTransfer(grpc::CallbackServerContext* ctx,
                                                         const pb::OpenTransferRequest* req,
                                                         pb::OpenTransferResponse* resp) {
  auto* call = new rpc::UnaryCall(*d_.metrics, "OpenTransfer", ctx);
  Status st = rpc::admit(d_.call_policy(), *ctx, *req);
  if (st.ok() && !d_.sharer->serves_transfers()) st = CacheSharer::no_transfers();
  if (!st.ok()) {
    call->complete(std::move(st));
    return call;
  }
  // Creating an endpoint may block (NCCL draws its unique id, starting its bootstrap network).
  d_.peers->post([this, call, req, resp, peer = ctx->peer()] {
    auto opened = d_.sharer->open_transfer(convert_open_transfer(*req, peer));
    if (opened.ok()) {
      to_proto(*opened, resp);
      d_.metrics->add_bytes_sent(resp->ByteSizeLong());
    }
    call->complete(opened.status());
  });
  return call;
}

grpc::ServerBidiReactor<pb::TransferFrame, pb::TransferFrame>* AgentServiceImpl::TransferStream(
    grpc::CallbackServerContext* ctx) {
  return new TransferStreamCall(*d_.sharer, d_.call_policy(), ctx);
}

grpc::ServerUnaryReactor* AgentServiceImpl::CloseTransfer(grpc::CallbackServerContext* ctx,
                                                          const pb::CloseTransferRequest* req,
                                                          pb::CloseTransferResponse*) {
  auto* call = new rpc::UnaryCall(*d_.metrics, "CloseTransfer", ctx);
  Status st = rpc::admit(d_.call_policy(), *ctx, *req);
  if (st.ok() && (req->code() < 0 || req->code() > int(StatusCode::kUnauthenticated))) {
    st = invalid_argument(fmt::format("code: {} is not a gRPC status code", req->code()));
  }
  if (!st.ok() || !d_.sharer->serves_transfers()) {  // without sessions there is nothing to close: OK
    call->complete(std::move(st));
    return call;
  }
  const Status outcome = req->code() == 0 ? Status::Ok() : Status(StatusCode(req->code()), req->message());
  const transport::TransferId id{req->session_hi(), req->session_lo()};
  // The close waits for the endpoint's teardown (cuda-ipc: the receiver's UNMAPPED): off the reactor.
  d_.peers->post([this, call, id, outcome] { call->complete(d_.sharer->close(id, outcome)); });
  return call;
}

}  // namespace kvb::agent
