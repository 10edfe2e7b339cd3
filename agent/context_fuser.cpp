#include "agent/context_fuser.h"

#include <chrono>
#include <future>

#include <fmt/format.h>

#include "agent/remote_fuser.h"
#include "agent/sharer_rpc.h"
#include "fuser/align.h"

namespace kvb::agent {

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) { return std::chrono::duration<double, std::milli>(Clock::now() - t0).count(); }

// Whether every slice of `layers` has landed.
bool all_complete(const PullProgress& p, const KvLayerSet& layers) {
  for (const bool is_v : {false, true}) {
    for (const uint32_t l : is_v ? layers.v : layers.k) {
      if (!p.complete(l, is_v)) return false;
    }
  }
  return true;
}

// The embedded fuser working as the sharer's slices land: on_data fuses each receiver slice whose
// sharer slice is complete, once (after a raw pull fell back to grpc the same slices complete
// again), counting what it fused and what it fused before the pull ended.
class SliceFuser {
 public:
  SliceFuser(fuser::Fuser& fuser, const fuser::FuserDescription& desc, KvCache& receiver, FuseReport& report)
      : fuser_(fuser), desc_(desc), receiver_(receiver), report_(report),
        fused_(size_t(receiver.layout().n_layer) * 2, 0) {}

  Status on_data(const PullProgress& r) {
    const KvCache* s = r.partial();
    if (s == nullptr) return Status::Ok();  // the header is not in yet
    if (s->n_tokens() != receiver_.n_tokens()) {
      return internal_error(fmt::format("the sharer's aligned cache has {} tokens, the receiver's {}", s->n_tokens(),
                                        receiver_.n_tokens()));
    }
    const fuser::SharerMemory where = s->is_host() ? fuser::SharerMemory::kHost : fuser::SharerMemory::kDevice;
    const bool pull_done = all_complete(r, desc_.plan.sharer);
    for (const bool is_v : {false, true}) {
      for (const uint32_t t : is_v ? desc_.plan.receiver.v : desc_.plan.receiver.k) {
        uint8_t& done = fused_[size_t(t) * 2 + (is_v ? 1 : 0)];
        const uint32_t src = uint32_t(desc_.layer_map[t]);
        if (done || !r.complete(src, is_v)) continue;
        KVB_RETURN_IF_ERROR(fuser_.fuse(int32_t(t), is_v, s->used_rows(int32_t(src), is_v),
                                        receiver_.used_rows(int32_t(t), is_v), where));
        done = 1;
        ++report_.slices_fused;
        if (!pull_done) ++report_.slices_fused_early;
      }
    }
    return Status::Ok();
  }

 private:
  fuser::Fuser& fuser_;
  const fuser::FuserDescription& desc_;
  KvCache& receiver_;
  FuseReport& report_;
  std::vector<uint8_t> fused_;  // [layer][K, V]
};

// A temporary cache on the sharer (the context re-prefilled over aligned tokens), dropped when the
// fusion ends whatever happened.
class TemporaryCache {
 public:
  explicit TemporaryCache(SharerRpc& sharer) : sharer_(sharer) {}
  ~TemporaryCache() {
    if (!id_.empty()) sharer_.drop(id_);
  }
  TemporaryCache(const TemporaryCache&) = delete;
  TemporaryCache& operator=(const TemporaryCache&) = delete;
  void hold(std::string id) { id_ = std::move(id); }

 private:
  SharerRpc& sharer_;
  std::string id_;
};

}  // namespace

ContextFuser::ContextFuser(const Model& model, const ModelIdentity& identity, runtime::EngineLoop& engine,
                           PeerClient& peers, fuser::Fuser* embedded)
    : model_(model), identity_(identity), engine_(engine), peers_(peers), embedded_(embedded) {}

std::string ContextFuser::embedded_description() const { return embedded_ ? fuser::describe(*embedded_).name : ""; }

