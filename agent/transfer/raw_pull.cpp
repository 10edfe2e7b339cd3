#include "agent/transfer/raw_pull.h"

#include <fmt/format.h>

#include <condition_variable>
#include <span>
#include <thread>
#include <vector>

#include "agent/transfer/transfer_convert.h"
#include "agent/transfer/transport_choice.h"
#include "engine/kv_wire.h"
#include "kvbridge/v1/agent.grpc.pb.h"
#include "proto/wire_convert.h"
#include "rpc/logging.h"
#include "rpc/parsed_stream.h"
#include "transport/byte_pipe.h"
#include "transport/kv_slices.h"

namespace kvb::agent {

namespace {

namespace pb = ::kvbridge::v1;
using transport::Clock;

// How often a waiting pull looks at its cancel token.
constexpr auto kPollStep = std::chrono::milliseconds(20);
// How long the end of a control stream waits for the sharer to end its side before cancelling.
constexpr auto kStreamDrain = std::chrono::seconds(2);

// The receiver's end of a session's TransferStream: the first frame names the session; then
// whatever the endpoint sends on `pipe` goes out as frames and frames that arrive go into `pipe`.
// Destruction closes the pipe, half-closes the stream, waits up to kStreamDrain for the sharer to
// end it (then cancels the call) and joins both pumps.
class ControlStream {
 public:
  ControlStream(PeerClient& peers, const std::string& agent, const transport::TransferId& id,
                std::unique_ptr<transport::BytePipe> pipe)
      : pipe_(std::move(pipe)), channel_(peers.channel(agent)) {
    peers.prepare(ctx_);
    // Parsed here, not by gRPC: a frame that does not parse ends the call (rpc/parsed_stream.h).
    stream_ = std::make_unique<rpc::ParsedReaderWriter>(
        *channel_, rpc::method_path(pb::AgentService::service_full_name(), "TransferStream"), ctx_);
    writer_ = std::thread([this, id] { write_loop(id); });
    reader_ = std::thread([this] { read_loop(); });
  }

  ~ControlStream() {
    pipe_->close();
    writer_.join();
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!cv_.wait_for(lock, kStreamDrain, [&] { return read_done_; })) ctx_.TryCancel();
    }
    reader_.join();
    const grpc::Status gs = stream_->finish();
    if (!gs.ok() && gs.error_code() != grpc::StatusCode::CANCELLED) {
      rpc::log_event(spdlog::level::debug, "transfer control stream ended", {{"error", gs.error_message()}});
    }
  }

  ControlStream(const ControlStream&) = delete;
  ControlStream& operator=(const ControlStream&) = delete;

 private:
  void write_loop(const transport::TransferId& id) {
    pb::TransferFrame f;
    f.set_session_hi(id.hi);
    f.set_session_lo(id.lo);
    if (stream_->write(f)) {
      for (;;) {
        auto m = pipe_->recv(Clock::now() + std::chrono::seconds(1));
        if (!m.ok()) break;  // closed: the pull is over
        if (!m->has_value()) continue;
        f.Clear();
        f.set_data(std::move(**m));
        if (!stream_->write(f)) break;
      }
    }
    stream_->writes_done();
  }

  void read_loop() {
    pb::TransferFrame f;
    // Read to the end whatever happens (Finish() waits for unread messages): once the endpoint is
    // gone, what the sharer still says (its goodbye) is dropped.
    bool delivering = true;
    while (stream_->read(f)) {
      if (delivering && !f.data().empty()) {
        delivering = pipe_->send(f.data(), Clock::now() + std::chrono::seconds(10)).ok();
      }
    }
    pipe_->close();  // the sharer ended the session (or the stream broke): the endpoint notices
    std::lock_guard<std::mutex> lock(mu_);
    read_done_ = true;
    cv_.notify_all();
  }

  std::unique_ptr<transport::BytePipe> pipe_;
  std::shared_ptr<grpc::Channel> channel_;
  grpc::ClientContext ctx_;
  std::unique_ptr<rpc::ParsedReaderWriter> stream_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool read_done_ = false;  // guarded by mu_
  std::thread writer_, reader_;
};

