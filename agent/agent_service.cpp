#include "agent/agent_service.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <optional>

#include "agent/request_convert.h"
#include "agent/transfer/transfer_convert.h"
#include "engine/chat_template.h"
#include "fuser/align.h"
#include "proto/grpc_status.h"
#include "proto/wire_convert.h"
#include "rpc/call.h"
#include "rpc/logging.h"

namespace kvb::agent {

// The runtime types and checks the handlers work with.
using runtime::CacheInfo;
using runtime::CancelToken;
using runtime::CancelTokenPtr;
using runtime::GenerateOptions;
using runtime::GenerateOutcome;
using runtime::GenerateSink;
using runtime::InsertOptions;
using runtime::PrefillOptions;
using runtime::PrefillOutcome;
using runtime::SessionInput;
using runtime::check_cache_id;

namespace {

using Clock = std::chrono::steady_clock;
constexpr const char* kVersion = "0.1.0";
constexpr int kMaxTokenizeTexts = 1 << 16;

RequestLimits request_limits(const ServiceDeps& d) {
  RequestLimits lim;
  lim.tokenizer = d.model->tokenizer.get();
  lim.ctx_size = d.engine->ctx_size();
  lim.max_new_tokens = d.config->max_new_tokens;
  const SelfAddresses* self = d.self;
  lim.is_self = [self](std::string_view a) { return self->contains(a); };
  return lim;
}

// ============================== context resolution ==============================

struct ResolvedContext {
  std::vector<std::shared_ptr<const KvCache>> caches;  // in request order
  std::unique_ptr<KvCache> owned;  // instead of `caches`: the request's one context, a fresh pull
  uint64_t bytes_pulled = 0;
  std::vector<pb::ContextTransport> transports;  // one per context pulled from an agent
  std::optional<FuseReport> fuse;  // receiver mode: the fused contexts, summed
  bool exact = true;  // every context is SessionInput::context_exact

