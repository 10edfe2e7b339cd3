#include "engine/model.h"

#include <fmt/format.h>

#include <fstream>

#include "engine/model_loaders.h"

namespace kvb {

std::string_view arch_name(Arch a) {
  switch (a) {
    case Arch::kLlama: return "llama";
  }
  return "?";
}

Status ModelConfig::validate() const {
  auto bad = [](std::string_view what, int64_t v) {
    return invalid_argument(fmt::format("invalid model config: {} = {}", what, v));
  };
  if (n_layer <= 0 || n_layer > 1024) return bad("n_layer", n_layer);
  if (n_embd <= 0 || n_embd > 1 << 16) return bad("n_embd", n_embd);
  if (n_head <= 0 || n_head > 1024) return bad("n_head", n_head);
  if (n_head_kv <= 0 || n_head_kv > n_head || n_head % n_head_kv != 0) return bad("n_head_kv", n_head_kv);
  if (head_dim <= 0 || head_dim > 1024 || head_dim % 2 != 0) return bad("head_dim", head_dim);
  if (n_ff <= 0 || n_ff > 1 << 18) return bad("n_ff", n_ff);
  if (n_vocab <= 0 || n_vocab > 1 << 22) return bad("n_vocab", n_vocab);
  if (n_ctx_train <= 0) return bad("n_ctx_train", n_ctx_train);
  if (rope.n_rot <= 0 || rope.n_rot > head_dim || rope.n_rot % 2 != 0) return bad("rope.n_rot", rope.n_rot);
  if (!(rope.theta_base > 0.0f)) return invalid_argument("invalid model config: rope theta must be > 0");
  if (!(norm_eps > 0.0f)) return invalid_argument("invalid model config: norm eps must be > 0");
  return Status::Ok();
}

size_t Model::weight_bytes() const {
  size_t n = weights.tok_embd.nbytes() + weights.output_norm.nbytes();
  if (!config.tied_output) n += weights.output.nbytes();
  for (const LlamaLayerWeights& l : weights.layers) {
    for (const Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down}) {
      n += t->nbytes();
    }
  }
  return n;
}

Result<std::unique_ptr<Model>> load_model(const std::string& path, const LoadOptions& opt) {
  char magic[4] = {};
  {
    std::ifstream f(path, std::ios::binary);
    if (!f) return not_found(fmt::format("{}: cannot open model file", path));
    f.read(magic, 4);
  }
  if (std::string_view(magic, 4) == "GGUF") return load_gguf_model(path, opt);
  return load_llama2c_model(path, opt);
}

std::string describe(const Model& m) {
  const ModelConfig& c = m.config;
  return fmt::format("{}: {} layers, n_embd {}, {} heads ({} kv) x {}, n_ff {}, vocab {}, ctx {}, weights {}{}",
                     arch_name(c.arch), c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_vocab,
                     c.n_ctx_train, dtype_name(m.weights.layers.empty() ? DType::kF32 : m.weights.layers[0].wq.dtype),
                     c.tied_output ? ", tied output" : "");
}

}  // namespace kvb
