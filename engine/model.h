// The model blueprint (ModelConfig), its weights as plain tensors, and loading from disk.
//
// A Model is immutable after load_model() returns and may be shared by any number of threads and
// runners. Weight tensors are host views into the Model's own storage (an mmap of the file, or
// buffers the loader converted); they stay valid for the Model's lifetime.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "engine/tokenizer.h"
#include "kernels/backend.h"
#include "kernels/status.h"
#include "kernels/tensor.h"

namespace kvb {

enum class Arch { kLlama };
std::string_view arch_name(Arch a);

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
  float norm_eps = 1e-5f;
  RopeParams rope;          // n_rot, theta base, pairing
  bool tied_output = false; // classifier shares the token embedding

  int32_t n_embd_q() const { return n_head * head_dim; }
  int32_t n_embd_kv() const { return n_head_kv * head_dim; }
  // INVALID_ARGUMENT naming the first inconsistent field (zero sizes, n_head % n_head_kv, ...).
  Status validate() const;
};

// Weights of one llama block. Matrices are [n_out][n_in] (row i = weights of output i), any of
// F32/F16/BF16/Q8_0; norm vectors are always F32.
struct LlamaLayerWeights {
  Tensor attn_norm;  // [n_embd]
  Tensor wq;         // [n_head * head_dim][n_embd]
  Tensor wk;         // [n_head_kv * head_dim][n_embd]
  Tensor wv;         // [n_head_kv * head_dim][n_embd]
  Tensor wo;         // [n_embd][n_head * head_dim]
  Tensor ffn_norm;   // [n_embd]
  Tensor w_gate;     // [n_ff][n_embd]   (llama2.c w1)
  Tensor w_up;       // [n_ff][n_embd]   (llama2.c w3)
  Tensor w_down;     // [n_embd][n_ff]   (llama2.c w2)
};

struct ModelWeights {
  Tensor tok_embd;     // [n_vocab][n_embd]
  std::vector<LlamaLayerWeights> layers;  // [n_layer]
  Tensor output_norm;  // [n_embd]
  Tensor output;       // [n_vocab][n_embd]; the same memory as tok_embd when tied
};

enum class ModelFormat { kGguf, kLlama2c };

struct Model {
  ModelConfig config;
  ModelWeights weights;
  std::unique_ptr<Tokenizer> tokenizer;  // null when the format keeps none and none was given
  ModelFormat format = ModelFormat::kGguf;
  std::string path;

  // Owned storage behind the weight tensors (mmaps, converted buffers). Opaque to users.
  struct Storage;
  std::shared_ptr<Storage> storage;

  // Bytes of all weight tensors as stored (embedding counted once when tied).
  size_t weight_bytes() const;
};

struct LoadOptions {
  std::string tokenizer_path;  // llama2.c tokenizer.bin; for GGUF it overrides the embedded vocab
};

// Detects the format from the file's first bytes (GGUF magic, else a llama2.c header consistent
// with the file size) and loads config, weights and tokenizer in named steps.
// NOT_FOUND for a missing file; INVALID_ARGUMENT for anything malformed, naming the tensor or key.
Result<std::unique_ptr<Model>> load_model(const std::string& path, const LoadOptions& opt = {});

// One-line summary: "llama: 5 layers, n_embd 64, 8 heads (4 kv) x 8, n_ff 172, vocab 512, f32".
std::string describe(const Model& m);

}  // namespace kvb
