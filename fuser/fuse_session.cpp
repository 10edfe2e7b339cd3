#include "fuser/fuse_session.h"

#include <algorithm>
#include <chrono>

#include <fmt/format.h>

#include "kernels/registry.h"

namespace kvb::fuser {

namespace {

const char* side_name(FuseSession::Side s) { return s == FuseSession::Side::kSharer ? "sharer" : "receiver"; }

}  // namespace

FusePlan fuse_plan(const Fuser& fuser) {
  FusePlan plan;
  const int32_t n = fuser.config().receiver.n_layer;
  std::vector<uint32_t> sharer_k, sharer_v;
  for (int32_t t = 0; t < n; ++t) {
    const uint32_t s = uint32_t(fuser.sharer_layer(t));
    if (fuser.gate(t, false)) {
      plan.receiver.k.push_back(uint32_t(t));
      sharer_k.push_back(s);
    }
    if (fuser.gate(t, true)) {
      plan.receiver.v.push_back(uint32_t(t));
      sharer_v.push_back(s);
    }
  }
  for (auto* list : {&sharer_k, &sharer_v}) {
    std::sort(list->begin(), list->end());
    list->erase(std::unique(list->begin(), list->end()), list->end());
  }
  plan.sharer.k = std::move(sharer_k);
  plan.sharer.v = std::move(sharer_v);
  return plan;
}

// One input stream: its decoder while it arrives, then the cache it built.
struct FuseSession::Input {
  std::optional<KvWireHeader> header;
  std::unique_ptr<KvWireDecoder> decoder;
  const KvCache* cells = nullptr;  // the cache being filled (owned by `decoder`, then by `finished`)
  std::unique_ptr<KvCache> finished;
};

FuseSession::FuseSession(Fuser& fuser, FuseSessionOptions opt)
    : fuser_(fuser),
      opt_(std::move(opt)),
      plan_(fuse_plan(fuser)),
      sharer_(std::make_unique<Input>()),
      receiver_(std::make_unique<Input>()),
      fused_(size_t(fuser.config().receiver.n_layer) * 2, 0) {}

FuseSession::~FuseSession() = default;

Status FuseSession::fail(Status s) {
  if (error_.ok()) error_ = std::move(s);
  return error_;
}

Status FuseSession::check_header(Side side, const KvWireHeader& h) const {
  const FuserConfig& cfg = fuser_.config();
  const ModelSide& want = side == Side::kSharer ? cfg.sharer : cfg.receiver;
  const char* who = side_name(side);
  if (want.fingerprint != 0 && h.model.fingerprint != want.fingerprint) {
    return failed_precondition(fmt::format(
        "fuse: the {} stream comes from model {:016x}, this fuser ({} -> {}) was built for {} = {:016x}", who,
        h.model.fingerprint, cfg.sharer.name, cfg.receiver.name, who, want.fingerprint));
  }
  const std::pair<const char*, std::pair<uint32_t, uint32_t>> shape[] = {
      {"n_layer", {h.model.n_layer, uint32_t(want.n_layer)}},
      {"n_head_kv", {h.model.n_head_kv, uint32_t(want.n_head_kv)}},
      {"head_dim", {h.model.head_dim, uint32_t(want.head_dim)}},
  };
  for (const auto& [field, v] : shape) {
    if (v.first != v.second) {
      return failed_precondition(fmt::format("fuse: the {} stream's model has {} {}, this fuser expects {}", who,
                                             field, v.first, v.second));
    }
  }
  const KvLayerSet& slices = side == Side::kSharer ? plan_.sharer : plan_.receiver;
  if (!h.layers || *h.layers != slices) {
    return failed_precondition(fmt::format(
        "fuse: the {} stream must carry exactly the slices of FuserInfo.{}_layers ({} K, {} V layers)", who, who,
        slices.k.size(), slices.v.size()));
  }
  return Status::Ok();
}

Status FuseSession::add_header(Side side, const KvWireHeader& header) {
  KVB_RETURN_IF_ERROR(error_);
  Input& in = input(side);
  if (in.header) return fail(invalid_argument(fmt::format("fuse: a second {} header", side_name(side))));
  if (Status s = check_header(side, header); !s.ok()) return fail(std::move(s));
  const Input& other = input(side == Side::kSharer ? Side::kReceiver : Side::kSharer);
  if (other.header && (other.header->tokens.size() != header.tokens.size() || other.header->pos0 != header.pos0)) {
    return fail(invalid_argument(fmt::format(
        "fuse: the streams cover different positions: {} tokens at {} and {} tokens at {}",
        other.header->tokens.size(), other.header->pos0, header.tokens.size(), header.pos0)));
  }
  // The identity check against the fuser's pair was made above; the decoder checks the rest
  // (layout, sizes, ids within the stream's own vocabulary) against the stream's own identity.
  auto d = KvWireDecoder::create(header, header.model, cpu_device().buffer_type(), 0, opt_.limits);
  if (!d.ok()) return fail(d.status().with_context(fmt::format("fuse: {} stream", side_name(side))));
  in.decoder = std::move(d).value();
  in.cells = &in.decoder->cache();
  in.header = header;
  if (sharer_->header && receiver_->header) {
    stats_.n_tokens = uint32_t(header.tokens.size());
    if (Status s = start_output(); !s.ok()) return fail(std::move(s));
    if (Status s = fuse_ready(); !s.ok()) return fail(std::move(s));
  }
  return Status::Ok();
}

Status FuseSession::start_output() {
  auto e = KvWireEncoder::create(*receiver_->cells, receiver_->header->model, opt_.dtype, opt_.compression,
                                 /*chunk_tokens=*/0, plan_.receiver);
  if (!e.ok()) return e.status().with_context("fuse: output stream");
  out_ = std::move(e).value();
  return Status::Ok();
}

Status FuseSession::add_chunk(Side side, const KvWireChunkView& chunk) {
  KVB_RETURN_IF_ERROR(error_);
  Input& in = input(side);
  if (!in.decoder || in.finished) {
    return fail(invalid_argument(fmt::format("fuse: {} data {} its header", side_name(side),
                                             in.finished ? "after the trailer of" : "before")));
  }
  if (Status s = in.decoder->add(chunk); !s.ok()) {
    return fail(s.with_context(fmt::format("fuse: {} stream", side_name(side))));
  }
  stats_.bytes_received += chunk.payload_size();
  if (Status s = fuse_ready(); !s.ok()) return fail(std::move(s));
  return Status::Ok();
}

Status FuseSession::add_trailer(Side side, const KvWireTrailer& trailer) {
  KVB_RETURN_IF_ERROR(error_);
  Input& in = input(side);
  if (!in.decoder || in.finished) {
    return fail(invalid_argument(fmt::format("fuse: {} trailer {}", side_name(side),
                                             in.finished ? "twice" : "before its header")));
  }
  auto c = in.decoder->finish(trailer);
  if (!c.ok()) return fail(c.status().with_context(fmt::format("fuse: {} stream", side_name(side))));
  in.finished = std::move(c).value();  // the same cache `cells` points to, now owned here
  in.decoder.reset();
  return Status::Ok();
}

Status FuseSession::fuse_ready() {
  if (!out_) return Status::Ok();  // both headers first
  const KvWireDecoder* s = sharer_->decoder.get();
  const KvWireDecoder* r = receiver_->decoder.get();
  for (const bool is_v : {false, true}) {
    for (const uint32_t t : is_v ? plan_.receiver.v : plan_.receiver.k) {
      uint8_t& done = fused_[size_t(t) * 2 + (is_v ? 1 : 0)];
      if (done) continue;
      const uint32_t src = uint32_t(fuser_.sharer_layer(int32_t(t)));
      // A finished input has every slice; an unfinished one says per slice.
      const bool have_r = r == nullptr || r->complete(t, is_v);
      const bool have_s = s == nullptr || s->complete(src, is_v);
      if (!have_r || !have_s) continue;
      const auto t0 = std::chrono::steady_clock::now();
      KVB_RETURN_IF_ERROR(fuser_.fuse(int32_t(t), is_v, sharer_->cells->used_rows(int32_t(src), is_v),
                                      receiver_->cells->used_rows(int32_t(t), is_v)));
      stats_.fuse_ms += std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      ++stats_.slices_fused;
      done = 1;
    }
  }
  return Status::Ok();
}

std::optional<KvWireHeader> FuseSession::take_header() {
  if (!error_.ok() || !out_ || header_taken_) return std::nullopt;
  header_taken_ = true;
  return out_->header();
}

bool FuseSession::next_chunk(KvWireChunk& out) {
  if (!error_.ok() || !out_ || !header_taken_) return false;
  uint32_t layer = 0;
  bool is_v = false;
  if (!out_->peek(layer, is_v) || !fused_[size_t(layer) * 2 + (is_v ? 1 : 0)]) return false;
  return out_->next(out);
}

std::optional<KvWireTrailer> FuseSession::take_trailer() {
  if (!error_.ok() || !out_ || !header_taken_ || trailer_taken_) return std::nullopt;
  if (!sharer_->finished || !receiver_->finished) return std::nullopt;
  uint32_t layer = 0;
  bool is_v = false;
  if (out_->peek(layer, is_v)) return std::nullopt;  // chunks left to take
  trailer_taken_ = true;
  return out_->trailer();
}

}  // namespace kvb::fuser
