// llama2.c ("legacy", version 0) checkpoint loader.
//
// Layout (little-endian): 7 int32 {dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size,
// seq_len}, then float32 arrays token_embedding[vocab][dim], rms_att[L][dim], wq[L][dim][dim],
// wk[L][kv_dim][dim], wv[L][kv_dim][dim], wo[L][dim][dim], rms_ffn[L][dim], w1[L][hidden][dim],
// w2[L][dim][hidden], w3[L][hidden][dim], rms_final[dim], freq_cis_real[seq_len][head_dim/2],
// freq_cis_imag[seq_len][head_dim/2], and wcls[vocab][dim] when vocab_size < 0 (unshared
// classifier). Matrices are row-major [out][in], which is kvbridge's layout: no copy is made.
#include <fmt/format.h>

#include <filesystem>

#include "engine/model_loaders.h"
#include "engine/vocab_loaders.h"

namespace kvb {

namespace {

struct Llama2cHeader {
  int32_t dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
};

}  // namespace

Result<std::unique_ptr<Model>> load_llama2c_model(const std::string& path, const LoadOptions& opt) {
  auto m = std::make_unique<Model>();
  m->format = ModelFormat::kLlama2c;
  m->path = path;
  m->storage = std::make_shared<Model::Storage>();
  KVB_ASSIGN_OR_RETURN(m->storage->file, MappedFile::open(path));
  const MappedFile& file = m->storage->file;
  auto error = [&](const std::string& what) {
    return invalid_argument(fmt::format("{}: not a GGUF file, and not a llama2.c checkpoint: {}", path, what));
  };

  // ---- hparams ----
  Llama2cHeader h{};
  if (file.size() < sizeof(h)) return error("file is shorter than the 28-byte header");
  std::memcpy(&h, file.data(), sizeof(h));
  const bool shared_classifier = h.vocab_size > 0;
  const int64_t vocab = h.vocab_size < 0 ? -int64_t(h.vocab_size) : h.vocab_size;
  if (h.dim <= 0 || h.hidden_dim <= 0 || h.n_layers <= 0 || h.n_heads <= 0 || h.n_kv_heads <= 0 || vocab == 0 ||
      h.seq_len <= 0 || h.dim % h.n_heads != 0 || h.dim > (1 << 16) || h.hidden_dim > (1 << 18) ||
      h.n_layers > 1024 || vocab > (1 << 22) || h.seq_len > (1 << 24)) {
    return error(fmt::format("implausible header {{dim {}, hidden {}, layers {}, heads {}, kv heads {}, vocab {}, seq {}}}",
                             h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len));
  }
  ModelConfig& c = m->config;
  c.arch = Arch::kLlama;
  c.n_layer = h.n_layers;
  c.n_embd = h.dim;
  c.n_head = h.n_heads;
  c.n_head_kv = h.n_kv_heads;
  c.head_dim = h.dim / h.n_heads;
  c.n_ff = h.hidden_dim;
  c.n_vocab = int32_t(vocab);
  c.n_ctx_train = h.seq_len;
  c.norm_eps = 1e-5f;
  c.rope = RopeParams{RopeType::kNormal, c.head_dim, 10000.0f, 1.0f};
  c.tied_output = shared_classifier;
  KVB_RETURN_IF_ERROR(c.validate().with_context(path));

  // ---- sizes: the file must hold exactly the arrays the header implies ----
  const int64_t L = c.n_layer, d = c.n_embd, kv = c.n_embd_kv(), ff = c.n_ff;
  const int64_t n_floats = vocab * d + L * d + L * d * d + 2 * L * kv * d + L * d * d + L * d + 3 * L * ff * d + d +
                           int64_t(h.seq_len) * c.head_dim + (shared_classifier ? 0 : vocab * d);
  const uint64_t expected = sizeof(h) + uint64_t(n_floats) * 4;
  if (file.size() != expected) {
    return error(fmt::format("header implies {} bytes but the file has {}", expected, file.size()));
  }

  // ---- tensors: views into the mapping, in file order ----
  const float* p = reinterpret_cast<const float*>(file.data() + sizeof(h));
  auto take = [&p](std::initializer_list<int64_t> shape) {
    Tensor t = Tensor::make(DType::kF32, const_cast<float*>(p), shape);
    p += t.numel();
    return t;
  };
  ModelWeights& w = m->weights;
  w.layers.resize(size_t(L));
  w.tok_embd = take({vocab, d});
  for (auto& l : w.layers) l.attn_norm = take({d});
  for (auto& l : w.layers) l.wq = take({d, d});
  for (auto& l : w.layers) l.wk = take({kv, d});
  for (auto& l : w.layers) l.wv = take({kv, d});
  for (auto& l : w.layers) l.wo = take({d, d});
  for (auto& l : w.layers) l.ffn_norm = take({d});
  for (auto& l : w.layers) l.w_gate = take({ff, d});
  for (auto& l : w.layers) l.w_down = take({d, ff});
  for (auto& l : w.layers) l.w_up = take({ff, d});
  w.output_norm = take({d});
  p += int64_t(h.seq_len) * c.head_dim;  // freq_cis_real and _imag: RoPE is recomputed instead
  w.output = shared_classifier ? w.tok_embd : take({vocab, d});

  // ---- vocab: explicit path, else tokenizer.bin beside the model ----
  std::string tok_path = opt.tokenizer_path;
  if (tok_path.empty()) {
    const auto beside = std::filesystem::path(path).parent_path() / "tokenizer.bin";
    if (std::filesystem::exists(beside)) tok_path = beside.string();
  }
  if (!tok_path.empty()) {
    KVB_ASSIGN_OR_RETURN(Vocab v, read_llama2c_vocab(tok_path, c.n_vocab));
    KVB_ASSIGN_OR_RETURN(m->tokenizer, Tokenizer::create(std::move(v)));
  }
  return m;
}

}  // namespace kvb
