#include "agent/transfer/stream_pull.h"

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/sync_stream.h>

#include <string_view>
#include <vector>

#include "engine/kv_wire.h"
#include "kernels/registry.h"
#include "kvbridge/v1/agent.pb.h"
#include "proto/wire_convert.h"

namespace kvb::agent {

namespace {

// agent.proto's AgentService.ExportCache, called raw (byte buffers) rather than through the stub.
constexpr const char* kExportCacheMethod = "/kvbridge.v1.AgentService/ExportCache";

// A grpc pull's progress: the stream decoder's.
class StreamProgress final : public PullProgress {
 public:
  explicit StreamProgress(const wire::CacheStreamReader& r) : r_(r) {}
  const KvCache* partial() const override { return r_.partial(); }
  bool complete(uint32_t layer, bool is_v) const override { return r_.complete(layer, is_v); }

 private:
  const wire::CacheStreamReader& r_;
};

}  // namespace

Result<PulledCache> stream_pull(PeerClient& peers, const std::string& agent, const std::string& cache_id,
                                const PullOptions& po, runtime::CancelToken& cancel) {
  const PeerClientOptions& opt = peers.options();
  const std::shared_ptr<grpc::Channel> ch = peers.channel(agent);
  grpc::ClientContext ctx;
  peers.prepare(ctx);
  const runtime::ScopedCancelHook hook(cancel, [&ctx] { ctx.TryCancel(); });

  kvbridge::v1::ExportCacheRequest req;
  req.set_cache_id(cache_id);
  req.set_dtype(wire::to_proto(po.dtype));
  req.set_compression(wire::to_proto(po.compression));
  if (po.layers) wire::to_proto(*po.layers, req.mutable_layers());
  if (opt.metrics) opt.metrics->add_bytes_sent(req.ByteSizeLong());

  const BufferType& buffers = opt.cache_buffers ? *opt.cache_buffers : cpu_device().buffer_type();
  wire::CacheStreamReader reader(po.identity ? *po.identity : opt.identity, buffers, /*n_ctx_min=*/0, opt.limits,
                                 po.reserve_cells);
  // Read raw: each message stays in the slices gRPC received it in, and the reader checksums and
  // decodes the payload from there (no protobuf copy of ~1 MiB per message).
  const grpc::internal::RpcMethod method(kExportCacheMethod, grpc::internal::RpcMethod::SERVER_STREAMING);
  std::unique_ptr<grpc::ClientReader<grpc::ByteBuffer>> stream(
      grpc::internal::ClientReaderFactory<grpc::ByteBuffer>::Create(ch.get(), method, &ctx, req));
  grpc::ByteBuffer msg;
  std::vector<grpc::Slice> slices;
  std::vector<std::string_view> pieces;
  uint64_t wire_bytes = 0;
  Status decode_error;
  while (stream->Read(&msg)) {
    const uint64_t n = msg.Length();
    wire_bytes += n;
    if (opt.metrics) opt.metrics->add_bytes_received(n);
    slices.clear();
    pieces.clear();
    if (msg.Dump(&slices).ok()) {
      for (const grpc::Slice& sl : slices) pieces.emplace_back(reinterpret_cast<const char*>(sl.begin()), sl.size());
      decode_error = reader.add_serialized(pieces);
      if (decode_error.ok() && po.on_data) decode_error = po.on_data(StreamProgress(reader));
    } else {
      decode_error = invalid_argument("a message could not be read");
    }
    if (!decode_error.ok()) {
      ctx.TryCancel();
      while (stream->Read(&msg)) {
      }
      break;
    }
  }
  const grpc::Status gs = stream->Finish();
  if (!decode_error.ok()) return decode_error;
  if (cancel.cancelled()) return cancelled("the request was cancelled");
  if (!gs.ok()) return PeerClient::peer_error(gs, "ExportCache");
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, reader.finish());
  PulledCache out;
  out.cache = std::move(cache);
  out.wire_bytes = wire_bytes;
  return out;
}

}  // namespace kvb::agent
