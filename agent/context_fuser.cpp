#include "agent/context_fuser.h"

#include <chrono>
#include <future>
#include <thread>

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include "fuser/align.h"
#include "fuser/fuse_session.h"
#include "kvbridge/v1/agent.grpc.pb.h"
#include "kvbridge/v1/fuser.grpc.pb.h"
#include "proto/wire_convert.h"
#include "rpc/logging.h"

namespace kvb::agent {

namespace {

namespace pb = ::kvbridge::v1;
using Clock = std::chrono::steady_clock;

// What receiver mode needs to know of a fuser, embedded or remote.
struct FuserDesc {
  std::string name;  // "sharer -> receiver"
  fuser::ModelSide sharer, receiver;
  std::vector<int32_t> layer_map;
  fuser::FusePlan plan;
  fuser::AlignStrategy strategy = fuser::AlignStrategy::kFirst;
};

FuserDesc describe(const fuser::Fuser& f) {
  const fuser::FuserConfig& c = f.config();
  FuserDesc d;
  d.name = fmt::format("{} -> {}", c.sharer.name, c.receiver.name);
  d.sharer = c.sharer;
  d.receiver = c.receiver;
  for (int32_t t = 0; t < c.receiver.n_layer; ++t) d.layer_map.push_back(f.sharer_layer(t));
  d.plan = fuser::fuse_plan(f);
  d.strategy = c.align_strategy;
  return d;
}

fuser::ModelSide side_from_proto(const pb::FuserModelSide& m) {
  fuser::ModelSide s;
  s.name = m.name();
  s.n_layer = int32_t(m.n_layer());
  s.n_head_kv = int32_t(m.n_head_kv());
  s.head_dim = int32_t(m.head_dim());
  s.fingerprint = m.fingerprint();
  return s;
}

// A remote fuser's GetInfo, checked for internal consistency (it is input from the network).
Result<FuserDesc> describe(const pb::FuserInfo& info) {
  FuserDesc d;
  d.sharer = side_from_proto(info.sharer());
  d.receiver = side_from_proto(info.receiver());
  d.name = fmt::format("{} -> {}", d.sharer.name, d.receiver.name);
  if (info.layers_size() != d.receiver.n_layer) {
    return invalid_argument(fmt::format("the fuser describes {} layers for a {}-layer receiver", info.layers_size(),
                                        d.receiver.n_layer));
  }
  for (const pb::FuserLayer& l : info.layers()) {
    if (l.sharer_layer() >= uint32_t(d.sharer.n_layer)) {
      return invalid_argument(fmt::format("the fuser maps to sharer layer {} of {}", l.sharer_layer(), d.sharer.n_layer));
    }
    d.layer_map.push_back(int32_t(l.sharer_layer()));
  }
  d.plan.sharer = wire::from_proto(info.sharer_layers());
  d.plan.receiver = wire::from_proto(info.receiver_layers());
  auto strategy = fuser::parse_align_strategy(info.alignment_strategy().empty() ? "first" : info.alignment_strategy());
  if (!strategy.ok()) return strategy.status();
  d.strategy = *strategy;
  return d;
}

// The fuser must have been built for `id` on that side: fingerprint when bound, shapes always.
Status check_side(const FuserDesc& f, const fuser::ModelSide& side, const ModelIdentity& id, std::string_view who) {
  if (side.fingerprint != 0 && side.fingerprint != id.fingerprint) {
    return failed_precondition(fmt::format("the fuser ({}) is for a {} of fingerprint {:016x}; the {} runs {:016x}",
                                           f.name, who, side.fingerprint, who, id.fingerprint));
  }
  if (uint32_t(side.n_layer) != id.n_layer || uint32_t(side.n_head_kv) != id.n_head_kv ||
      uint32_t(side.head_dim) != id.head_dim) {
    return failed_precondition(fmt::format(
        "the fuser ({}) is for a {} with {} layers x {} kv heads x {}; the {} has {} x {} x {}", f.name, who,
        side.n_layer, side.n_head_kv, side.head_dim, who, id.n_layer, id.n_head_kv, id.head_dim));
  }
  return Status::Ok();
}

// The Fuse stream with a remote fuser: a writer thread sends the start message and both input
// streams (interleaved one message each, so the fuser can start on early layers), while this
// thread decodes the fused slices straight over `receiver`'s cells.
Status fuse_remote(PeerClient& peers, const std::string& address, const FuserSpec& spec, const FuserDesc& desc,
                   const KvCache& sharer, const ModelIdentity& sharer_id, KvCache& receiver,
                   const ModelIdentity& receiver_id, runtime::CancelToken& cancel, FuseReport& report) {
  const std::string what = fmt::format("fusing with the fuser at {}", address);
  KVB_ASSIGN_OR_RETURN(auto s_enc, KvWireEncoder::create(sharer, sharer_id, spec.dtype, WireCompression::kNone, 0,
                                                         desc.plan.sharer));
  KVB_ASSIGN_OR_RETURN(auto r_enc, KvWireEncoder::create(receiver, receiver_id, spec.dtype, WireCompression::kNone, 0,
                                                         desc.plan.receiver));
  auto stub = pb::FuserService::NewStub(peers.channel(address));
  grpc::ClientContext ctx;
  peers.prepare(ctx);
  const runtime::ScopedCancelHook hook(cancel, [&ctx] { ctx.TryCancel(); });
  auto stream = stub->Fuse(&ctx);
  rpc::CallMetrics* metrics = peers.metrics();

  std::atomic<uint64_t> sent{0};
  std::thread writer([&] {
    pb::FuseRequest req;
    pb::FuseStart* start = req.mutable_start();
    start->set_dtype(wire::to_proto(spec.dtype));
    start->set_compression(pb::COMPRESSION_NONE);
    bool ok = stream->Write(req);
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
        ok = stream->Write(req);
      }
    }
    if (ok) stream->WritesDone();
  });