// A raw pull's progress: which (layer, K/V) slices have all their runs in.
class SliceProgress final : public PullProgress {
 public:
  SliceProgress(const KvCache& cache, std::span<const transport::KvSlice> plan)
      : cache_(cache),
        n_layer_(uint32_t(cache.layout().n_layer)),
        runs_left_(size_t(n_layer_) * 2, 0),
        carried_(size_t(n_layer_) * 2, 0) {
    for (const transport::KvSlice& s : plan) {
      ++runs_left_[index(s.layer, s.is_v)];
      carried_[index(s.layer, s.is_v)] = 1;
    }
  }

  // Counts one landed run; true when it completed its (layer, K/V) slice.
  bool landed(const transport::KvSlice& s) { return --runs_left_[index(s.layer, s.is_v)] == 0; }

  const KvCache* partial() const override { return &cache_; }
  // Complete once every run landed; never for a slice the pull does not carry.
  bool complete(uint32_t layer, bool is_v) const override {
    return layer < n_layer_ && carried_[index(layer, is_v)] != 0 && runs_left_[index(layer, is_v)] == 0;
  }

 private:
  size_t index(uint32_t layer, bool is_v) const { return size_t(layer) * 2 + (is_v ? 1 : 0); }

  const KvCache& cache_;
  uint32_t n_layer_;
  std::vector<uint32_t> runs_left_;  // [layer][K, V]
  std::vector<uint8_t> carried_;     // [layer][K, V]: the pull carries that slice
};

// Checks the sharer's answer, allocates the cache and receives every slice into it.
Result<PulledCache> receive_slices(const PeerClientOptions& opt, transport::KvTransport& endpoint,
                                   transport::TransportKind kind, const pb::OpenTransferResponse& resp,
                                   const PullOptions& po, runtime::CancelToken& cancel) {
  if (resp.transport() != transport::transport_name(kind)) {
    return failed_precondition(fmt::format("the sharer opened a {} transfer, not {}", resp.transport(),
                                           transport::transport_name(kind)));
  }
  KVB_ASSIGN_OR_RETURN(const KvWireHeader h, wire::from_proto(resp.header()));
  KVB_RETURN_IF_ERROR(KvWireDecoder::validate(h, po.identity ? *po.identity : opt.identity, opt.limits));
  if (h.dtype != WireDType::kF32 || h.compression != WireCompression::kNone) {
    return failed_precondition(fmt::format("the sharer's cache is {}: raw transfers move f32 caches as they are",
                                           wire_dtype_name(h.dtype)));
  }
  if (h.layers != po.layers) return invalid_argument("the sharer announced other layers than asked for");
  const auto n = uint32_t(h.tokens.size());
  const KvLayout layout = received_layout(h);
  KVB_ASSIGN_OR_RETURN(std::vector<transport::KvSlice> plan,
                       transport::plan_kv_slices(layout, n, h.layers, resp.chunk_tokens()));
  if (plan.size() != h.n_chunks) {
    return invalid_argument(
        fmt::format("the sharer announced {} slices, its chunking makes {}", h.n_chunks, plan.size()));
  }
  // Free cells after the received ones, as a decoded pull gets them (within the limits).
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache,
                       KvCache::create(opt.transports->receive_buffers(), layout,
                                       received_cells(h, opt.limits, /*n_ctx_min=*/0, po.reserve_cells)));
  KVB_RETURN_IF_ERROR(cache->set_pos0(h.pos0));
  {
    // The tokens are committed before their cells land: nobody but this pull (and on_data, which
    // reads complete slices only) sees the cache before it is returned, and a failure drops it.
    KVB_ASSIGN_OR_RETURN(const KvPlan cells, cache->plan_append(int32_t(n)));
    cache->commit_append(cells, h.tokens);
  }

  KVB_ASSIGN_OR_RETURN(transport::MemoryHandle mem, endpoint.register_memory(opt.transports->region(kind, *cache)));
  KVB_RETURN_IF_ERROR(endpoint.connect(resp.sharer_metadata()).with_context("the sharer's endpoint"));
  transport::PostOptions post;
  post.deadline =
      Clock::now() + (resp.timeout_ms() > 0 ? std::chrono::milliseconds(resp.timeout_ms()) : kDefaultTransferTimeout);
  std::vector<transport::Transfer> recvs;
  recvs.reserve(plan.size());
  uint64_t bytes = 0;
  for (const transport::KvSlice& s : plan) {
    KVB_ASSIGN_OR_RETURN(const transport::ByteRange r, transport::slice_bytes(*cache, s));
    KVB_ASSIGN_OR_RETURN(transport::Transfer x, endpoint.post_recv(mem, r.offset, r.bytes, s.tag, post));
    recvs.push_back(std::move(x));
    bytes += r.bytes;
  }
  SliceProgress progress(*cache, plan);
  for (size_t next = 0; next < recvs.size();) {
    if (cancel.cancelled()) {
      endpoint.abort(cancelled("the request was cancelled"));
      return cancelled("the request was cancelled");
    }
    const transport::PollResult r = recvs[next].wait(Clock::now() + kPollStep);
    if (r.error()) return r.status.with_context(fmt::format("receiving slice {} of {}", next + 1, recvs.size()));
    if (!r.done()) continue;
    // A (layer, K/V) slice is whole once its last run has landed: the consumer may start on it
    // while the transport goes on with the next ones.
    if (progress.landed(plan[next++]) && po.on_data) {
      if (Status st = po.on_data(progress); !st.ok()) {
        endpoint.abort(st);
        return st;
      }
    }
  }
  recvs.clear();
  mem.reset();
  PulledCache out;
  out.cache = std::move(cache);
  out.wire_bytes = bytes;
  return out;
}

}  // namespace

