#include "agent/transfer/peer_client.h"
#include "agent/transfer/transfer_convert.h"

#include <fmt/format.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/sync_stream.h>

#include <string_view>
#include <vector>

#include "kernels/registry.h"
#include "kvbridge/v1/agent.grpc.pb.h"
#include "kvbridge/v1/agent.pb.h"
#include "proto/grpc_status.h"
#include "proto/wire_convert.h"
#include "rpc/channel.h"
#include "rpc/logging.h"

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

PeerClient::PeerClient(PeerClientOptions opt) : opt_(std::move(opt)), auth_(opt_.auth_token) {
  const int n = opt_.n_workers > 0 ? opt_.n_workers : 1;
  for (int i = 0; i < n; ++i) workers_.emplace_back([this] { worker(); });
}

PeerClient::~PeerClient() { stop(); }

void PeerClient::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
}

void PeerClient::post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      tasks_.push_back(std::move(fn));
      cv_.notify_one();
      return;
    }
  }
  fn();
}

void PeerClient::worker() {
  for (;;) {
    std::function<void()> fn;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping, and nothing left to run
      fn = std::move(tasks_.front());
      tasks_.pop_front();
    }
    fn();
  }
}

bool PeerClient::stopping() {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

void PeerClient::prepare(grpc::ClientContext& ctx) const {
  auth_.attach(ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + opt_.pull_timeout);
}

Status PeerClient::peer_error(const grpc::Status& gs, const std::string& what) {
  Status st = from_grpc_status(gs);
  switch (st.code()) {
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kCancelled:
      st = unavailable(fmt::format("the peer did not complete the call: {}", st.message()));
      break;
    case StatusCode::kUnauthenticated:
      st = Status(StatusCode::kPermissionDenied, fmt::format("the peer refused this agent's token: {}", st.message()));
      break;
    default:
      break;
  }
  return st.with_context(what);
}

std::shared_ptr<grpc::Channel> PeerClient::channel(const std::string& agent) {
  std::lock_guard<std::mutex> lock(channels_mu_);
  auto& ch = channels_[agent];
  if (ch) return ch;
  rpc::ChannelConfig cc;
  cc.max_message_bytes = opt_.max_message_bytes;
  cc.tls = opt_.tls;
  cc.root_pem = opt_.tls_root_pem;
  cc.cert_pem = opt_.tls_cert_pem;
  cc.key_pem = opt_.tls_key_pem;
  cc.peer_keepalive = true;  // a hung sharer is noticed mid-transfer
  ch = rpc::make_channel(agent, cc);
  return ch;
}

Result<transport::EndpointInfo> PeerClient::peer_endpoint(const std::string& agent, runtime::CancelToken& cancel) {
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(channels_mu_);
    auto it = peer_info_.find(agent);
    if (it != peer_info_.end() && now - it->second.fetched < kPeerInfoTtl) return it->second.endpoint;
  }
  auto stub = kvbridge::v1::AgentService::NewStub(channel(agent));
  kvbridge::v1::AgentInfo info;
  const Status st = unary(*stub, &kvbridge::v1::AgentService::Stub::GetInfo, kvbridge::v1::GetInfoRequest(), &info,
                          cancel, fmt::format("asking the agent at {} for its transports", agent));
  // A sharer without GetInfo (another implementation of ExportCache) reports nothing: grpc.
  if (!st.ok() && st.code() != StatusCode::kUnimplemented) return st;
  remember_endpoint(agent, info.transport_info());
  return endpoint_from_proto(info.transport_info());
}

void PeerClient::remember_endpoint(const std::string& agent, const kvbridge::v1::TransportInfo& t) {
  std::lock_guard<std::mutex> lock(channels_mu_);
  peer_info_[agent] = PeerInfo{std::chrono::steady_clock::now(), endpoint_from_proto(t)};
}