  void move_to(SessionInput& in) {
    in.context = std::move(caches);
    in.owned_context = std::move(owned);
    in.context_exact = exact;
  }
};
using ResolveDone = std::function<void(Result<ResolvedContext>)>;

void add_report(std::optional<FuseReport>& sum, const FuseReport& r) {
  if (!sum) sum = FuseReport();
  sum->fused_tokens += r.fused_tokens;
  sum->slices_fused += r.slices_fused;
  sum->sharer_bytes += r.sharer_bytes;
  sum->fuser_bytes_sent += r.fuser_bytes_sent;
  sum->fuser_bytes_received += r.fuser_bytes_received;
  sum->fuse_ms += r.fuse_ms;
  sum->aligned = sum->aligned || r.aligned;
  sum->slices_fused_early += r.slices_fused_early;
}

// How the cache of one context pulled from `ref`'s agent travelled (GenerateSummary), counted in
// the pull metrics.
pb::ContextTransport context_transport(const ServiceDeps& d, const ContextRef& ref, const PullTransport& how) {
  pb::ContextTransport t = to_proto(ref, how);
  d.metrics->record_pull(t.requested(), t.used());
  return t;
}

Result<ResolvedContext> resolve_now(const ServiceDeps& d, const SessionSpec& spec, const CancelTokenPtr& cancel_ptr) {
  CancelToken& cancel = *cancel_ptr;
  ResolvedContext out;
  for (size_t i = 0; i < spec.context.size(); ++i) {
    const ContextRef& ref = spec.context[i];
    if (!ref.is_local() && spec.fuser) {
      // Receiver mode: this ref may hold another model's cache; the fuser makes it ours.
      if (d.fuser == nullptr) return failed_precondition("this agent cannot fuse caches");
      auto f = d.fuser->fuse(ref.agent, ref.cache_id, *spec.fuser, spec.pull, cancel_ptr);
      if (!f.ok()) return f.status().with_context(fmt::format("context[{}]", i));
      add_report(out.fuse, f->report);
      out.exact = false;
      out.bytes_pulled += f->report.sharer_bytes;
      out.transports.push_back(context_transport(d, ref, f->report.transport));
      if (spec.context.size() == 1) {
        out.owned = std::move(f->cache);
      } else {
        out.caches.push_back(std::move(f->cache));
      }
    } else if (ref.is_local()) {
      auto e = d.store->get(ref.cache_id);
      if (!e.ok()) return e.status().with_context(fmt::format("context[{}]", i));
      out.exact = out.exact && e->info.exact;
      out.caches.push_back(std::move(e->cache));
    } else {
      auto p = d.peers->pull(ref.agent, ref.cache_id, spec.pull, cancel);
      if (!p.ok()) return p.status().with_context(fmt::format("context[{}]", i));
      out.bytes_pulled += p->wire_bytes;
      out.transports.push_back(context_transport(d, ref, p->transport));
      out.exact = out.exact && spec.pull.dtype == WireDType::kF32;  // f16 and int8 round the cells
      if (spec.context.size() == 1) {
        out.owned = std::move(p->cache);  // the engine may run the session in it
      } else {
        out.caches.push_back(std::move(p->cache));
      }
    }
  }
  return out;
}

// Local-only contexts resolve on the calling thread (store lookups); anything that needs a peer
// moves to the PeerClient's workers so that no gRPC callback thread blocks on the network.
void resolve_context(const ServiceDeps& d, SessionSpec spec, CancelTokenPtr cancel, ResolveDone done) {
  if (!spec.has_remote_context()) return done(resolve_now(d, spec, cancel));
  auto shared_spec = std::make_shared<SessionSpec>(std::move(spec));
  d.peers->post([&d, shared_spec, cancel, done = std::move(done)] { done(resolve_now(d, *shared_spec, cancel)); });
}

// ============================== Generate ==============================

// The per-call queue between the engine (producer) and the write reactor (consumer). Owned jointly
// by the reactor, the engine task and any pending resolution, so it outlives whichever ends last;
// it never touches the reactor after calling Finish.
class GenerateStream final : public GenerateSink {
 public:
  GenerateStream(grpc::ServerWriteReactor<pb::GenerateResponse>* reactor, const ServiceDeps& d)
      : reactor_(reactor), d_(d), cancel_(std::make_shared<CancelToken>()) {}

  const CancelTokenPtr& cancel() const { return cancel_; }
  // These two before the engine task is submitted (so before on_done can run).
  void set_pulls(uint64_t bytes, std::vector<pb::ContextTransport> transports) {
    bytes_pulled_ = bytes;
    transports_ = std::move(transports);
  }
  void set_fuse_report(std::optional<FuseReport> r) { fuse_ = std::move(r); }

