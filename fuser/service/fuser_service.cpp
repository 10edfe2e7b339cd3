#include "fuser/service/fuser_service.h"

#include <fmt/format.h>

#include <chrono>
#include <utility>

#include "fuser/fuse_session.h"
#include "proto/grpc_status.h"
#include "proto/wire_convert.h"
#include "rpc/call.h"
#include "rpc/logging.h"

namespace kvb::fuser {

namespace {

using Clock = std::chrono::steady_clock;
using FuseStream = grpc::ServerReaderWriter<pb::FuseResponse, pb::FuseRequest>;

// What one call moved, for its log line.
struct CallStats {
  uint64_t bytes_in = 0, bytes_out = 0;  // serialized messages
  FuseSessionStats session;
};

// One call's request id, log line and metrics series (rpc::CallLog), with what the call moved.
class CallRecord {
 public:
  CallRecord(rpc::CallMetrics& metrics, std::string_view method, grpc::ServerContext& ctx)
      : log_(metrics, method, ctx) {}
  CallStats& stats() { return stats_; }

  Status finish(Status st) {
    log_.done(st, {{"bytes_in", int64_t(stats_.bytes_in)},
                   {"bytes_out", int64_t(stats_.bytes_out)},
                   {"n_tokens", int64_t(stats_.session.n_tokens)},
                   {"slices_fused", int64_t(stats_.session.slices_fused)},
                   {"fuse_ms", stats_.session.fuse_ms}});
    return st;
  }

 private:
  rpc::CallLog log_;
  CallStats stats_;
};

// Holds one of the max_concurrent_fuses slots for the life of a call.
class FuseSlot {
 public:
  FuseSlot(std::atomic<uint32_t>& active, uint32_t max) : active_(active) {
    ok_ = active_.fetch_add(1, std::memory_order_acq_rel) < max;
  }
  ~FuseSlot() { active_.fetch_sub(1, std::memory_order_acq_rel); }
  FuseSlot(const FuseSlot&) = delete;
  FuseSlot& operator=(const FuseSlot&) = delete;
  bool ok() const { return ok_; }

 private:
  std::atomic<uint32_t>& active_;
  bool ok_ = false;
};


// ============================== Fuse ==============================

// Drives one Fuse call: reads, feeds the session, writes what it produced. Borrows everything.
class FuseCall {
 public:
  FuseCall(const FuserServiceDeps& d, grpc::ServerContext& ctx, FuseStream& stream, CallStats& stats)
      : d_(d), ctx_(ctx), stream_(stream), stats_(stats) {}

  Status run() {
    pb::FuseRequest req;
    KVB_RETURN_IF_ERROR(read(req, "before its FuseStart"));
    if (!req.has_start()) return invalid_argument("fuse: the first message must be a FuseStart");
    FuseSessionOptions opt;
    KVB_ASSIGN_OR_RETURN(opt.dtype, wire::wire_dtype_from_proto(req.start().dtype()));
    KVB_ASSIGN_OR_RETURN(opt.compression, wire::compression_from_proto(req.start().compression()));
    opt.limits = d_.limits;
    FuseSession session(*d_.fuser, opt);

    while (!session.done()) {
      KVB_RETURN_IF_ERROR(read(req, "before both trailers"));
      const Status fed = feed(session, req);
      stats_.session = session.stats();
      KVB_RETURN_IF_ERROR(fed);
      KVB_RETURN_IF_ERROR(drain(session));
    }
    pb::FuseResponse done;
    pb::FuseSummary* s = done.mutable_done();
    s->set_n_tokens(stats_.session.n_tokens);
    s->set_slices_fused(stats_.session.slices_fused);
    s->set_fuse_ms(stats_.session.fuse_ms);
    s->set_bytes_received(stats_.session.bytes_received);
    return write(done);
  }

 private:
  // The next request, counted and size-checked. A stream that ends here ended `too_early`, unless
  // the client went away (CANCELLED).
  Status read(pb::FuseRequest& req, std::string_view too_early) {
    if (!stream_.Read(&req)) {
      if (ctx_.IsCancelled()) return cancelled("fuse: the client cancelled the call");
      return invalid_argument(fmt::format("fuse: the request stream ended {}", too_early));
    }
    const uint64_t n = req.ByteSizeLong();
    stats_.bytes_in += n;
    d_.metrics->add_bytes_received(n);
    if (n <= d_.max_message_bytes) return Status::Ok();
    return invalid_argument(fmt::format("fuse: a message of {} bytes exceeds --max-message-bytes {}", n,
                                        d_.max_message_bytes));
  }

