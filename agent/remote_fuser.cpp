#include "agent/remote_fuser.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <thread>

#include "kvbridge/v1/fuser.grpc.pb.h"
#include "proto/fuser_convert.h"
#include "proto/wire_convert.h"
#include "rpc/parsed_stream.h"

namespace kvb::agent {

namespace pb = ::kvbridge::v1;

Result<fuser::FuserDescription> describe_remote_fuser(PeerClient& peers, const std::string& address,
                                                      runtime::CancelToken& cancel) {
  auto stub = pb::FuserService::NewStub(peers.channel(address));
  pb::FuserInfo info;
  KVB_RETURN_IF_ERROR(peers.unary(*stub, &pb::FuserService::Stub::GetInfo, pb::FuserInfoRequest(), &info, cancel,
                                  fmt::format("asking the fuser at {} for its pair", address)));
  auto d = fuser::description_from_proto(info);
  if (!d.ok()) return d.status().with_context(fmt::format("the fuser at {}", address));
  return d;
}

Status fuse_remote(PeerClient& peers, const std::string& address, WireDType dtype, const fuser::FuserDescription& desc,
                   const KvCache& sharer, const ModelIdentity& sharer_id, KvCache& receiver,
                   const ModelIdentity& receiver_id, runtime::CancelToken& cancel, RemoteFuseStats& stats) {
  const std::string what = fmt::format("fusing with the fuser at {}", address);
  KVB_ASSIGN_OR_RETURN(auto s_enc, KvWireEncoder::create(sharer, sharer_id, dtype, WireCompression::kNone, 0,
                                                         desc.plan.sharer));
  KVB_ASSIGN_OR_RETURN(auto r_enc, KvWireEncoder::create(receiver, receiver_id, dtype, WireCompression::kNone, 0,
                                                         desc.plan.receiver));
  const std::shared_ptr<grpc::Channel> channel = peers.channel(address);
  grpc::ClientContext ctx;
  peers.prepare(ctx);
  const runtime::ScopedCancelHook hook(cancel, [&ctx] { ctx.TryCancel(); });
  // Parsed here, not by gRPC: a message that does not parse ends the call (rpc/parsed_stream.h).
  rpc::ParsedReaderWriter stream(*channel, rpc::method_path(pb::FuserService::service_full_name(), "Fuse"),
                                 ctx);
  rpc::CallMetrics* metrics = peers.metrics();

  std::atomic<uint64_t> sent{0};
  std::thread writer([&] {
    pb::FuseRequest req;
    pb::FuseStart* start = req.mutable_start();
    start->set_dtype(wire::to_proto(dtype));
    start->set_compression(pb::COMPRESSION_NONE);
    bool ok = stream.write(req);
    sent += req.ByteSizeLong();
    wire::CacheStreamWriter sw(*s_enc), rw(*r_enc);
    bool s_more = true, r_more = true;
    while (ok && (s_more || r_more)) {
      for (const bool is_sharer : {true, false}) {
        bool& more = is_sharer ? s_more : r_more;
        if (!ok || !more) continue;
        req.Clear();
        more = (is_sharer ? sw : rw).next(is_sharer ? req.mutable_sharer() : req.mutable_receiver());
        if (!more) continue;
        sent += req.ByteSizeLong();
        ok = stream.write(req);
      }
    }
    if (ok) stream.writes_done();
  });

  Status decode_error;
  std::unique_ptr<KvWireDecoder> out;
  pb::FuseResponse resp;
  uint64_t received = 0;
  bool got_summary = false;
  while (decode_error.ok() && stream.read(resp)) {
    received += resp.ByteSizeLong();
    if (resp.has_done()) {
      stats.slices_fused = resp.done().slices_fused();
      got_summary = true;
      continue;
    }
    if (!resp.has_fused()) {
      decode_error = invalid_argument("the fuser sent an empty message");
      break;
    }
    const pb::CacheChunk& c = resp.fused();
    switch (c.part_case()) {
      case pb::CacheChunk::kHeader: {
        if (out) {
          decode_error = invalid_argument("the fuser sent a second header");
          break;
        }
        auto h = wire::from_proto(c.header());
        if (!h.ok()) {
          decode_error = h.status();
        } else if (!h->layers || *h->layers != desc.plan.receiver) {
          decode_error = invalid_argument("the fuser's output carries other slices than it announced");
        } else {
          auto d = KvWireDecoder::create_into(*h, receiver_id, receiver);
          if (d.ok()) out = std::move(d).value(); else decode_error = d.status();
        }
        break;
      }
      case pb::CacheChunk::kData: {
        auto v = wire::view_from_proto(c.data());
        decode_error = !out ? invalid_argument("fused data before the header") : !v.ok() ? v.status() : out->add(*v);
        break;
      }
      case pb::CacheChunk::kTrailer:
        decode_error = !out ? invalid_argument("fused trailer before the header")
                            : out->finish_into(wire::from_proto(c.trailer()));
        break;
      default: decode_error = invalid_argument("the fuser sent an empty cache chunk");
    }
  }
  if (!decode_error.ok()) ctx.TryCancel();
  writer.join();
  while (!decode_error.ok() && stream.read(resp)) {
  }
  const grpc::Status gs = stream.finish();
  stats.bytes_sent = sent;
  stats.bytes_received = received;
  if (metrics) {
    metrics->add_bytes_sent(sent);
    metrics->add_bytes_received(received);
  }
  if (!decode_error.ok()) return decode_error.with_context(what);
  if (cancel.cancelled()) return cancelled(what + ": the request was cancelled");
  if (!gs.ok()) return PeerClient::peer_error(gs, what);
  if (!got_summary || out == nullptr) return unavailable(what + ": the fuser ended the stream early");
  return Status::Ok();
}

}  // namespace kvb::agent
