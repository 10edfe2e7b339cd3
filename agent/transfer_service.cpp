// AgentService's raw cache transfers, the sharer's side: OpenTransfer, TransferStream,
// CloseTransfer (transport/README.md). The sessions themselves live in TransferSessions.
#include <fmt/format.h>

#include <condition_variable>
#include <mutex>
#include <thread>

#include "proto/wire_convert.h"
#include "agent/agent_service.h"
#include "agent/transfer/transfer_convert.h"
#include "rpc/logging.h"
#include "agent/service_call.h"

namespace kvb::agent {

namespace {

using transport::Clock;

// The longest per-transfer deadline a receiver may ask for.
constexpr auto kMaxTransferTimeout = std::chrono::minutes(10);

Status no_transfers() { return unimplemented("this agent serves no raw cache transfers"); }

Status open_transfer(const ServiceDeps& d, const pb::OpenTransferRequest& req, pb::OpenTransferResponse* resp,
                     const std::string& peer) {
  KVB_RETURN_IF_ERROR(check_cache_id(req.cache_id(), "cache_id"));
  auto choice = transport::parse_transport(req.transport());
  if (!choice.ok()) return choice.status().with_context("transport");
  transport::TransportKind kind;
  if (*choice == transport::TransportChoice::kNccl) {
    kind = transport::TransportKind::kNccl;
  } else if (*choice == transport::TransportChoice::kCudaIpc) {
    kind = transport::TransportKind::kCudaIpc;
  } else {
    return invalid_argument(fmt::format("transport: OpenTransfer moves caches over nccl or cuda-ipc, not {} "
                                        "(grpc pulls use ExportCache; the receiver resolves auto)",
                                        req.transport()));
  }
  // The receiver chose with select_transport; the same function, on the same two endpoints, must
  // agree here.
  transport::SelectOptions so;
  so.strict = true;
  auto sel = transport::select_transport(*choice, d.peers->endpoint(), endpoint_from_proto(req.receiver()), so);
  if (!sel.ok()) return failed_precondition(std::string(sel.status().message()));
  if (sel->kind != kind) {
    return failed_precondition(fmt::format("transport {} is not what this agent selects for the pair ({}: {})",
                                           req.transport(), transport::transport_name(sel->kind), sel->reason));
  }
  std::optional<KvLayerSet> layers;
  if (req.has_layers()) layers = wire::from_proto(req.layers());
  KVB_ASSIGN_OR_RETURN(runtime::CacheEntry entry, d.store->get(req.cache_id()));

  std::chrono::milliseconds timeout = kDefaultTransferTimeout;
  if (req.timeout_ms() > 0) timeout = std::min<std::chrono::milliseconds>(std::chrono::milliseconds(req.timeout_ms()), kMaxTransferTimeout);
  SharerSessionSpec spec;
  spec.cache_id = req.cache_id();
  spec.cache = entry.cache;
  spec.kind = kind;
  spec.layers = layers;
  spec.chunk_tokens = req.chunk_tokens();
  spec.timeout = timeout;
  spec.receiver_metadata = req.receiver_metadata();
  spec.peer = peer;
  KVB_ASSIGN_OR_RETURN(const OpenedSession opened, d.transfers->open(std::move(spec)));

  resp->set_session_hi(opened.id.hi);
  resp->set_session_lo(opened.id.lo);
  resp->set_transport(std::string(transport::transport_name(kind)));
  resp->set_sharer_metadata(opened.metadata);
  // The header a raw pull announces: the cache as it is (its dtype, no compression), one chunk
  // per posted slice.
  const WireDType dtype = entry.cache->layout().dtype == DType::kF16 ? WireDType::kF16 : WireDType::kF32;
  wire::to_proto(cache_header(*entry.cache, *d.identity, dtype, WireCompression::kNone, layers,
                              uint32_t(opened.plan.size())),
                 resp->mutable_header());
  resp->set_chunk_tokens(req.chunk_tokens());
  resp->set_timeout_ms(uint32_t(timeout.count()));
  rpc::log_event(spdlog::level::info, "cache transfer opened",
            {{"transfer", opened.id.to_string()},
             {"cache", req.cache_id()},
             {"transport", transport::transport_name(kind)},
             {"peer", peer},
             {"slices", int64_t(opened.plan.size())}});
  return Status::Ok();
}

// One session's control stream: frames from the receiver go into the session's pipe; a pump
// thread writes what the sharer's endpoint sends. The stream ends (OK) once the session tore its
// endpoint down; a receiver that ends the stream first closes the pipe (its endpoint notices).
class TransferStreamCall final : public grpc::ServerBidiReactor<pb::TransferFrame, pb::TransferFrame> {
 public:
  TransferStreamCall(const ServiceDeps& d, grpc::CallbackServerContext* ctx) : d_(d), log_(d, "TransferStream", ctx) {
    Status st = d.auth->check(*ctx);
    if (st.ok() && d.transfers == nullptr) st = no_transfers();
    if (!st.ok()) {
      finish(std::move(st));
      return;
    }
    StartRead(&in_);
  }

