#include "engine/model.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "engine/model_loaders.h"

namespace kvb {

std::string_view arch_name(Arch a) {
  switch (a) {
    case Arch::kLlama: return "llama";
    case Arch::kQwen2: return "qwen2";
    case Arch::kQwen3: return "qwen3";
  }
  return "?";
}

std::optional<Arch> arch_from_name(std::string_view name) {
  for (Arch a : {Arch::kLlama, Arch::kQwen2, Arch::kQwen3}) {
    if (arch_name(a) == name) return a;
  }
  return std::nullopt;
}

Result<std::vector<float>> llama3_rope_freq_factors(int n_rot, float theta_base, const Llama3RopeScaling& s) {
  if (!(s.factor > 0.0f) || !(s.high_freq_factor > s.low_freq_factor) || !(s.low_freq_factor > 0.0f) ||
      s.original_max_position <= 0 || n_rot <= 0 || n_rot % 2 != 0 || !(theta_base > 0.0f)) {
    return invalid_argument(fmt::format(
        "llama3 rope scaling: bad parameters (factor {}, low_freq_factor {}, high_freq_factor {}, "
        "original_max_position_embeddings {}, n_rot {})",
        s.factor, s.low_freq_factor, s.high_freq_factor, s.original_max_position, n_rot));
  }
  constexpr double kPi = 3.14159265358979323846;
  const double original = s.original_max_position;
  const double low_wavelen = original / s.low_freq_factor, high_wavelen = original / s.high_freq_factor;
  std::vector<float> factors(size_t(n_rot / 2));
  for (int i = 0; i < n_rot / 2; ++i) {
    const double wavelen = 2.0 * kPi / std::pow(double(theta_base), -2.0 * i / double(n_rot));
    double f = 1.0;
    if (wavelen > low_wavelen) {
      f = s.factor;
    } else if (wavelen >= high_wavelen) {
      const double smooth = (original / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
      f = 1.0 / ((1.0 - smooth) / s.factor + smooth);
    }
    factors[size_t(i)] = float(f);
  }
  return factors;
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
  if (!rope_freq_factors.empty()) {
    if (rope_freq_factors.size() != size_t(rope.n_rot / 2)) {
      return bad("rope_freq_factors size (want n_rot / 2)", int64_t(rope_freq_factors.size()));
    }
    for (float f : rope_freq_factors) {
      if (!(f > 0.0f) || !std::isfinite(f)) {
        return invalid_argument(fmt::format("invalid model config: rope frequency factor {}", f));
      }
    }
  }
  return Status::Ok();
}

size_t Model::weight_bytes() const {
  size_t n = weights.tok_embd.nbytes() + weights.output_norm.nbytes();
  if (!config.tied_output) n += weights.output.nbytes();
  for (const LlamaLayerWeights& l : weights.layers) {
    for (const Tensor* t : {&l.attn_norm, &l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_norm, &l.w_gate, &l.w_up, &l.w_down,
                            &l.bias.q, &l.bias.k, &l.bias.v, &l.qk_norm.q, &l.qk_norm.k}) {
      if (t->data != nullptr) n += t->nbytes();
    }
  }
  return n;
}

Status attach_tokenizer(Model& m, Result<Vocab> vocab) {
  const auto unusable = [](const Status& s) {
    return s.code() == StatusCode::kUnimplemented || s.code() == StatusCode::kNotFound;
  };
  if (!vocab.ok()) {
    if (!unusable(vocab.status())) return vocab.status();
    m.tokenizer_note = vocab.status().message();
    return Status::Ok();
  }
  auto tok = Tokenizer::create(std::move(vocab).value());
  if (!tok.ok()) {
    if (!unusable(tok.status())) return tok.status();
    m.tokenizer_note = tok.status().message();
    return Status::Ok();
  }
  m.tokenizer = std::move(tok).value();
  m.tokenizer_note.clear();
  return Status::Ok();
}

Status load_layer_tensors(const ModelConfig& c, const LayerTensorNames& names, const MatrixLoader& matrix,
                          const VectorLoader& vector, ModelWeights& w) {
  const int64_t q = c.n_embd_q(), kv = c.n_embd_kv();
  w.layers.resize(size_t(c.n_layer));
  for (int32_t i = 0; i < c.n_layer; ++i) {
    LlamaLayerWeights& l = w.layers[size_t(i)];
    const auto name = [i](const char* pattern) { return fmt::format(fmt::runtime(pattern), i); };
    KVB_ASSIGN_OR_RETURN(l.attn_norm, vector(name(names.attn_norm), c.n_embd));
    KVB_ASSIGN_OR_RETURN(l.wq, matrix(name(names.wq), q, c.n_embd));
    KVB_ASSIGN_OR_RETURN(l.wk, matrix(name(names.wk), kv, c.n_embd));
    KVB_ASSIGN_OR_RETURN(l.wv, matrix(name(names.wv), kv, c.n_embd));
    if (c.has_qkv_bias()) {
      KVB_ASSIGN_OR_RETURN(l.bias.q, vector(name(names.bq), q));
      KVB_ASSIGN_OR_RETURN(l.bias.k, vector(name(names.bk), kv));
      KVB_ASSIGN_OR_RETURN(l.bias.v, vector(name(names.bv), kv));
    }
    if (c.has_qk_norm()) {
      KVB_ASSIGN_OR_RETURN(l.qk_norm.q, vector(name(names.q_norm), c.head_dim));
      KVB_ASSIGN_OR_RETURN(l.qk_norm.k, vector(name(names.k_norm), c.head_dim));
    }
    KVB_ASSIGN_OR_RETURN(l.wo, matrix(name(names.wo), c.n_embd, q));
    KVB_ASSIGN_OR_RETURN(l.ffn_norm, vector(name(names.ffn_norm), c.n_embd));
    KVB_ASSIGN_OR_RETURN(l.w_gate, matrix(name(names.w_gate), c.n_ff, c.n_embd));
    KVB_ASSIGN_OR_RETURN(l.w_up, matrix(name(names.w_up), c.n_ff, c.n_embd));
    KVB_ASSIGN_OR_RETURN(l.w_down, matrix(name(names.w_down), c.n_embd, c.n_ff));
  }
  return Status::Ok();
}

bool Model::is_eos(int32_t id) const {
  if (id < 0) return false;
  if (tokenizer && tokenizer->eos() == id) return true;
  return std::find(eos_ids.begin(), eos_ids.end(), id) != eos_ids.end();
}

Result<std::unique_ptr<Model>> load_model(const std::string& path, const LoadOptions& opt) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(path, ec)) return load_hf_model(path, opt);
  if (fs::path(path).filename() == "config.json") {
    return load_hf_model(fs::path(path).parent_path().empty() ? "." : fs::path(path).parent_path().string(), opt);
  }
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
  return fmt::format("{}: {} layers, n_embd {}, {} heads ({} kv) x {}, n_ff {}, vocab {}, ctx {}, weights {}{}{}{}{}",
                     arch_name(c.arch), c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.head_dim, c.n_ff, c.n_vocab,
                     c.n_ctx_train, dtype_name(m.weights.layers.empty() ? DType::kF32 : m.weights.layers[0].wq.dtype),
                     c.tied_output ? ", tied output" : "", c.has_qkv_bias() ? ", qkv bias" : "",
                     c.has_qk_norm() ? ", qk norm" : "", c.rope_freq_factors.empty() ? "" : ", rope llama3");
}

}  // namespace kvb
