#include "fuse_fixture.h"

#include <algorithm>
#include <cstring>
#include <filesystem>

#include "fuser/synth_fuser.h"
#include "kernels/registry.h"
#include "support/test_support.h"

namespace kvb::fuser::fixture {

namespace {

constexpr const char* kSharerModel = "stories260K/stories260K.gguf";
constexpr const char* kReceiverModel = "aidreams260K/aidreams260K.bin";
constexpr const char* kReceiverTokenizer = "aidreams260K/tok512.bin";
constexpr const char* kText =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
    "big red ball. One day, she saw a small dog sitting under a tree.";

std::unique_ptr<KvCache> prefill(ModelRunner& runner, std::vector<int32_t> tokens) {
  std::unique_ptr<KvCache> cache = must(runner.new_cache(256));
  std::vector<float> logits(size_t(runner.model().config.n_vocab));
  must_ok(runner.forward(*cache, tokens, logits));
  return cache;
}

FusePair build() {
  FusePair p;
  p.sharer_model = must(load_model(test::model_path(kSharerModel)));
  p.receiver_model = must(load_model(test::model_path(kReceiverModel), LoadOptions{test::model_path(kReceiverTokenizer)}));
  p.backend = must(cpu_device().create_backend());
  p.sharer_runner = must(ModelRunner::create(*p.sharer_model, *p.backend));
  p.receiver_runner = must(ModelRunner::create(*p.receiver_model, *p.backend));
  p.sharer_id = model_identity(*p.sharer_model);
  p.receiver_id = model_identity(*p.receiver_model);

  std::vector<int32_t> s = p.sharer_model->tokenizer->encode(kText, EncodeOptions{true});
  std::vector<int32_t> r = p.receiver_model->tokenizer->encode(kText, EncodeOptions{true});
  p.n_tokens = int32_t(std::min(s.size(), r.size()));
  s.resize(size_t(p.n_tokens));
  r.resize(size_t(p.n_tokens));
  p.sharer_cache = prefill(*p.sharer_runner, s);
  p.receiver_cache = prefill(*p.receiver_runner, r);

  FuserConfig cfg;
  cfg.sharer = model_side("stories260K", p.sharer_id);
  cfg.receiver = model_side("aidreams260K", p.receiver_id);
  cfg.hidden_dim = 64;
  cfg.intermediate_dim = 64;
  cfg.num_layers = 3;
  p.fuser_dir = test::temp_dir() + "/fuser_stories_to_aidreams";
  must_ok(write_synthetic_fuser(p.fuser_dir, cfg, /*seed=*/7, GatePattern::kAlternate));
  p.fuser = must(Fuser::load(p.fuser_dir, *p.backend));
  p.plan = fuse_plan(*p.fuser);
  return p;
}

}  // namespace

bool have_models() {
  for (const char* rel : {kSharerModel, kReceiverModel, kReceiverTokenizer}) {
    if (!std::filesystem::exists(test::model_path(rel))) {
      WARN("skipped: " << test::model_path(rel) << " is missing");
      return false;
    }
  }
  return true;
}

FusePair& pair() {
  static FusePair p = build();
  return p;
}

WireStream encode(const KvCache& cache, const ModelIdentity& id, const std::optional<KvLayerSet>& layers,
                  uint32_t chunk_tokens) {
  auto e = must(KvWireEncoder::create(cache, id, WireDType::kF32, WireCompression::kNone, chunk_tokens, layers));
  WireStream w;
  w.header = e->header();
  KvWireChunk c;
  while (e->next(c)) w.chunks.push_back(c);
  w.trailer = e->trailer();
  return w;
}

WireStream sharer_stream(uint32_t chunk_tokens) {
  FusePair& p = pair();
  return encode(*p.sharer_cache, p.sharer_id, p.plan.sharer, chunk_tokens);
}

WireStream receiver_stream(uint32_t chunk_tokens) {
  FusePair& p = pair();
  return encode(*p.receiver_cache, p.receiver_id, p.plan.receiver, chunk_tokens);
}

std::unique_ptr<KvCache> receiver_copy() {
  FusePair& p = pair();
  std::unique_ptr<KvCache> c = must(p.receiver_runner->new_cache(p.receiver_cache->n_ctx()));
  must_ok(c->copy_from(*p.backend, *p.receiver_cache, p.receiver_cache->n_tokens()));
  return c;
}

std::unique_ptr<KvCache> reference_fused() {
  FusePair& p = pair();
  std::unique_ptr<KvCache> out = receiver_copy();
  for (const bool is_v : {false, true}) {
    for (const uint32_t t : is_v ? p.plan.receiver.v : p.plan.receiver.k) {
      const int32_t s = p.fuser->sharer_layer(int32_t(t));
      must_ok(p.fuser->fuse(int32_t(t), is_v, p.sharer_cache->used_rows(s, is_v), out->used_rows(int32_t(t), is_v)));
    }
  }
  return out;
}

std::unique_ptr<KvCache> apply_fused(const WireStream& fused) {
  std::unique_ptr<KvCache> out = receiver_copy();
  std::unique_ptr<KvWireDecoder> d = must(KvWireDecoder::create_into(fused.header, pair().receiver_id, *out));
  for (const KvWireChunk& c : fused.chunks) must_ok(d->add(c));
  must_ok(d->finish_into(fused.trailer));
  return out;
}

bool same_cells(const KvCache& a, const KvCache& b) {
  if (a.layout() != b.layout() || a.n_tokens() != b.n_tokens() || a.pos0() != b.pos0()) return false;
  if (!std::equal(a.tokens().begin(), a.tokens().end(), b.tokens().begin())) return false;
  for (int32_t l = 0; l < a.layout().n_layer; ++l) {
    for (const bool is_v : {false, true}) {
      const Tensor x = is_v ? a.v_used(l) : a.k_used(l);
      const Tensor y = is_v ? b.v_used(l) : b.k_used(l);
      if (std::memcmp(x.data, y.data, x.nbytes()) != 0) return false;
    }
  }
  return true;
}

}  // namespace kvb::fuser::fixture