  void OnReadDone(bool ok) override {
    std::shared_ptr<transport::BytePipe> pipe = this->pipe();
    if (!ok) {  // the receiver half-closed, or the call was cancelled
      if (pipe) {
        pipe->close();
      } else {
        finish(invalid_argument("the stream ended before naming a transfer"));
      }
      return;
    }
    d_.metrics->add_bytes_received(in_.ByteSizeLong());
    if (!pipe) {
      auto taken = d_.transfers->take_stream({in_.session_hi(), in_.session_lo()});
      if (!taken.ok()) {
        finish(taken.status());
        return;
      }
      pipe = std::shared_ptr<transport::BytePipe>(std::move(taken).value());
      {
        std::lock_guard<std::mutex> lock(mu_);
        pipe_ = pipe;
      }
      pump_ = std::thread([this, pipe] { pump(*pipe); });
    }
    // Control messages are small and the pipe's window large: this does not block in practice.
    if (!in_.data().empty() && !pipe->send(in_.data(), Clock::now() + std::chrono::seconds(10)).ok()) {
      pipe->close();  // the session ended: the pump finishes the call
      return;
    }
    StartRead(&in_);
  }

  void OnWriteDone(bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    write_ok_ = ok;
    cv_.notify_all();
  }

  void OnCancel() override {
    if (auto pipe = this->pipe()) pipe->close();
  }

  void OnDone() override {
    if (auto pipe = this->pipe()) pipe->close();
    if (pump_.joinable()) pump_.join();
    log_.done(status_);
    delete this;
  }

 private:
  std::shared_ptr<transport::BytePipe> pipe() {
    std::lock_guard<std::mutex> lock(mu_);
    return pipe_;
  }

  void pump(transport::BytePipe& pipe) {
    for (;;) {
      auto m = pipe.recv(Clock::now() + std::chrono::seconds(1));
      if (!m.ok()) break;  // closed: the session is over, or the receiver went away
      if (!m->has_value()) continue;
      out_.Clear();
      out_.set_data(std::move(**m));
      d_.metrics->add_bytes_sent(out_.ByteSizeLong());
      {
        std::lock_guard<std::mutex> lock(mu_);
        writing_ = true;
      }
      StartWrite(&out_);
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return !writing_; });
      if (!write_ok_) break;
    }
    finish(Status::Ok());
  }

  // Exactly once.
  void finish(Status st) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (finished_) return;
      finished_ = true;
    }
    status_ = std::move(st);
    Finish(to_grpc_status(status_));
  }

  const ServiceDeps& d_;
  CallLog log_;
  pb::TransferFrame in_, out_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<transport::BytePipe> pipe_;  // guarded by mu_
  bool writing_ = false, write_ok_ = true;     // guarded by mu_
  bool finished_ = false;                      // guarded by mu_
  Status status_;
  std::thread pump_;
};

}  // namespace

grpc::ServerUnaryReactor* AgentServiceImpl::OpenTransfer(grpc::CallbackServerContext* ctx,
                                                         const pb::OpenTransferRequest* req,
                                                         pb::OpenTransferResponse* resp) {
  auto* call = new UnaryCall(d_, "OpenTransfer", ctx);
  Status st = admit(d_, ctx, *req);
  if (st.ok() && d_.transfers == nullptr) st = no_transfers();
  if (!st.ok()) {
    call->complete(std::move(st));
    return call;
  }
  // Creating an endpoint may block (NCCL draws its unique id, starting its bootstrap network).
  d_.peers->post([this, call, req, resp, peer = ctx->peer()] {
    Status opened = open_transfer(d_, *req, resp, peer);
    if (opened.ok()) d_.metrics->add_bytes_sent(resp->ByteSizeLong());
    call->complete(std::move(opened));
  });
  return call;
}

grpc::ServerBidiReactor<pb::TransferFrame, pb::TransferFrame>* AgentServiceImpl::TransferStream(
    grpc::CallbackServerContext* ctx) {
  return new TransferStreamCall(d_, ctx);
}

grpc::ServerUnaryReactor* AgentServiceImpl::CloseTransfer(grpc::CallbackServerContext* ctx,
                                                          const pb::CloseTransferRequest* req,
                                                          pb::CloseTransferResponse*) {
  auto* call = new UnaryCall(d_, "CloseTransfer", ctx);
  Status st = admit(d_, ctx, *req);
  if (st.ok() && (req->code() < 0 || req->code() > int(StatusCode::kUnauthenticated))) {
    st = invalid_argument(fmt::format("code: {} is not a gRPC status code", req->code()));
  }
  if (!st.ok() || d_.transfers == nullptr) {  // without sessions there is nothing to close: OK
    call->complete(std::move(st));
    return call;
  }
  const Status outcome = req->code() == 0 ? Status::Ok() : Status(StatusCode(req->code()), req->message());
  const transport::TransferId id{req->session_hi(), req->session_lo()};
  // The close waits for the endpoint's teardown (cuda-ipc: the receiver's UNMAPPED): off the reactor.
  d_.peers->post([this, call, id, outcome] { call->complete(d_.transfers->close(id, outcome)); });
  return call;
}

}  // namespace kvb::agent