  // Converts one input message (payloads borrowed from `req`, which outlives the call) and hands
  // it to the session, which checks order, identities and contents.
  static Status feed(FuseSession& session, const pb::FuseRequest& req) {
    FuseSession::Side side = FuseSession::Side::kSharer;
    switch (req.part_case()) {
      case pb::FuseRequest::kSharer: side = FuseSession::Side::kSharer; break;
      case pb::FuseRequest::kReceiver: side = FuseSession::Side::kReceiver; break;
      case pb::FuseRequest::kStart: return invalid_argument("fuse: a second FuseStart");
      default: return invalid_argument("fuse: a FuseRequest with no part set");
    }
    const pb::CacheChunk& m = side == FuseSession::Side::kSharer ? req.sharer() : req.receiver();
    switch (m.part_case()) {
      case pb::CacheChunk::kHeader: {
        KVB_ASSIGN_OR_RETURN(const KvWireHeader h, wire::from_proto(m.header()));
        return session.add_header(side, h);
      }
      case pb::CacheChunk::kData: {
        KVB_ASSIGN_OR_RETURN(const KvWireChunkView c, wire::view_from_proto(m.data()));
        return session.add_chunk(side, c);
      }
      case pb::CacheChunk::kTrailer: return session.add_trailer(side, wire::from_proto(m.trailer()));
      default: return invalid_argument("fuse: a CacheChunk with no part set");
    }
  }

  // Writes everything the session has ready: the header, fused chunks, the trailer.
  Status drain(FuseSession& session) {
    pb::FuseResponse r;
    if (std::optional<KvWireHeader> h = session.take_header()) {
      wire::to_proto(*h, r.mutable_fused()->mutable_header());
      KVB_RETURN_IF_ERROR(write(r));
    }
    while (session.next_chunk(chunk_)) {
      r.Clear();
      wire::to_proto(std::move(chunk_), r.mutable_fused()->mutable_data());
      KVB_RETURN_IF_ERROR(write(r));
    }
    if (std::optional<KvWireTrailer> t = session.take_trailer()) {
      r.Clear();
      wire::to_proto(*t, r.mutable_fused()->mutable_trailer());
      KVB_RETURN_IF_ERROR(write(r));
    }
    return Status::Ok();
  }

  Status write(const pb::FuseResponse& r) {
    const uint64_t n = r.ByteSizeLong();
    if (!stream_.Write(r)) return cancelled("fuse: the client went away");
    stats_.bytes_out += n;
    d_.metrics->add_bytes_sent(n);
    return Status::Ok();
  }

  const FuserServiceDeps& d_;
  grpc::ServerContext& ctx_;
  FuseStream& stream_;
  CallStats& stats_;
  KvWireChunk chunk_;  // reused: its payload moves into each message
};

}  // namespace

// ============================== FuserInfo ==============================

// ============================== the service ==============================

FuserServiceImpl::FuserServiceImpl(FuserServiceDeps deps) : d_(std::move(deps)) {
  KVB_ASSERT(d_.fuser && d_.metrics && d_.auth, "FuserServiceDeps: fuser, metrics and auth are required");
  fuser_info(*d_.fuser, "", d_.backend, &info_);
}

void FuserServiceImpl::set_name(std::string name) {
  std::lock_guard<std::mutex> lock(name_mu_);
  name_ = std::move(name);
}

grpc::Status FuserServiceImpl::GetInfo(grpc::ServerContext* ctx, const pb::FuserInfoRequest* req,
                                       pb::FuserInfo* resp) {
  CallRecord call(*d_.metrics, "GetInfo", *ctx);
  const uint64_t n = req->ByteSizeLong();
  call.stats().bytes_in = n;
  d_.metrics->add_bytes_received(n);
  Status st = d_.auth->check(*ctx);
  if (st.ok()) {
    *resp = info_;
    {
      std::lock_guard<std::mutex> lock(name_mu_);
      resp->set_name(name_);
    }
    call.stats().bytes_out = resp->ByteSizeLong();
    d_.metrics->add_bytes_sent(call.stats().bytes_out);
  }
  return to_grpc_status(call.finish(std::move(st)));
}

grpc::Status FuserServiceImpl::Fuse(grpc::ServerContext* ctx, FuseStream* stream) {
  CallRecord call(*d_.metrics, "Fuse", *ctx);
  Status st = d_.auth->check(*ctx);
  if (st.ok()) {
    const FuseSlot slot(active_fuses_, d_.max_concurrent_fuses);
    st = slot.ok() ? FuseCall(d_, *ctx, *stream, call.stats()).run()
                   : resource_exhausted(fmt::format("fuse: {} Fuse calls are running already (the limit)",
                                                    d_.max_concurrent_fuses));
  }
  return to_grpc_status(call.finish(std::move(st)));
}

}  // namespace kvb::fuser
