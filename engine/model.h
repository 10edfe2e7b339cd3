// The model blueprint (ModelConfig), its weights as plain tensors, and loading from disk.
//
// A Model is immutable after load_model() returns and may be shared by any number of threads and
// runners. Weight tensors are host views into the Model's own storage (mmaps of the files, or
// buffers the loader converted); they stay valid for the Model's lifetime. Every format fills the
// same representation; the comments below name each tensor as GGUF / Hugging Face store it.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer.h"
#include "kernels/backend.h"
#include "kernels/status.h"
#include "kernels/tensor.h"

namespace kvb {

// Model families. All are pre-norm decoder-only transformers with RMSNorm, rotary positions,
// grouped-query attention and a SwiGLU FFN; they differ in these blocks only:
//   kLlama  Llama 1/2/3/3.x (and llama2.c): no biases. Llama 3.x adds "llama3" RoPE frequency
//           scaling (ModelConfig::rope_freq_factors).
//   kQwen2  Qwen2 / Qwen2.5: biases on the Q, K and V projections (LlamaLayerWeights::bias).
//   kQwen3  Qwen3 (dense): RMSNorm of each query and key head before RoPE (LlamaLayerWeights::qk_norm).
enum class Arch { kLlama, kQwen2, kQwen3 };
// "llama", "qwen2", "qwen3": GGUF general.architecture and Hugging Face model_type alike.
std::string_view arch_name(Arch a);
// The Arch of such a name; nullopt for an unknown one.
std::optional<Arch> arch_from_name(std::string_view name);

// Immutable hyper-parameters. Derived sizes are methods, never stored twice.
struct ModelConfig {
  Arch arch = Arch::kLlama;
  int32_t n_layer = 0;
  int32_t n_embd = 0;     // residual stream width
  int32_t n_head = 0;     // query heads
  int32_t n_head_kv = 0;  // key/value heads (GQA when < n_head)
  int32_t head_dim = 0;
  int32_t n_ff = 0;       // SwiGLU hidden width
  int32_t n_vocab = 0;
  int32_t n_ctx_train = 0;  // context length the model was trained for (the default cache size)
  float norm_eps = 1e-5f;    // of every RMSNorm (Qwen3's Q/K norms included)
  // n_rot, theta base, pairing. Pairing follows the weights: llama GGUFs store Q/K rows permuted
  // for adjacent pairs (kNormal, as llama.cpp's converter writes them); Hugging Face checkpoints
  // and every Qwen file rotate halves (kNeox). rope.freq_factors is never set here: the runner and
  // the reference pass point it at rope_freq_factors.
  RopeParams rope;
  // Per-frequency divisors of the rotation angles, [rope.n_rot / 2], or empty: Llama 3's "llama3"
  // scaling (llama3_rope_freq_factors below; GGUF: the rope_freqs.weight tensor).
  std::vector<float> rope_freq_factors;
  bool tied_output = false; // classifier shares the token embedding