  Status decode_error;
  std::unique_ptr<KvWireDecoder> out;
  pb::FuseResponse resp;
  uint64_t received = 0;
  bool got_summary = false;
  while (decode_error.ok() && stream->Read(&resp)) {
    received += resp.ByteSizeLong();
    if (resp.has_done()) {
      report.slices_fused = resp.done().slices_fused();
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
  while (!decode_error.ok() && stream->Read(&resp)) {
  }
  const grpc::Status gs = stream->Finish();
  report.fuser_bytes_sent = sent;
  report.fuser_bytes_received = received;
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

// Whether every slice of `layers` has landed.
bool all_complete(const PullProgress& p, const KvLayerSet& layers) {
  for (const bool is_v : {false, true}) {
    for (const uint32_t l : is_v ? layers.v : layers.k) {
      if (!p.complete(l, is_v)) return false;
    }
  }
  return true;
}

}  // namespace

ContextFuser::ContextFuser(const Model& model, const ModelIdentity& identity, runtime::EngineLoop& engine, PeerClient& peers,
                           fuser::Fuser* embedded)
    : model_(model), identity_(identity), engine_(engine), peers_(peers), embedded_(embedded) {}

std::string ContextFuser::embedded_description() const { return embedded_ ? describe(*embedded_).name : ""; }

Result<FusedContext> ContextFuser::fuse(const std::string& sharer, const std::string& cache_id, const FuserSpec& spec,
                                        const PullOptions& request_pull, const runtime::CancelTokenPtr& cancel_ptr) {
  runtime::CancelToken& cancel = *cancel_ptr;
  const auto t0 = Clock::now();
  FusedContext result;
  FuseReport& report = result.report;

  // 1. The fuser and the sharer.
  FuserDesc desc;
  if (spec.embedded) {
    if (embedded_ == nullptr) return failed_precondition("this agent has no embedded fuser (start it with --fuser DIR)");
    desc = describe(*embedded_);
  } else {
    auto stub = pb::FuserService::NewStub(peers_.channel(spec.address));
    pb::FuserInfo info;
    KVB_RETURN_IF_ERROR(peers_.unary(*stub, &pb::FuserService::Stub::GetInfo, pb::FuserInfoRequest(), &info, cancel,
                                     fmt::format("asking the fuser at {} for its pair", spec.address)));
    auto d = describe(info);
    if (!d.ok()) return d.status().with_context(fmt::format("the fuser at {}", spec.address));
    desc = std::move(d).value();
  }
  KVB_RETURN_IF_ERROR(check_side(desc, desc.receiver, identity_, "receiver"));

  auto agent = pb::AgentService::NewStub(peers_.channel(sharer));
  pb::AgentInfo sharer_info;
  KVB_RETURN_IF_ERROR(peers_.unary(*agent, &pb::AgentService::Stub::GetInfo, pb::GetInfoRequest(), &sharer_info,
                                   cancel, fmt::format("asking {} for its model", sharer)));
  peers_.remember_endpoint(sharer, sharer_info.transport_info());  // the pull below need not ask again
  const ModelIdentity sharer_id = wire::from_proto(sharer_info.model());
  if (sharer_id == identity_) {  // the same model: an ordinary pull, nothing to fuse
    PullOptions po;
    po.dtype = spec.dtype;
    po.transport = request_pull.transport;
    po.reserve_cells = request_pull.reserve_cells;
    KVB_ASSIGN_OR_RETURN(PulledCache p, peers_.pull(sharer, cache_id, po, cancel));
    result.cache = std::move(p.cache);
    report.sharer_bytes = p.wire_bytes;
    report.transport = p.transport;
    report.fuse_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    return result;
  }
  KVB_RETURN_IF_ERROR(check_side(desc, desc.sharer, sharer_id, "sharer"));

  // 2. The context as text, then as this model's tokens.
  pb::DetokenizeRequest dreq;
  dreq.set_cache_id(cache_id);
  pb::DetokenizeResponse dresp;
  KVB_RETURN_IF_ERROR(peers_.unary(*agent, &pb::AgentService::Stub::Detokenize, dreq, &dresp, cancel,
                                   fmt::format("reading cache {} on {}", cache_id, sharer)));
  const std::vector<int32_t> sharer_ids(dresp.ids().begin(), dresp.ids().end());
  const Tokenizer& tok = *model_.tokenizer;
  const bool bos = !sharer_ids.empty() && sharer_ids[0] == sharer_info.bos_id();
  const std::vector<int32_t> ids = tok.encode(dresp.text(), EncodeOptions{bos, false});
  if (ids.empty()) return invalid_argument(fmt::format("cache {} on {} holds no text to fuse", cache_id, sharer));
  if (int64_t(ids.size()) > engine_.ctx_size()) {
    return resource_exhausted(fmt::format("the fused context of {} tokens exceeds the context size of {}", ids.size(),
                                          engine_.ctx_size()));
  }

  // 4. This model's own cache over the context, computed on the engine thread while the sharer
  //    aligns and prefills (it needs only the ids).
  runtime::SessionInput in;
  in.tokens = ids;
  in.cancel = cancel_ptr;
  runtime::PrefillOptions popt;
  popt.hand_back = true;
  popt.reserve_cells = request_pull.reserve_cells;
  auto promise = std::make_shared<std::promise<Result<runtime::PrefillOutcome>>>();
  auto future = promise->get_future();
  engine_.submit_prefill(std::move(in), popt, [promise](Result<runtime::PrefillOutcome> r) { promise->set_value(std::move(r)); });

  // 3. Sharer tokens, one per receiver position.
  std::vector<int32_t> aligned = ids;
  report.aligned = sharer_id.tokenizer_hash != identity_.tokenizer_hash;
  if (report.aligned) {
    const std::string where = fmt::format("aligning tokens with {}", sharer);
    fuser::BatchEncoder encode = [&](std::span<const std::string> texts) -> Result<std::vector<std::vector<int32_t>>> {
      pb::TokenizeRequest req;
      req.set_raw(true);
      for (const std::string& t : texts) req.add_texts(t);
      pb::TokenizeResponse resp;
      KVB_RETURN_IF_ERROR(peers_.unary(*agent, &pb::AgentService::Stub::Tokenize, req, &resp, cancel, where));
      std::vector<std::vector<int32_t>> out;
      for (const pb::TokenIds& t : resp.tokens()) out.emplace_back(t.ids().begin(), t.ids().end());
      return out;
    };
    fuser::PieceTexts pieces = [&](std::span<const int32_t> sids) -> Result<std::vector<std::string>> {
      pb::DetokenizeRequest req;
      req.mutable_tokens()->mutable_ids()->Assign(sids.begin(), sids.end());
      pb::DetokenizeResponse resp;
      KVB_RETURN_IF_ERROR(peers_.unary(*agent, &pb::AgentService::Stub::Detokenize, req, &resp, cancel, where));
      return std::vector<std::string>(resp.pieces().begin(), resp.pieces().end());
    };
    fuser::SharerSpecials specials;
    specials.bos = sharer_info.bos_id();
    specials.eos = sharer_info.eos_id();
    specials.n_vocab = int32_t(sharer_id.n_vocab);
    auto a = fuser::align_tokens(ids, tok, encode, pieces, specials, desc.strategy);
    if (!a.ok()) return a.status().with_context(where);
    aligned = std::move(a->sharer_ids);
  }

  // The sharer's cache over exactly those tokens: its own when they match, else a temporary one.
  std::string sharer_cache = cache_id;
  bool temporary = false;
  if (aligned != sharer_ids) {
    pb::PrefillRequest preq;
    preq.mutable_tokens()->mutable_ids()->Assign(aligned.begin(), aligned.end());
    preq.set_add_bos(false);
    preq.set_cache_ttl_seconds(300);  // dropped below; the TTL only covers a receiver that dies first
    pb::PrefillResponse presp;
    KVB_RETURN_IF_ERROR(peers_.unary(*agent, &pb::AgentService::Stub::Prefill, preq, &presp, cancel,
                                     fmt::format("prefilling the aligned context on {}", sharer)));
    sharer_cache = presp.cache_id();
    temporary = true;
  }
  auto drop_temporary = [&] {
    if (!temporary) return;
    pb::DropCacheRequest req;
    req.set_cache_id(sharer_cache);
    pb::DropCacheResponse resp;
    runtime::CancelToken never;
    const Status st = peers_.unary(*agent, &pb::AgentService::Stub::DropCache, req, &resp, never, "dropping");
    if (!st.ok()) rpc::log_event(spdlog::level::warn, "fuse", {{"drop_temporary_cache", sharer_cache}, {"error", st.message()}});
  };


  // The receiver's own cache (step 4, running since before the alignment).
  Result<runtime::PrefillOutcome> prefilled = future.get();
  if (!prefilled.ok()) {
    drop_temporary();
    return prefilled.status().with_context("prefilling the context on this agent");
  }
  result.cache = std::move(prefilled->owned);

  // 5. The sharer slices the fuser needs, and 6. the fusion. Embedded: each receiver slice is
  // fused as soon as its sharer slice has arrived, while the rest of the pull streams in.
  Status st;
  if (desc.plan.receiver.size() > 0) {
    KvCache& receiver = *result.cache;
    std::vector<uint8_t> fused(size_t(identity_.n_layer) * 2, 0);
    // Called as sharer slices land (every grpc message, every completed raw slice); fuses each
    // receiver slice whose sharer slice is complete, once: after a raw pull fell back to grpc the
    // same slices complete again.
    auto fuse_ready = [&](const PullProgress& r) -> Status {
      const KvCache* s = r.partial();
      if (s == nullptr) return Status::Ok();  // the header is not in yet
      if (s->n_tokens() != receiver.n_tokens()) {
        return internal_error(fmt::format("the sharer's aligned cache has {} tokens, the receiver's {}",
                                          s->n_tokens(), receiver.n_tokens()));
      }
      const fuser::SharerMemory where = s->is_host() ? fuser::SharerMemory::kHost : fuser::SharerMemory::kDevice;
      const bool pull_done = all_complete(r, desc.plan.sharer);
      for (const bool is_v : {false, true}) {
        for (const uint32_t t : is_v ? desc.plan.receiver.v : desc.plan.receiver.k) {
          uint8_t& done = fused[size_t(t) * 2 + (is_v ? 1 : 0)];
          const uint32_t src = uint32_t(desc.layer_map[t]);
          if (done || !r.complete(src, is_v)) continue;
          KVB_RETURN_IF_ERROR(embedded_->fuse(int32_t(t), is_v, s->used_rows(int32_t(src), is_v),
                                              receiver.used_rows(int32_t(t), is_v), where));
          done = 1;
          ++report.slices_fused;
          if (!pull_done) ++report.slices_fused_early;
        }
      }
      return Status::Ok();
    };
    PullOptions po;
    po.dtype = spec.dtype;
    po.transport = request_pull.transport;
    po.layers = desc.plan.sharer;
    po.identity = &sharer_id;
    if (spec.embedded) {
      po.on_data = fuse_ready;
    } else {
      po.host_cache = true;  // fuse_remote serializes its slices from host memory
    }
    auto pulled = peers_.pull(sharer, sharer_cache, po, cancel);
    if (!pulled.ok()) {
      st = pulled.status();
    } else {
      report.sharer_bytes = pulled->wire_bytes;
      report.transport = pulled->transport;
      if (pulled->cache->n_tokens() != receiver.n_tokens()) {
        st = internal_error(fmt::format("the sharer's aligned cache has {} tokens, the receiver's {}",
                                        pulled->cache->n_tokens(), receiver.n_tokens()));
      } else if (!spec.embedded) {
        st = fuse_remote(peers_, spec.address, spec, desc, *pulled->cache, sharer_id, receiver, identity_, cancel,
                         report);
      } else if (report.slices_fused != desc.plan.receiver.size()) {
        st = internal_error("the pull ended with receiver slices left unfused");
      }
    }
  }
  drop_temporary();
  if (!st.ok()) return st;
  report.fused_tokens = uint32_t(result.cache->n_tokens());
  report.fuse_ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
  return result;
}

}  // namespace kvb::agent