Result<PullTransport> PeerClient::choose_transport(const std::string& agent, const PullOptions& po,
                                                   runtime::CancelToken& cancel) {
  PullTransport out;
  out.requested = po.transport;
  if (po.transport == transport::TransportChoice::kGrpc) {
    out.selection.reason = "grpc as asked";
    return out;
  }
  KVB_ASSIGN_OR_RETURN(const transport::EndpointInfo sharer, peer_endpoint(agent, cancel));
  KVB_ASSIGN_OR_RETURN(out.selection, transport::select_transport(po.transport, sharer, opt_.endpoint));
  if (out.selection.kind == transport::TransportKind::kGrpc) return out;
  if (po.host_cache && opt_.transports != nullptr && !opt_.transports->receive_buffers().is_host()) {
    out.selection.kind = transport::TransportKind::kGrpc;
    out.selection.fell_back = po.transport != transport::TransportChoice::kAuto;
    out.selection.reason = "this cache is read in host memory (sent on to a remote fuser), and raw transports "
                           "land caches in device memory";
  } else if (opt_.transports == nullptr) {
    // select_transport checks both ends' flags, and this agent advertised none without a factory.
    return internal_error(fmt::format("transport {} selected, but this agent has no raw transports",
                                      transport::transport_name(out.selection.kind)));
  }
  return out;
}

Result<PulledCache> PeerClient::pull(const std::string& agent, const std::string& cache_id, const PullOptions& po,
                                     runtime::CancelToken& cancel) {
  const auto where = [&] { return fmt::format("pulling cache {} from {}", cache_id, agent); };
  if (stopping()) return unavailable(where() + ": the agent is shutting down");
  if (cancel.cancelled()) return cancelled(where() + ": the request was cancelled");
  auto chosen = choose_transport(agent, po, cancel);
  if (!chosen.ok()) return chosen.status().with_context(where());
  const transport::TransportKind kind = chosen->selection.kind;
  if (kind != transport::TransportKind::kGrpc) {
    // The consumer's own failure is final; a transport's is retried over grpc (where on_data sees
    // the slices it already had complete again).
    bool consumer_failed = false;
    PullOptions raw_po = po;
    if (po.on_data) {
      raw_po.on_data = [&](const PullProgress& p) {
        Status st = po.on_data(p);
        consumer_failed = !st.ok();
        return st;
      };
    }
    auto raw = pull_raw(agent, cache_id, kind, raw_po, cancel);
    if (raw.ok()) {
      raw->transport = std::move(chosen).value();
      return raw;
    }
    const StatusCode code = raw.status().code();
    if (consumer_failed || cancel.cancelled() || code == StatusCode::kCancelled || code == StatusCode::kNotFound ||
        code == StatusCode::kPermissionDenied) {
      return raw.status().with_context(where());
    }
    chosen->selection.kind = transport::TransportKind::kGrpc;
    chosen->selection.fell_back = true;
    chosen->selection.reason = fmt::format("{} failed ({}: {}); pulled over grpc instead",
                                           transport::transport_name(kind), status_code_name(code),
                                           raw.status().message());
  }
  if (chosen->selection.fell_back) {
    rpc::log_event(spdlog::level::info, "transport fell back to grpc",
              {{"cache", cache_id}, {"peer", agent}, {"reason", chosen->selection.reason}});
  }
  auto out = pull_grpc(agent, cache_id, po, cancel);
  if (!out.ok()) return out.status().with_context(where());
  out->transport = std::move(chosen).value();
  return out;
}

Result<PulledCache> PeerClient::pull_grpc(const std::string& agent, const std::string& cache_id, const PullOptions& po,
                                          runtime::CancelToken& cancel) {
  const std::shared_ptr<grpc::Channel> ch = channel(agent);
  grpc::ClientContext ctx;
  prepare(ctx);
  const runtime::ScopedCancelHook hook(cancel, [&ctx] { ctx.TryCancel(); });

  kvbridge::v1::ExportCacheRequest req;
  req.set_cache_id(cache_id);
  req.set_dtype(wire::to_proto(po.dtype));
  req.set_compression(wire::to_proto(po.compression));
  if (po.layers) wire::to_proto(*po.layers, req.mutable_layers());
  if (opt_.metrics) opt_.metrics->add_bytes_sent(req.ByteSizeLong());

  const BufferType& buffers = opt_.cache_buffers ? *opt_.cache_buffers : cpu_device().buffer_type();
  wire::CacheStreamReader reader(po.identity ? *po.identity : opt_.identity, buffers, /*n_ctx_min=*/0, opt_.limits,
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
    if (opt_.metrics) opt_.metrics->add_bytes_received(n);
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
  if (!gs.ok()) return peer_error(gs, "ExportCache");
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, reader.finish());
  PulledCache out;
  out.cache = std::move(cache);
  out.wire_bytes = wire_bytes;
  return out;
}

}  // namespace kvb::agent