  int32_t n_embd_q() const { return n_head * head_dim; }
  int32_t n_embd_kv() const { return n_head_kv * head_dim; }
  bool has_qkv_bias() const { return arch == Arch::kQwen2; }
  bool has_qk_norm() const { return arch == Arch::kQwen3; }
  // INVALID_ARGUMENT naming the first inconsistent field (zero sizes, n_head % n_head_kv, ...).
  Status validate() const;
};

// Llama 3's RoPE frequency scaling (config.json "rope_scaling": {"rope_type": "llama3", ...}).
struct Llama3RopeScaling {
  float factor = 0.0f;  // 0: none
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int32_t original_max_position = 8192;  // original_max_position_embeddings
};

// The per-frequency divisors [n_rot / 2] of Llama 3 scaling, as Hugging Face's
// _compute_llama3_parameters and llama.cpp's converter (rope_freqs) compute them: with wavelength
// w_i = 2π / (theta_base^(-2i/n_rot)), 1 where w_i < original / high_freq_factor, `factor` where
// w_i > original / low_freq_factor, and 1 / ((1 - s) / factor + s) in between, s = (original / w_i
// - low_freq_factor) / (high_freq_factor - low_freq_factor). Computed in double. INVALID_ARGUMENT
// for factor <= 0, high_freq_factor <= low_freq_factor or original <= 0.
Result<std::vector<float>> llama3_rope_freq_factors(int n_rot, float theta_base, const Llama3RopeScaling& s);

// Per-architecture extensions of a block (empty Tensors, data == nullptr, where the arch has none).
struct QkvBias {  // kQwen2: added to the projections' outputs, before RoPE; F32
  Tensor q;       // [n_head * head_dim]     attn_q.bias / self_attn.q_proj.bias
  Tensor k;       // [n_head_kv * head_dim]  attn_k.bias / self_attn.k_proj.bias
  Tensor v;       // [n_head_kv * head_dim]  attn_v.bias / self_attn.v_proj.bias
};
struct QkNorm {  // kQwen3: RMSNorm weights shared by every query (key) head, before RoPE; F32
  Tensor q;      // [head_dim]  attn_q_norm.weight / self_attn.q_norm.weight
  Tensor k;      // [head_dim]  attn_k_norm.weight / self_attn.k_norm.weight
};

// Weights of one block (all families: the llama block plus the extensions its arch has).
// Matrices are [n_out][n_in] (row i = weights of output i), any of F32/F16/BF16/Q8_0; norm and
// bias vectors are always F32. wq/wk rows are in the order ModelConfig::rope's pairing expects.
// (GGUF names are blk.N.<name>, Hugging Face ones model.layers.N.<name>.)
struct LlamaLayerWeights {
  Tensor attn_norm;  // [n_embd]                     attn_norm / input_layernorm
  Tensor wq;         // [n_head * head_dim][n_embd]   attn_q / self_attn.q_proj
  Tensor wk;         // [n_head_kv * head_dim][n_embd] attn_k / self_attn.k_proj
  Tensor wv;         // [n_head_kv * head_dim][n_embd] attn_v / self_attn.v_proj
  Tensor wo;         // [n_embd][n_head * head_dim]   attn_output / self_attn.o_proj
  Tensor ffn_norm;   // [n_embd]                     ffn_norm / post_attention_layernorm
  Tensor w_gate;     // [n_ff][n_embd]                ffn_gate / mlp.gate_proj (llama2.c w1)
  Tensor w_up;       // [n_ff][n_embd]                ffn_up / mlp.up_proj (llama2.c w3)
  Tensor w_down;     // [n_embd][n_ff]                ffn_down / mlp.down_proj (llama2.c w2)
  QkvBias bias;      // kQwen2 only
  QkNorm qk_norm;    // kQwen3 only
};

struct ModelWeights {
  Tensor tok_embd;     // [n_vocab][n_embd]  token_embd / model.embed_tokens
  std::vector<LlamaLayerWeights> layers;  // [n_layer]
  Tensor output_norm;  // [n_embd]           output_norm / model.norm
  Tensor output;       // [n_vocab][n_embd]  output / lm_head; the same memory as tok_embd when tied
};

enum class ModelFormat { kGguf, kLlama2c, kHf };

struct Model {
  ModelConfig config;
  ModelWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the format keeps none and none was given
  // Why `tokenizer` is null although the files have one (a tokenizer kvbridge cannot build yet);
  // empty otherwise. The model then runs on token ids only.
  std::string tokenizer_note;
  // Ids that end a generation: the tokenizer's eos plus generation_config.json's eos_token_id
  // list (Hugging Face). Empty when neither names one.
  std::vector<int32_t> eos_ids;
  ModelFormat format = ModelFormat::kGguf;
  std::string path;  // the file, or the Hugging Face model directory

  // Owned storage behind the weight tensors (mmaps, converted buffers). Opaque to users.
  struct Storage;
  std::shared_ptr<Storage> storage;

  // Bytes of all weight tensors as stored (embedding counted once when tied).
  size_t weight_bytes() const;
  bool is_eos(int32_t id) const;
};

struct LoadOptions {
  std::string tokenizer_path;  // llama2.c tokenizer.bin; for GGUF it overrides the embedded vocab
};

// Detects the format and loads config, weights and tokenizer in named steps:
//   a directory, or a path to its config.json → Hugging Face (engine/weights_hf.cpp):
//     config.json, model.safetensors or model.safetensors.index.json + shards, tokenizer files,
//     generation_config.json; F32/F16/BF16 tensors are used in place (mmap).
//   a file starting with the GGUF magic → GGUF (arch llama, qwen2 or qwen3);
//   anything else → a llama2.c checkpoint (header consistent with the file size).
// NOT_FOUND for a missing file or directory; INVALID_ARGUMENT for anything malformed or
// unsupported, naming the file and the tensor or key (an unknown architecture names it).
Result<std::unique_ptr<Model>> load_model(const std::string& path, const LoadOptions& opt = {});

// One-line summary: "llama: 5 layers, n_embd 64, 8 heads (4 kv) x 8, n_ff 172, vocab 512, f32";
// qwen2/qwen3 add "qkv bias"/"qk norm", Llama 3 scaling "rope llama3".
std::string describe(const Model& m);

}  // namespace kvb
