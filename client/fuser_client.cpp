#include "client/fuser_client.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <optional>
#include <thread>

#include "proto/grpc_status.h"
#include "rpc/parsed_stream.h"

namespace kvb::client {

FuserClient::FuserClient(std::string addr, ClientChannel channel)
    : addr_(std::move(addr)), channel_(std::move(channel)), stub_(v1::FuserService::NewStub(channel_.channel)) {}

FuserClient::~FuserClient() = default;

Result<std::unique_ptr<FuserClient>> FuserClient::connect(const std::string& addr, const ClientOptions& options) {
  KVB_ASSIGN_OR_RETURN(ClientChannel ch, open_channel(addr, options));
  return std::unique_ptr<FuserClient>(new FuserClient(addr, std::move(ch)));
}

Result<v1::FuserInfo> FuserClient::get_info() {
  grpc::ClientContext ctx;
  channel_.prepare(ctx);
  v1::FuserInfo info;
  KVB_RETURN_IF_ERROR(from_grpc_status(stub_->GetInfo(&ctx, v1::FuserInfoRequest(), &info)));
  return info;
}

Result<v1::FuseSummary> FuserClient::fuse(const v1::FuseStart& start, const FuseRequestSource& next,
                                          const FusedSink& sink, uint64_t* bytes_sent, uint64_t* bytes_received) {
  grpc::ClientContext ctx;
  channel_.prepare(ctx);
  // Parsed here, not by gRPC: a message that does not parse ends the call (rpc/parsed_stream.h).
  rpc::ParsedReaderWriter stream(*channel_.channel, rpc::method_path(v1::FuserService::service_full_name(), "Fuse"), ctx);

  // The sender: FuseStart, then the source's messages, then the half-close. It stops at the first
  // failed Write (the call is over: Finish says why) or source error (which cancels the call).
  Status source_error;
  std::atomic<uint64_t> sent{0};
  std::thread sender([&] {
    v1::FuseRequest msg;
    *msg.mutable_start() = start;
    for (;;) {
      sent.fetch_add(msg.ByteSizeLong(), std::memory_order_relaxed);
      if (!stream.write(msg)) return;
      msg.Clear();
      Result<bool> more = next(msg);
      if (!more.ok()) {
        source_error = more.status();
        ctx.TryCancel();
        return;
      }
      if (!*more) break;
    }
    stream.writes_done();
  });

  v1::FuseResponse r;
  std::optional<v1::FuseSummary> summary;
  Status sink_error;
  uint64_t received = 0;
  while (stream.read(r)) {
    received += r.ByteSizeLong();
    if (r.has_done()) {
      summary = std::move(*r.mutable_done());
    } else if (r.has_fused() && sink) {
      sink_error = sink(std::move(*r.mutable_fused()));
      if (!sink_error.ok()) {
        ctx.TryCancel();
        break;
      }
    }
  }
  sender.join();  // after a cancel or the end of the call, its Write returns at once
  const grpc::Status finished = stream.finish();
  if (bytes_sent) *bytes_sent = sent.load(std::memory_order_relaxed);
  if (bytes_received) *bytes_received = received;
  KVB_RETURN_IF_ERROR(source_error);
  KVB_RETURN_IF_ERROR(sink_error);
  KVB_RETURN_IF_ERROR(from_grpc_status(finished));
  if (!summary) return unavailable(fmt::format("fuse: the stream from {} ended without a summary", addr_));
  return std::move(*summary);
}

Result<FuseOutput> FuserClient::fuse_messages(const v1::FuseStart& start, std::span<const v1::FuseRequest> requests) {
  FuseOutput out;
  size_t i = 0;
  const FuseRequestSource next = [&](v1::FuseRequest& msg) -> Result<bool> {
    if (i == requests.size()) return false;
    msg = requests[i++];
    return true;
  };
  const FusedSink sink = [&](v1::CacheChunk&& msg) {
    out.fused.push_back(std::move(msg));
    return Status::Ok();
  };
  KVB_ASSIGN_OR_RETURN(out.summary, fuse(start, next, sink, &out.bytes_sent, &out.bytes_received));
  return out;
}

}  // namespace kvb::client