  void on_token(int32_t id, std::string_view text, const TokenLogprobs* lp) override {
    pb::GenerateResponse msg;
    pb::TokenEvent* t = msg.mutable_token();
    t->set_id(id);
    t->set_text(std::string(text));
    if (lp != nullptr) {
      t->set_logprob(lp->logprob);
      for (const auto& [top_id, top_lp] : lp->top) {
        pb::TopLogprob* e = t->add_top();
        e->set_id(top_id);
        e->set_logprob(top_lp);
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (broken_ || final_) return;
    pending_.push_back(std::move(msg));
    pump_locked();
  }

  void on_done(Result<GenerateOutcome> r) override {
    if (!r.ok()) return fail(r.status());
    const GenerateOutcome& o = *r;
    pb::GenerateResponse msg;
    pb::GenerateSummary* s = msg.mutable_done();
    s->set_stop_reason(to_proto(o.reason));
    s->set_context_tokens(static_cast<uint32_t>(o.n_context));
    s->set_prompt_tokens(static_cast<uint32_t>(o.n_prompt));
    s->set_cached_tokens(static_cast<uint32_t>(o.n_cached));
    s->set_generated_tokens(static_cast<uint32_t>(o.n_generated));
    s->set_time_to_first_token_ms(o.ttft_ms);
    s->set_decode_ms(o.decode_ms);
    s->set_context_bytes_pulled(bytes_pulled_);
    for (const pb::ContextTransport& t : transports_) *s->add_context_transports() = t;
    if (o.kept) s->set_cache_id(o.kept->id);
    s->set_text(o.text);  // valid UTF-8, as every TokenEvent.text (runtime::GenerateSink)
    s->set_tail_text(o.tail);
    if (fuse_) to_proto(*fuse_, s->mutable_fuse());
    d_.metrics->observe_time_to_first_token(o.ttft_ms / 1e3);
    if (o.n_generated > 1) d_.metrics->observe_time_per_output_token(o.decode_ms / 1e3 / (o.n_generated - 1));
    std::lock_guard<std::mutex> lock(mu_);
    if (final_) return;
    if (!broken_) pending_.push_back(std::move(msg));
    final_ = broken_ ? cancelled("the client went away") : Status::Ok();
    pump_locked();
  }

  // Ends the call with `st` (after the queued messages), at most once.
  void fail(const Status& st) {
    std::lock_guard<std::mutex> lock(mu_);
    if (final_) return;
    final_ = st;
    pump_locked();
  }

  // From the reactor's OnWriteDone.
  void on_write_done(bool ok) {
    std::lock_guard<std::mutex> lock(mu_);
    writing_ = false;
    if (!ok) {  // the client is gone: drop what is queued, stop the generation
      broken_ = true;
      pending_.clear();
      cancel_->cancel();
    }
    pump_locked();
  }

  Status final_status() {
    std::lock_guard<std::mutex> lock(mu_);
    return final_.value_or(Status::Ok());
  }

 private:
  void pump_locked() {
    if (writing_ || finished_) return;
    if (!broken_ && !pending_.empty()) {
      current_ = std::move(pending_.front());
      pending_.pop_front();
      writing_ = true;
      d_.metrics->add_bytes_sent(current_.ByteSizeLong());
      reactor_->StartWrite(&current_);
      return;
    }
    if (final_) {
      finished_ = true;
      reactor_->Finish(to_grpc_status(*final_));  // the reactor may be deleted from here on
    }
  }

  grpc::ServerWriteReactor<pb::GenerateResponse>* const reactor_;
  const ServiceDeps& d_;
  const CancelTokenPtr cancel_;
  uint64_t bytes_pulled_ = 0;
  std::vector<pb::ContextTransport> transports_;
  std::optional<FuseReport> fuse_;
  std::mutex mu_;
  std::deque<pb::GenerateResponse> pending_;
  pb::GenerateResponse current_;  // the message being written
  bool writing_ = false, broken_ = false, finished_ = false;
  std::optional<Status> final_;
};

class GenerateCall final : public grpc::ServerWriteReactor<pb::GenerateResponse> {
 public:
  GenerateCall(const ServiceDeps& d, grpc::CallbackServerContext* ctx, const pb::GenerateRequest& req)
      : d_(d), log_(*d.metrics, "Generate", *ctx), stream_(std::make_shared<GenerateStream>(this, d)) {
    const Status admitted = rpc::admit(d.call_policy(), *ctx, req);
    if (!admitted.ok()) {
      stream_->fail(admitted);
      return;
    }
    auto spec = convert_generate(req, request_limits(d));
    if (!spec.ok()) {
      stream_->fail(spec.status());
      return;
    }

    SessionInput in;
    in.tokens = std::move(spec->session.tokens);
    in.arrival = log_.start();
    in.cancel = stream_->cancel();
    auto state = std::make_shared<std::pair<SessionInput, GenerateOptions>>(std::move(in), std::move(spec->options));
    const ServiceDeps* deps = &d_;
    std::shared_ptr<GenerateStream> stream = stream_;
    resolve_context(d_, std::move(spec->session), stream_->cancel(),
                    [deps, stream, state](Result<ResolvedContext> r) {
                      if (!r.ok()) return stream->fail(r.status());
                      stream->set_pulls(r->bytes_pulled, std::move(r->transports));
                      stream->set_fuse_report(r->fuse);
                      r->move_to(state->first);
                      deps->engine->submit_generate(std::move(state->first), std::move(state->second), stream);
                    });
  }

  void OnWriteDone(bool ok) override { stream_->on_write_done(ok); }
  void OnCancel() override { stream_->cancel()->cancel(); }
  void OnDone() override {
    log_.done(stream_->final_status());
    delete this;
  }

 private:
  const ServiceDeps& d_;
  rpc::CallLog log_;
  std::shared_ptr<GenerateStream> stream_;
};

// ============================== Prefill ==============================

class PrefillCall final : public rpc::UnaryCall {
 public:
  PrefillCall(const ServiceDeps& d, grpc::CallbackServerContext* ctx, const pb::PrefillRequest& req,
              pb::PrefillResponse* resp)
      : rpc::UnaryCall(*d.metrics, "Prefill", ctx), cancel_(std::make_shared<CancelToken>()) {
    const Status admitted = rpc::admit(d.call_policy(), *ctx, req);
    if (!admitted.ok()) {
      complete(admitted);
      return;
    }
    auto spec = convert_prefill(req, request_limits(d));
    if (!spec.ok()) {
      complete(spec.status());
      return;
    }

    auto in = std::make_shared<SessionInput>();
    in->tokens = std::move(spec->session.tokens);
    in->arrival = log_.start();
    in->cancel = cancel_;
    const PrefillOptions opt = spec->options;
    const ServiceDeps* deps = &d;
    const uint64_t fingerprint = d.identity->fingerprint;
    // `this` stays valid until complete() calls Finish, which happens exactly once below.
    resolve_context(d, std::move(spec->session), cancel_, [this, deps, in, opt, resp, fingerprint](Result<ResolvedContext> r) {
      if (!r.ok()) return complete(r.status());
      if (r->fuse) to_proto(*r->fuse, resp->mutable_fuse());
      for (pb::ContextTransport& t : r->transports) *resp->add_context_transports() = std::move(t);
      r->move_to(*in);
      deps->engine->submit_prefill(std::move(*in), opt, [this, deps, resp, fingerprint](Result<PrefillOutcome> p) {
        if (!p.ok()) return complete(p.status());
        resp->set_cache_id(p->cache.id);
        resp->set_n_tokens(static_cast<uint32_t>(p->cache.n_tokens));
        resp->set_fingerprint(fingerprint);
        resp->set_cache_bytes(p->cache.bytes);
        resp->set_prefill_ms(p->prefill_ms);
        deps->metrics->add_bytes_sent(resp->ByteSizeLong());
        complete(Status::Ok());
      });
    });
  }
  void OnCancel() override { cancel_->cancel(); }

 private:
  CancelTokenPtr cancel_;
};

// ============================== ImportCache ==============================

class ImportCall final : public grpc::ServerReadReactor<pb::CacheChunk> {
 public:
  ImportCall(const ServiceDeps& d, grpc::CallbackServerContext* ctx, pb::ImportCacheResponse* resp)
      : d_(d), ctx_(ctx), resp_(resp), log_(*d.metrics, "ImportCache", *ctx),
        reader_(*d.identity, *d.import_buffers, /*n_ctx_min=*/0, d.import_limits) {
    const Status st = d.auth->check(*ctx);
    if (st.ok()) {
      StartRead(&msg_);
    } else {
      end(st);
    }
  }

  void OnReadDone(bool ok) override {
    if (ok) {
      const uint64_t n = msg_.ByteSizeLong();
      d_.metrics->add_bytes_received(n);
      if (n > d_.config->max_message_bytes) {
        return end(invalid_argument(
            fmt::format("cache message of {} bytes exceeds --max-message-bytes {}", n, d_.config->max_message_bytes)));
      }
      const Status st = reader_.add(std::move(msg_));
      if (!st.ok()) return end(st);
      msg_.Clear();
      StartRead(&msg_);
      return;
    }
    // The client half-closed (or went away): store the cache only if the stream was complete.
    if (ctx_->IsCancelled()) return end(cancelled("the client cancelled the import"));
    end(store());
  }
  void OnDone() override {
    log_.done(status_);
    delete this;
  }

 private:
  Status store() {
    KVB_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, reader_.finish());
    const uint64_t limit = d_.config->request_cache_limit();
    if (cache->bytes_allocated() > limit) {
      return resource_exhausted(fmt::format("imported cache of {} bytes exceeds --max-request-cache-bytes {}",
                                            cache->bytes_allocated(), limit));
    }
    // Stored caches live where the engine computes (device memory on a GPU; the CPU keeps it as is).
    KVB_ASSIGN_OR_RETURN(cache, d_.stager->to_device(std::move(cache)));
    InsertOptions io;
    io.fingerprint = d_.identity->fingerprint;
    KVB_ASSIGN_OR_RETURN(const CacheInfo info, d_.store->insert(std::shared_ptr<const KvCache>(std::move(cache)), io));
    resp_->set_cache_id(info.id);
    resp_->set_n_tokens(static_cast<uint32_t>(info.n_tokens));
    resp_->set_cache_bytes(info.bytes);
    d_.metrics->add_bytes_sent(resp_->ByteSizeLong());
    return Status::Ok();
  }

  void end(Status st) {
    status_ = std::move(st);
    Finish(to_grpc_status(status_));
  }

  const ServiceDeps& d_;
  grpc::CallbackServerContext* ctx_;
  pb::ImportCacheResponse* resp_;
  rpc::CallLog log_;
  Status status_;
  wire::CacheStreamReader reader_;
  pb::CacheChunk msg_;
};

}  // namespace

// ============================== SelfAddresses ==============================

void SelfAddresses::set(std::string name, std::vector<std::string> addresses) {
  std::lock_guard<std::mutex> lock(mu_);
  name_ = std::move(name);
  addresses_ = std::move(addresses);
}

bool SelfAddresses::contains(std::string_view agent) const {
  std::lock_guard<std::mutex> lock(mu_);
  return std::find(addresses_.begin(), addresses_.end(), agent) != addresses_.end();
}

std::string SelfAddresses::name() const {
  std::lock_guard<std::mutex> lock(mu_);
  return name_;
}

// ============================== the service ==============================

AgentServiceImpl::AgentServiceImpl(ServiceDeps deps) : d_(std::move(deps)) {}

grpc::ServerUnaryReactor* AgentServiceImpl::GetInfo(grpc::CallbackServerContext* ctx, const pb::GetInfoRequest* req,
                                                    pb::AgentInfo* resp) {
  auto* call = new rpc::UnaryCall(*d_.metrics, "GetInfo", ctx);
  const Status st = rpc::admit(d_.call_policy(), *ctx, *req);
  if (!st.ok()) {
    call->complete(st);
    return call;
  }
  const Model& m = *d_.model;
  resp->set_name(d_.self->name());
  resp->set_version(kVersion);
  wire::to_proto(*d_.identity, resp->mutable_model());
  resp->set_model_path(m.path);
  resp->set_backend(d_.engine->backend_description());
  resp->set_tokenizer(m.tokenizer->vocab().model == Vocab::Model::kSpm ? "spm" : "bpe");
  resp->set_bos_id(m.tokenizer->bos());
  resp->set_eos_id(m.tokenizer->eos());
  pb::Limits* lim = resp->mutable_limits();
  lim->set_max_context_tokens(static_cast<uint32_t>(d_.engine->ctx_size()));
  lim->set_max_new_tokens(static_cast<uint32_t>(d_.config->max_new_tokens));
  lim->set_max_cache_store_bytes(d_.store->max_bytes());
  lim->set_max_request_cache_bytes(d_.config->request_cache_limit());
  lim->set_max_message_bytes(d_.config->max_message_bytes);
  lim->set_default_cache_ttl_seconds(d_.store->default_ttl_s());
  const runtime::EngineLoad load = d_.engine->load();
  lim->set_parallel(uint32_t(load.parallel));
  lim->set_max_batch_tokens(uint32_t(load.max_batch_tokens));
  lim->set_max_queue(uint32_t(load.max_queue));
  lim->set_prefill_chunk(uint32_t(load.prefill_chunk));
  lim->set_prefix_cache_bytes(d_.config->prefix_cache_bytes);
  lim->set_prefix_block_tokens(uint32_t(load.prefix_block_tokens));
  lim->set_prefill_step_factor(d_.config->prefill_step_factor);
  for (const WireDType t : kWireDTypes) resp->add_wire_dtypes(wire::to_proto(t));
  resp->add_transports("grpc");
  if (d_.peers->endpoint().nccl) resp->add_transports("nccl");
  if (d_.peers->endpoint().cuda_ipc) resp->add_transports("cuda-ipc");
  to_proto(d_.peers->endpoint(), resp->mutable_transport_info());
  if (d_.fuser) resp->set_fuser(d_.fuser->embedded_description());
  if (auto chat = ChatTemplate::from_source(m.tokenizer->vocab().chat_template); chat.ok()) {
    resp->set_chat_template(std::string(chat->name()));
  }
  d_.metrics->add_bytes_sent(resp->ByteSizeLong());
  call->complete(Status::Ok());
  return call;
}

grpc::ServerWriteReactor<pb::GenerateResponse>* AgentServiceImpl::Generate(grpc::CallbackServerContext* ctx,
                                                                            const pb::GenerateRequest* req) {
  return new GenerateCall(d_, ctx, *req);
}

grpc::ServerUnaryReactor* AgentServiceImpl::Prefill(grpc::CallbackServerContext* ctx, const pb::PrefillRequest* req,
                                                    pb::PrefillResponse* resp) {
  return new PrefillCall(d_, ctx, *req, resp);
}

grpc::ServerReadReactor<pb::CacheChunk>* AgentServiceImpl::ImportCache(grpc::CallbackServerContext* ctx,
                                                                        pb::ImportCacheResponse* resp) {
  return new ImportCall(d_, ctx, resp);
}

grpc::ServerUnaryReactor* AgentServiceImpl::ListCaches(grpc::CallbackServerContext* ctx,
                                                       const pb::ListCachesRequest* req, pb::ListCachesResponse* resp) {
  auto* call = new rpc::UnaryCall(*d_.metrics, "ListCaches", ctx);
  Status st = rpc::admit(d_.call_policy(), *ctx, *req);
  if (st.ok()) {
    for (const CacheInfo& c : d_.store->list()) to_proto(c, resp->add_caches());
    to_proto(d_.store->stats(), resp->mutable_stats());
    d_.metrics->add_bytes_sent(resp->ByteSizeLong());
  }
  call->complete(std::move(st));
  return call;
}

grpc::ServerUnaryReactor* AgentServiceImpl::DropCache(grpc::CallbackServerContext* ctx, const pb::DropCacheRequest* req,
                                                      pb::DropCacheResponse* /*resp*/) {
  auto* call = new rpc::UnaryCall(*d_.metrics, "DropCache", ctx);
  Status st = rpc::admit(d_.call_policy(), *ctx, *req);
  if (st.ok()) st = check_cache_id(req->cache_id(), "cache_id");
  if (st.ok()) st = d_.store->drop(req->cache_id());
  call->complete(std::move(st));
  return call;
}

grpc::ServerUnaryReactor* AgentServiceImpl::PinCache(grpc::CallbackServerContext* ctx, const pb::PinCacheRequest* req,
                                                     pb::PinCacheResponse* resp) {
  auto* call = new rpc::UnaryCall(*d_.metrics, "PinCache", ctx);
  Status st = rpc::admit(d_.call_policy(), *ctx, *req);
  if (st.ok()) st = check_cache_id(req->cache_id(), "cache_id");
  if (st.ok()) {
    auto info = d_.store->set_pinned(req->cache_id(), req->pinned());
    if (info.ok()) {
      to_proto(*info, resp->mutable_cache());
      d_.metrics->add_bytes_sent(resp->ByteSizeLong());
    } else {
      st = info.status();
    }
  }
  call->complete(std::move(st));
  return call;
}

grpc::ServerUnaryReactor* AgentServiceImpl::Tokenize(grpc::CallbackServerContext* ctx, const pb::TokenizeRequest* req,
                                                     pb::TokenizeResponse* resp) {
  auto* call = new rpc::UnaryCall(*d_.metrics, "Tokenize", ctx);
  Status st = rpc::admit(d_.call_policy(), *ctx, *req);
  if (st.ok() && req->texts_size() > kMaxTokenizeTexts) {
    st = invalid_argument(fmt::format("texts: {} texts, at most {}", req->texts_size(), kMaxTokenizeTexts));
  }
  if (st.ok()) {
    const Tokenizer& tok = *d_.model->tokenizer;
    EncodeOptions opt;
    opt.add_bos = !req->raw() && (!req->has_add_bos() || req->add_bos());
    opt.add_eos = false;
    opt.add_space_prefix = !req->raw();
    for (const std::string& text : req->texts()) {
      const std::vector<int32_t> ids = tok.encode(text, opt);
      resp->add_tokens()->mutable_ids()->Assign(ids.begin(), ids.end());
    }
    d_.metrics->add_bytes_sent(resp->ByteSizeLong());
  }
  call->complete(std::move(st));
  return call;
}

grpc::ServerUnaryReactor* AgentServiceImpl::Detokenize(grpc::CallbackServerContext* ctx,
                                                       const pb::DetokenizeRequest* req, pb::DetokenizeResponse* resp) {
  auto* call = new rpc::UnaryCall(*d_.metrics, "Detokenize", ctx);
  Status st = rpc::admit(d_.call_policy(), *ctx, *req);
  std::vector<int32_t> ids;
  if (st.ok()) {
    if (req->has_tokens()) {
      ids.assign(req->tokens().ids().begin(), req->tokens().ids().end());
      const int32_t n_vocab = d_.model->tokenizer->n_vocab();
      for (size_t i = 0; i < ids.size() && st.ok(); ++i) {
        if (ids[i] < 0 || ids[i] >= n_vocab) {
          st = invalid_argument(fmt::format("tokens.ids[{}] = {} is outside the vocabulary [0, {})", i, ids[i], n_vocab));
        }
      }
    } else if (req->has_cache_id()) {
      st = check_cache_id(req->cache_id(), "cache_id");
      if (st.ok()) {
        auto e = d_.store->get(req->cache_id());
        if (e.ok()) {
          ids.assign(e->cache->tokens().begin(), e->cache->tokens().end());
        } else {
          st = e.status();
        }
      }
    } else {
      st = invalid_argument("set tokens or cache_id");
    }
  }
  if (st.ok()) {
    const Tokenizer& tok = *d_.model->tokenizer;
    resp->mutable_ids()->Assign(ids.begin(), ids.end());
    resp->set_text(tok.decode(ids));
    for (const int32_t id : ids) resp->add_pieces(fuser::token_text(tok, id));
    d_.metrics->add_bytes_sent(resp->ByteSizeLong());
  }
  call->complete(std::move(st));
  return call;
}

}  // namespace kvb::agent
