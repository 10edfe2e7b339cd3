// GGUF model loader, in named steps: arch → hparams → vocab → tensors.
#include <fmt/format.h>

#include "engine/model_loaders.h"
#include "engine/vocab_loaders.h"

namespace kvb {

namespace {

class GgufModelLoader {
 public:
  GgufModelLoader(const GgufFile& f, Model& m) : f_(f), m_(m) {}

  Status load_arch() {
    KVB_ASSIGN_OR_RETURN(auto arch, f_.get_string("general.architecture"));
    if (!arch) return error("missing metadata 'general.architecture'");
    const std::optional<Arch> a = arch_from_name(*arch);
    if (!a) return error(fmt::format("architecture '{}' is not supported (supported: llama, qwen2, qwen3)", *arch));
    arch_ = *arch;
    m_.config.arch = *a;
    return Status::Ok();
  }

  Status load_hparams() {
    ModelConfig& c = m_.config;
    KVB_ASSIGN_OR_RETURN(c.n_layer, required_int("block_count"));
    KVB_ASSIGN_OR_RETURN(c.n_embd, required_int("embedding_length"));
    KVB_ASSIGN_OR_RETURN(c.n_ff, required_int("feed_forward_length"));
    KVB_ASSIGN_OR_RETURN(c.n_head, required_int("attention.head_count"));
    KVB_ASSIGN_OR_RETURN(c.n_ctx_train, required_int("context_length"));
    KVB_ASSIGN_OR_RETURN(auto n_head_kv, f_.get_int(key("attention.head_count_kv")));
    c.n_head_kv = int32_t(n_head_kv.value_or(c.n_head));
    KVB_ASSIGN_OR_RETURN(auto key_length, f_.get_int(key("attention.key_length")));
    if (!key_length && c.n_embd % c.n_head != 0) {
      return error(fmt::format("embedding_length {} is not divisible by head_count {}", c.n_embd, c.n_head));
    }
    KVB_ASSIGN_OR_RETURN(auto value_length, f_.get_int(key("attention.value_length")));
    if (key_length && value_length && *value_length != *key_length) {
      return error(fmt::format("attention.key_length {} != value_length {} is not supported", *key_length,
                               *value_length));
    }
    c.head_dim = int32_t(key_length.value_or(c.n_embd / c.n_head));
    KVB_ASSIGN_OR_RETURN(auto eps, f_.get_float(key("attention.layer_norm_rms_epsilon")));
    c.norm_eps = float(eps.value_or(1e-5));
    KVB_ASSIGN_OR_RETURN(auto theta, f_.get_float(key("rope.freq_base")));
    c.rope.theta_base = float(theta.value_or(10000.0));
    KVB_ASSIGN_OR_RETURN(auto n_rot, f_.get_int(key("rope.dimension_count")));
    c.rope.n_rot = int32_t(n_rot.value_or(c.head_dim));
    // llama.cpp's converter permutes llama Q/K rows for adjacent-pair rotation (LLAMA_ROPE_TYPE_NORM);
    // Qwen files keep Hugging Face's row order and rotate halves (LLAMA_ROPE_TYPE_NEOX).
    c.rope.type = c.arch == Arch::kLlama ? RopeType::kNormal : RopeType::kNeox;
    KVB_ASSIGN_OR_RETURN(auto scale, f_.get_float(key("rope.scaling.factor")));
    KVB_ASSIGN_OR_RETURN(auto scale_type, f_.get_string(key("rope.scaling.type")));
    if (scale && scale_type && *scale_type == "linear" && *scale > 0) c.rope.freq_scale = float(1.0 / *scale);
    return Status::Ok();
  }

  Status load_vocab(const LoadOptions& opt) {
    if (!opt.tokenizer_path.empty()) {
      KVB_ASSIGN_OR_RETURN(Vocab v, read_llama2c_vocab(opt.tokenizer_path, -1));
      KVB_ASSIGN_OR_RETURN(m_.tokenizer, Tokenizer::create(std::move(v)));
      return Status::Ok();
    }
    if (!f_.find("tokenizer.ggml.tokens")) return Status::Ok();  // weights-only file
    // A tokenizer type kvbridge cannot run yet (UNIMPLEMENTED) leaves the model usable with ids.
    KVB_RETURN_IF_ERROR(attach_tokenizer(m_, read_gguf_vocab(f_)));
    // llama.cpp also ends generation at the end-of-turn / end-of-message tokens.
    const int64_t n_tokens = int64_t(f_.find("tokenizer.ggml.tokens")->array_size());
    for (const char* k :
         {"tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"}) {
      KVB_ASSIGN_OR_RETURN(auto id, f_.get_int(k));
      if (id && *id >= 0 && *id < n_tokens) m_.eos_ids.push_back(int32_t(*id));
    }
    return Status::Ok();
  }

