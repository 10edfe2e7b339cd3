#include "engine/model_identity.h"

#include <xxhash.h>

#include <bit>
#include <memory>
#include <string_view>

#include <fmt/format.h>

namespace kvb {

namespace {

// Streaming xxh3-64 (seed 0) over fixed-width little-endian encodings of fields.
class Hasher {
 public:
  Hasher() : state_(XXH3_createState()) {
    KVB_ASSERT(state_ != nullptr, "XXH3_createState failed");
    XXH3_64bits_reset(state_.get());
  }
  void bytes(const void* p, size_t n) {
    if (n > 0) XXH3_64bits_update(state_.get(), p, n);
  }
  void u32(uint32_t v) { bytes(&v, 4); }
  void i32(int32_t v) { u32(uint32_t(v)); }
  void u64(uint64_t v) { bytes(&v, 8); }
  void f32(float v) { u32(std::bit_cast<uint32_t>(v)); }
  void str(std::string_view s) {
    u64(s.size());  // length-prefixed: ("ab","c") and ("a","bc") hash differently
    bytes(s.data(), s.size());
  }
  uint64_t digest() const { return XXH3_64bits_digest(state_.get()); }

 private:
  struct Free {
    void operator()(XXH3_state_t* s) const { XXH3_freeState(s); }
  };
  std::unique_ptr<XXH3_state_t, Free> state_;
};

uint64_t hash_tokenizer(const Tokenizer* tok) {
  if (tok == nullptr) return 0;
  const Vocab& v = tok->vocab();
  Hasher h;
  h.str("kvbridge.tokenizer.v1");
  h.u32(uint32_t(v.model));
  h.u64(v.pieces.size());
  for (const std::string& p : v.pieces) h.str(p);
  h.u64(v.scores.size());
  for (float s : v.scores) h.f32(s);
  h.u64(v.types.size());
  for (TokenType t : v.types) h.i32(int32_t(t));
  h.u64(v.merges.size());
  for (const std::string& m : v.merges) h.str(m);
  for (int32_t id : {v.bos, v.eos, v.unk, v.pad}) h.i32(id);
  for (bool f : {v.add_bos, v.add_eos, v.add_space_prefix}) h.u32(f ? 1 : 0);
  // Vocab::spm_flavor is left out on purpose: it changes only how odd text is split, never what a
  // token id means, so a cache of ids stays valid across flavors.
  return h.digest();
}

void hash_tensor(Hasher& h, std::string_view slot, const Tensor& t) {
  h.str(slot);
  h.str(dtype_name(t.dtype));
  h.u32(uint32_t(t.n_dims));
  for (int i = 0; i < t.n_dims; ++i) h.u64(uint64_t(t.shape[size_t(i)]));
  const size_t n = t.data != nullptr ? t.nbytes() : 0;
  h.u64(n);
  h.bytes(t.data, n);
}

uint64_t hash_weights(const Model& m) {
  Hasher h;
  h.str("kvbridge.weights.v1");
  const ModelWeights& w = m.weights;
  hash_tensor(h, "token_embd", w.tok_embd);
  for (size_t l = 0; l < w.layers.size(); ++l) {
    const LlamaLayerWeights& lw = w.layers[l];
    const std::pair<const char*, const Tensor*> slots[] = {
        {"attn_norm", &lw.attn_norm}, {"attn_q", &lw.wq},         {"attn_k", &lw.wk},
        {"attn_v", &lw.wv},           {"attn_output", &lw.wo},    {"ffn_norm", &lw.ffn_norm},
        {"ffn_gate", &lw.w_gate},     {"ffn_up", &lw.w_up},       {"ffn_down", &lw.w_down},
    };
    for (const auto& [name, t] : slots) hash_tensor(h, fmt::format("blk.{}.{}", l, name), *t);
    // Per-architecture tensors, only where the arch has them (llama hashes stay as they were).
    const std::pair<const char*, const Tensor*> extra[] = {
        {"attn_q.bias", &lw.bias.q},       {"attn_k.bias", &lw.bias.k},       {"attn_v.bias", &lw.bias.v},
        {"attn_q_norm", &lw.qk_norm.q},    {"attn_k_norm", &lw.qk_norm.k},
    };
    for (const auto& [name, t] : extra) {
      if (t->data != nullptr) hash_tensor(h, fmt::format("blk.{}.{}", l, name), *t);
    }
  }
  hash_tensor(h, "output_norm", w.output_norm);
  if (!m.config.tied_output) hash_tensor(h, "output", w.output);
  if (!m.config.rope_freq_factors.empty()) {  // Llama 3 scaling, as GGUF's rope_freqs.weight
    const std::vector<float>& f = m.config.rope_freq_factors;
    hash_tensor(h, "rope_freqs", Tensor::make(DType::kF32, const_cast<float*>(f.data()), {int64_t(f.size())}));
  }
  return h.digest();
}

std::string_view rope_type_name(RopeType t) { return t == RopeType::kNeox ? "neox" : "normal"; }

// One comparable, printable field of ModelIdentity. Floats print as their shortest round-trip
// form, so equal strings mean equal values (bit patterns, save NaN payloads).
struct IdentityField {
  std::string_view name;
  std::string (*repr)(const ModelIdentity&);
};

const IdentityField kIdentityFields[] = {
    {"arch", [](const ModelIdentity& m) { return m.arch; }},
    {"n_layer", [](const ModelIdentity& m) { return fmt::format("{}", m.n_layer); }},
    {"n_embd", [](const ModelIdentity& m) { return fmt::format("{}", m.n_embd); }},
    {"n_head", [](const ModelIdentity& m) { return fmt::format("{}", m.n_head); }},
    {"n_head_kv", [](const ModelIdentity& m) { return fmt::format("{}", m.n_head_kv); }},
    {"head_dim", [](const ModelIdentity& m) { return fmt::format("{}", m.head_dim); }},
    {"n_ff", [](const ModelIdentity& m) { return fmt::format("{}", m.n_ff); }},
    {"n_vocab", [](const ModelIdentity& m) { return fmt::format("{}", m.n_vocab); }},
    {"rope_type", [](const ModelIdentity& m) { return m.rope_type; }},
    {"rope_n_rot", [](const ModelIdentity& m) { return fmt::format("{}", m.rope_n_rot); }},
    {"rope_theta", [](const ModelIdentity& m) { return fmt::format("{}", m.rope_theta); }},
    {"rope_freq_scale", [](const ModelIdentity& m) { return fmt::format("{}", m.rope_freq_scale); }},
    {"norm_eps", [](const ModelIdentity& m) { return fmt::format("{}", m.norm_eps); }},
    {"tokenizer_hash", [](const ModelIdentity& m) { return fmt::format("{:016x}", m.tokenizer_hash); }},
    {"weights_hash", [](const ModelIdentity& m) { return fmt::format("{:016x}", m.weights_hash); }},
    {"fingerprint", [](const ModelIdentity& m) { return fmt::format("{:016x}", m.fingerprint); }},
};

}  // namespace

ModelIdentity model_identity(const Model& m) {
  const ModelConfig& c = m.config;
  ModelIdentity id;
  id.arch = std::string(arch_name(c.arch));
  id.n_layer = uint32_t(c.n_layer);
  id.n_embd = uint32_t(c.n_embd);
  id.n_head = uint32_t(c.n_head);
  id.n_head_kv = uint32_t(c.n_head_kv);
  id.head_dim = uint32_t(c.head_dim);
  id.n_ff = uint32_t(c.n_ff);
  id.n_vocab = uint32_t(c.n_vocab);
  id.rope_type = std::string(rope_type_name(c.rope.type));
  id.rope_n_rot = uint32_t(c.rope.n_rot);
  id.rope_theta = c.rope.theta_base;
  id.rope_freq_scale = c.rope.freq_scale;
  id.norm_eps = c.norm_eps;
  id.tokenizer_hash = hash_tokenizer(m.tokenizer.get());
  id.weights_hash = hash_weights(m);
  id.fingerprint = identity_fingerprint(id);
  return id;
}

uint64_t identity_fingerprint(const ModelIdentity& id) {
  Hasher h;
  h.str("kvbridge.identity.v1");
  h.str(id.arch);
  for (uint32_t v : {id.n_layer, id.n_embd, id.n_head, id.n_head_kv, id.head_dim, id.n_ff, id.n_vocab}) h.u32(v);
  h.str(id.rope_type);
  h.u32(id.rope_n_rot);
  h.f32(id.rope_theta);
  h.f32(id.rope_freq_scale);
  h.f32(id.norm_eps);
  h.u64(id.tokenizer_hash);
  h.u64(id.weights_hash);
  return h.digest();
}

std::optional<IdentityDifference> find_difference(const ModelIdentity& expected, const ModelIdentity& got) {
  for (const IdentityField& f : kIdentityFields) {
    std::string e = f.repr(expected), g = f.repr(got);
    if (e != g) return IdentityDifference{std::string(f.name), std::move(e), std::move(g)};
  }
  return std::nullopt;
}

std::string first_difference(const ModelIdentity& expected, const ModelIdentity& got) {
  const auto diff = find_difference(expected, got);
  return diff ? diff->field : std::string();
}

}  // namespace kvb