Result<FusedContext> ContextFuser::fuse(const std::string& sharer, const std::string& cache_id, const FuserSpec& spec,
                                        const PullOptions& request_pull, const runtime::CancelTokenPtr& cancel_ptr) {
  runtime::CancelToken& cancel = *cancel_ptr;
  const auto t0 = Clock::now();
  FusedContext result;
  FuseReport& report = result.report;

  // 1. The fuser and the sharer: the fuser must be built for this model and the sharer's.
  KVB_ASSIGN_OR_RETURN(const fuser::FuserDescription desc, describe_fuser(spec, cancel));
  KVB_RETURN_IF_ERROR(fuser::check_side(desc, desc.receiver, identity_, "receiver"));
  SharerRpc rpc(peers_, sharer, cancel);
  KVB_ASSIGN_OR_RETURN(const SharerInfo info, rpc.info());
  if (info.identity == identity_) {  // the same model: an ordinary pull, nothing to fuse
    KVB_RETURN_IF_ERROR(pull_unfused(sharer, cache_id, spec, request_pull, cancel, result));
    report.fuse_ms = ms_since(t0);
    return result;
  }
  KVB_RETURN_IF_ERROR(fuser::check_side(desc, desc.sharer, info.identity, "sharer"));

  // 2. The context as text, then as this model's tokens.
  KVB_ASSIGN_OR_RETURN(const SharerContext context, rpc.read_context(cache_id));
  // This model's BOS whether or not the sharer's vocab uses one (SmolLM2's does not; a llama2.c
  // receiver must still see its BOS); kvbridge fuser dump trains on the same (fuser/align.h).
  const std::vector<int32_t> ids = fuser::reread_context(*model_.tokenizer, context.text);
  if (ids.empty()) return invalid_argument(fmt::format("cache {} on {} holds no text to fuse", cache_id, sharer));
  if (int64_t(ids.size()) > engine_.ctx_size()) {
    return resource_exhausted(fmt::format("the fused context of {} tokens exceeds the context size of {}", ids.size(),
                                          engine_.ctx_size()));
  }

  // 4. This model's own cache over the context, computed on the engine thread while the sharer
  //    aligns and prefills (it needs only the ids).
  std::future<Result<runtime::PrefillOutcome>> prefilled = prefill_context(ids, request_pull, cancel_ptr);

  // 3. Sharer tokens, one per receiver position, and the sharer's cache over exactly those: its
  //    own when they match, else a temporary one, dropped at the end whatever happens.
  report.aligned = info.identity.tokenizer_hash != identity_.tokenizer_hash;
  std::vector<int32_t> aligned = ids;
  if (report.aligned) {
    KVB_ASSIGN_OR_RETURN(aligned, align(rpc, info, ids, desc.strategy));
  }
  {
    std::string sharer_cache = cache_id;
    TemporaryCache temporary(rpc);
    if (aligned != context.ids) {
      KVB_ASSIGN_OR_RETURN(sharer_cache, rpc.prefill(aligned));
      temporary.hold(sharer_cache);
    }

    // The receiver's own cache (step 4, running since before the alignment).
    Result<runtime::PrefillOutcome> own = prefilled.get();
    if (!own.ok()) return own.status().with_context("prefilling the context on this agent");
    result.cache = std::move(own->owned);

    // 5. and 6. The sharer slices the fuser needs, and the fusion.
    if (desc.plan.receiver.size() > 0) {
      KVB_RETURN_IF_ERROR(pull_and_fuse(sharer, sharer_cache, spec, desc, info.identity, request_pull, cancel,
                                        *result.cache, report));
    }
  }  // a temporary sharer cache is dropped here
  report.fused_tokens = uint32_t(result.cache->n_tokens());
  report.fuse_ms = ms_since(t0);
  return result;
}

Result<fuser::FuserDescription> ContextFuser::describe_fuser(const FuserSpec& spec,
                                                             runtime::CancelToken& cancel) const {
  if (!spec.embedded) return describe_remote_fuser(peers_, spec.address, cancel);
  if (embedded_ == nullptr) return failed_precondition("this agent has no embedded fuser (start it with --fuser DIR)");
  return fuser::describe(*embedded_);
}