  Status load_tensors() {
    ModelConfig& c = m_.config;
    ModelWeights& w = m_.weights;
    KVB_ASSIGN_OR_RETURN(w.tok_embd, matrix("token_embd.weight", -1, c.n_embd));
    c.n_vocab = int32_t(w.tok_embd.shape[0]);
    KVB_ASSIGN_OR_RETURN(w.output_norm, vector("output_norm.weight", c.n_embd));
    if (f_.find_tensor("rope_freqs.weight")) {
      // Llama 3.x scaling as llama.cpp's converter writes it: one divisor per rotated pair.
      KVB_ASSIGN_OR_RETURN(Tensor t, vector("rope_freqs.weight", c.rope.n_rot / 2));
      c.rope_freq_factors.assign(t.as<const float>(), t.as<const float>() + t.numel());
    }
    if (f_.find_tensor("output.weight")) {
      KVB_ASSIGN_OR_RETURN(w.output, matrix("output.weight", c.n_vocab, c.n_embd));
      c.tied_output = false;
    } else {
      w.output = w.tok_embd;
      c.tied_output = true;
    }
    static constexpr LayerTensorNames kNames = {
        "blk.{}.attn_norm.weight",   "blk.{}.attn_q.weight",      "blk.{}.attn_k.weight",
        "blk.{}.attn_v.weight",      "blk.{}.attn_q.bias",        "blk.{}.attn_k.bias",
        "blk.{}.attn_v.bias",        "blk.{}.attn_q_norm.weight", "blk.{}.attn_k_norm.weight",
        "blk.{}.attn_output.weight", "blk.{}.ffn_norm.weight",    "blk.{}.ffn_gate.weight",
        "blk.{}.ffn_up.weight",      "blk.{}.ffn_down.weight"};
    KVB_RETURN_IF_ERROR(load_layer_tensors(
        c, kNames, [this](const std::string& n, int64_t r, int64_t k) { return matrix(n, r, k); },
        [this](const std::string& n, int64_t len) { return vector(n, len); }, w));
    if (m_.tokenizer && m_.tokenizer->n_vocab() != c.n_vocab) {
      return error(fmt::format("tokenizer has {} tokens but token_embd.weight has {} rows",
                               m_.tokenizer->n_vocab(), c.n_vocab));
    }
    return Status::Ok();
  }

 private:
  std::string key(std::string_view k) const { return fmt::format("{}.{}", arch_, k); }

  Status error(const std::string& what) const { return invalid_argument(fmt::format("{}: {}", f_.path(), what)); }

  Result<int32_t> required_int(std::string_view k) {
    KVB_ASSIGN_OR_RETURN(auto v, f_.get_int(key(k)));
    if (!v) return error(fmt::format("missing metadata '{}'", key(k)));
    if (*v <= 0 || *v > (int64_t(1) << 30)) return error(fmt::format("metadata '{}' = {} is out of range", key(k), *v));
    return int32_t(*v);
  }

  // A matrix [rows][cols]; rows = -1 accepts any row count.
  Result<Tensor> matrix(const std::string& name, int64_t rows, int64_t cols) {
    const GgufTensor* t = f_.find_tensor(name);
    if (!t) return error(fmt::format("missing tensor '{}'", name));
    if (t->ne.size() != 2 || t->ne[0] != cols || (rows >= 0 && t->ne[1] != rows)) {
      return error(fmt::format("tensor '{}' has shape [{}], expected [{}][{}] (GGUF ne = {{{}, {}}})", name,
                               fmt::join(t->ne, ", "), rows, cols, cols, rows));
    }
    return Tensor::make(t->dtype, const_cast<void*>(t->data), {t->ne[1], t->ne[0]});
  }

  // A vector [n] (norm, bias, rope factors), converted to f32 if stored otherwise.
  Result<Tensor> vector(const std::string& name, int64_t n) {
    const GgufTensor* t = f_.find_tensor(name);
    if (!t) return error(fmt::format("missing tensor '{}'", name));
    if (t->numel() != n) return error(fmt::format("tensor '{}' has {} elements, expected {}", name, t->numel(), n));
    if (t->dtype == DType::kF32) return Tensor::make(DType::kF32, const_cast<void*>(t->data), {n});
    auto& buf = m_.storage->owned.emplace_back(size_t(n));
    to_f32(t->dtype, t->data, buf.data(), n);
    return Tensor::make(DType::kF32, buf.data(), {n});
  }

  const GgufFile& f_;
  Model& m_;
  std::string arch_;
};

}  // namespace

Result<std::unique_ptr<Model>> load_gguf_model(const std::string& path, const LoadOptions& opt) {
  auto m = std::make_unique<Model>();
  m->format = ModelFormat::kGguf;
  m->path = path;
  m->storage = std::make_shared<Model::Storage>();
  KVB_ASSIGN_OR_RETURN(m->storage->gguf, GgufFile::open(path));
  GgufModelLoader loader(*m->storage->gguf, *m);
  KVB_RETURN_IF_ERROR(loader.load_arch());
  KVB_RETURN_IF_ERROR(loader.load_hparams());
  KVB_RETURN_IF_ERROR(loader.load_vocab(opt));
  KVB_RETURN_IF_ERROR(loader.load_tensors());
  KVB_RETURN_IF_ERROR(m->config.validate().with_context(path));
  return m;
}

}  // namespace kvb