Result<PulledCache> raw_pull(PeerClient& peers, const std::string& agent, const std::string& cache_id,
                             transport::TransportKind kind, const PullOptions& po, runtime::CancelToken& cancel) {
  const PeerClientOptions& opt = peers.options();
  TransportFactory& factory = *opt.transports;
  transport::MemoryPipePair pipes = transport::make_memory_pipe();
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<transport::KvTransport> endpoint,
                       factory.create(kind, transport::Role::kReceiver,
                                      endpoint_owns_control(kind) ? std::move(pipes.a) : nullptr));
  pb::OpenTransferRequest req;
  req.set_cache_id(cache_id);
  req.set_transport(std::string(transport::transport_name(kind)));
  if (po.layers) wire::to_proto(*po.layers, req.mutable_layers());
  to_proto(opt.endpoint, req.mutable_receiver());
  KVB_ASSIGN_OR_RETURN(*req.mutable_receiver_metadata(), endpoint->metadata());
  req.set_timeout_ms(uint32_t(opt.transfer_timeout.count()));
  auto stub = pb::AgentService::NewStub(peers.channel(agent));
  pb::OpenTransferResponse resp;
  KVB_RETURN_IF_ERROR(peers.unary(*stub, &pb::AgentService::Stub::OpenTransfer, req, &resp, cancel, "OpenTransfer"));
  const transport::TransferId id{resp.session_hi(), resp.session_lo()};

  // From here the sharer holds a session (and the cache): it is closed whatever happens.
  auto control = std::make_unique<ControlStream>(peers, agent, id, std::move(pipes.b));
  Result<PulledCache> out = receive_slices(opt, *endpoint, kind, resp, po, cancel);
  pb::CloseTransferRequest close;
  close.set_session_hi(id.hi);
  close.set_session_lo(id.lo);
  close.set_code(int(out.status().code()));
  close.set_message(std::string(out.status().message()));
  // The sharer tears its endpoint down while this one goes: a cuda-ipc sharer waits for this
  // endpoint's UNMAPPED (or its goodbye), an NCCL one may finalize the communicator with it.
  std::thread closer([&] {
    runtime::CancelToken uncancelled;  // a cancelled pull still releases the sharer's session
    pb::CloseTransferResponse ignored;
    const Status st = peers.unary(*stub, &pb::AgentService::Stub::CloseTransfer, close, &ignored, uncancelled,
                                  "CloseTransfer");
    if (!st.ok()) {
      rpc::log_event(spdlog::level::warn, "closing a cache transfer failed; the sharer's session expires on its own",
                     {{"transfer", id.to_string()}, {"peer", agent}, {"error", st.message()}});
    }
  });
  endpoint.reset();
  closer.join();
  control.reset();
  return out;
}

}  // namespace kvb::agent