Status ContextFuser::pull_unfused(const std::string& sharer, const std::string& cache_id, const FuserSpec& spec,
                                  const PullOptions& request_pull, runtime::CancelToken& cancel,
                                  FusedContext& result) {
  PullOptions po;
  po.dtype = spec.dtype;
  po.transport = request_pull.transport;
  po.reserve_cells = request_pull.reserve_cells;
  KVB_ASSIGN_OR_RETURN(PulledCache p, peers_.pull(sharer, cache_id, po, cancel));
  result.cache = std::move(p.cache);
  result.report.sharer_bytes = p.wire_bytes;
  result.report.transport = p.transport;
  return Status::Ok();
}

std::future<Result<runtime::PrefillOutcome>> ContextFuser::prefill_context(const std::vector<int32_t>& ids,
                                                                           const PullOptions& request_pull,
                                                                           const runtime::CancelTokenPtr& cancel) {
  runtime::SessionInput in;
  in.tokens = ids;
  in.cancel = cancel;
  runtime::PrefillOptions popt;
  popt.hand_back = true;
  popt.reserve_cells = request_pull.reserve_cells;
  auto promise = std::make_shared<std::promise<Result<runtime::PrefillOutcome>>>();
  std::future<Result<runtime::PrefillOutcome>> future = promise->get_future();
  engine_.submit_prefill(std::move(in), popt,
                         [promise](Result<runtime::PrefillOutcome> r) { promise->set_value(std::move(r)); });
  return future;
}

Result<std::vector<int32_t>> ContextFuser::align(SharerRpc& rpc, const SharerInfo& info,
                                                 const std::vector<int32_t>& ids, fuser::AlignStrategy strategy) {
  fuser::SharerSpecials specials;
  specials.bos = info.bos_id;
  specials.eos = info.eos_id;
  specials.n_vocab = int32_t(info.identity.n_vocab);
  auto a = fuser::align_tokens(ids, *model_.tokenizer, rpc.encoder(), rpc.piece_texts(), specials, strategy);
  if (!a.ok()) return a.status().with_context(fmt::format("aligning tokens with {}", rpc.address()));
  return std::move(a->sharer_ids);
}

Status ContextFuser::pull_and_fuse(const std::string& sharer, const std::string& sharer_cache, const FuserSpec& spec,
                                   const fuser::FuserDescription& desc, const ModelIdentity& sharer_id,
                                   const PullOptions& request_pull, runtime::CancelToken& cancel, KvCache& receiver,
                                   FuseReport& report) {
  PullOptions po;
  po.dtype = spec.dtype;
  po.transport = request_pull.transport;
  po.layers = desc.plan.sharer;  // gated-off layers never travel
  po.identity = &sharer_id;
  // Embedded: each receiver slice is fused as soon as its sharer slice has arrived, while the rest
  // of the pull streams in. Remote: fuse_remote serializes its slices from host memory.
  std::optional<SliceFuser> slices;
  if (spec.embedded) {
    slices.emplace(*embedded_, desc, receiver, report);
    po.on_data = [&slices](const PullProgress& p) { return slices->on_data(p); };
  } else {
    po.host_cache = true;
  }
  KVB_ASSIGN_OR_RETURN(PulledCache pulled, peers_.pull(sharer, sharer_cache, po, cancel));
  report.sharer_bytes = pulled.wire_bytes;
  report.transport = pulled.transport;
  if (pulled.cache->n_tokens() != receiver.n_tokens()) {
    return internal_error(fmt::format("the sharer's aligned cache has {} tokens, the receiver's {}",
                                      pulled.cache->n_tokens(), receiver.n_tokens()));
  }
  if (spec.embedded) {
    if (report.slices_fused != desc.plan.receiver.size()) {
      return internal_error("the pull ended with receiver slices left unfused");
    }
    return Status::Ok();
  }
  RemoteFuseStats stats;
  const Status st = fuse_remote(peers_, spec.address, spec.dtype, desc, *pulled.cache, sharer_id, receiver,
                                identity_, cancel, stats);
  report.slices_fused = stats.slices_fused;
  report.fuser_bytes_sent = stats.bytes_sent;
  report.fuser_bytes_received = stats.bytes_received;
  return st;
}

}  // namespace kvb::agent
