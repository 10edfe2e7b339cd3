// Writing a Model as a GGUF v3 file that llama.cpp accepts (arch llama, qwen2 or qwen3).
//
// The file holds, in this order:
//   metadata  general.{architecture (arch_name), name, file_type}, then under the arch's prefix
//             ("llama.", "qwen2.", "qwen3."): context_length, embedding_length, block_count,
//             feed_forward_length, attention.head_count, attention.head_count_kv,
//             attention.layer_norm_rms_epsilon, rope.freq_base, rope.dimension_count
//             (+ attention.key_length/value_length when head_dim != n_embd / n_head, + rope.scaling.
//             type "linear" and factor when freq_scale != 1), and tokenizer.ggml.* when the model
//             has a tokenizer: SPM vocabs as "llama" (tokens, scores, token_type), BPE vocabs as
//             "gpt2" (tokens, token_type, merges, pre), plus tokenizer.chat_template when the vocab
//             has one. All integers are u32, as llama.cpp expects.
//   tensors   token_embd, output_norm, output (omitted when tied), rope_freqs (Llama 3 scaling:
//             ModelConfig::rope_freq_factors), then per layer blk.N.{attn_q, attn_k, attn_v}.weight,
//             qwen2's blk.N.attn_{q,k,v}.bias, qwen3's blk.N.attn_{q,k}_norm.weight, then
//             blk.N.{attn_output, attn_norm, ffn_gate, ffn_down, ffn_up, ffn_norm}.weight (the
//             llama order of llama.cpp's convert-llama2c-to-ggml). GGUF ne order: a matrix
//             [n_out][n_in] is stored with ne = {n_in, n_out}.
// Q/K row order: llama GGUFs rotate adjacent pairs (RopeType::kNormal), so a llama model whose
// config says kNeox (loaded from Hugging Face) has its attn_q/attn_k rows permuted on the way out,
// exactly as llama.cpp's convert_hf_to_gguf.py does (gguf_row_source); kNormal llama models and
// Qwen models (kNeox in llama.cpp too) are written as stored.
// Norm, bias and rope_freqs vectors are always F32. Matrices (token_embd and output included) keep
// their stored dtype unless a matrix dtype is asked for; a Q8_0 request for a matrix whose n_in is
// not a multiple of 32 falls back to F16 for that matrix, as llama.cpp's converter does.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/gguf.h"
#include "engine/model.h"
#include "kernels/dtype.h"
#include "kernels/status.h"

namespace kvb {

// ---- GGUF naming of the weights of every family (shared by the exporter and engine/synth) ----

enum class LlamaWeight : uint8_t {
  kTokEmbd, kOutputNorm, kOutput, kRopeFreqs,
  kAttnQ, kAttnK, kAttnV, kAttnOutput, kAttnNorm, kFfnGate, kFfnDown, kFfnUp, kFfnNorm,
  kAttnQBias, kAttnKBias, kAttnVBias,  // qwen2
  kAttnQNorm, kAttnKNorm,              // qwen3
};

// One tensor of a GGUF. Matrices are [rows][cols] = [n_out][n_in] (GGUF ne = {cols, rows});
// vectors (norms, biases, rope_freqs) have rows == 1 and are 1-D F32 in the file (ne = {cols}).
struct LlamaTensorSlot {
  std::string name;  // "token_embd.weight", "blk.3.attn_q.weight", ...
  LlamaWeight weight = LlamaWeight::kTokEmbd;
  int32_t layer = -1;  // -1 for the global tensors
  int64_t rows = 1, cols = 0;

  // The RMSNorm weights of the residual stream (attn_norm, ffn_norm, output_norm).
  bool is_norm() const { return weight == LlamaWeight::kOutputNorm || weight == LlamaWeight::kAttnNorm ||
                                weight == LlamaWeight::kFfnNorm; }
  bool is_bias() const { return weight == LlamaWeight::kAttnQBias || weight == LlamaWeight::kAttnKBias ||
                                weight == LlamaWeight::kAttnVBias; }
  bool is_qk_norm() const { return weight == LlamaWeight::kAttnQNorm || weight == LlamaWeight::kAttnKNorm; }
  // 1-D F32 in the file: norms, biases, Q/K norms, rope_freqs.
  bool is_vector() const { return is_norm() || is_bias() || is_qk_norm() || weight == LlamaWeight::kRopeFreqs; }
  std::vector<int64_t> ne() const {
    return is_vector() ? std::vector<int64_t>{cols} : std::vector<int64_t>{cols, rows};
  }
};

// Every tensor of the GGUF of `c`, in file order; output.weight only when !c.tied_output,
// rope_freqs.weight only when c.rope_freq_factors is not empty, the bias and Q/K-norm slots only
// for the archs that have them. `c` must be valid (ModelConfig::validate).
std::vector<LlamaTensorSlot> llama_tensor_slots(const ModelConfig& c);
// The Model tensor a slot names. `w.layers` must hold slot.layer. The reference borrows `w`.
// Not for kRopeFreqs (asserted): those values live in ModelConfig::rope_freq_factors.
Tensor& llama_weight(ModelWeights& w, const LlamaTensorSlot& slot);
const Tensor& llama_weight(const ModelWeights& w, const LlamaTensorSlot& slot);
// llama_weight, or for kRopeFreqs an f32 view of m.config.rope_freq_factors. Borrows `m`.
Tensor slot_tensor(const Model& m, const LlamaTensorSlot& slot);

// llama.cpp's permutation of llama Q/K rows from Hugging Face's rotate-half order to GGUF's
// adjacent pairs, per head of head_dim rows: GGUF row h·hd + 2i + s holds HF row h·hd + s·hd/2 + i.
// Returns the HF (source) row of GGUF row `row`. head_dim must be even.
inline int64_t gguf_row_source(int64_t row, int64_t head_dim) {
  const int64_t h = row / head_dim, j = row % head_dim;
  return h * head_dim + (j % 2) * (head_dim / 2) + j / 2;
}
// Whether a slot's rows are permuted between a model of config `c` and its llama GGUF: attn_q and
// attn_k of a kLlama model whose RoPE is kNeox (Hugging Face order).
bool gguf_permutes_rows(const ModelConfig& c, const LlamaTensorSlot& slot);

// The dtype a matrix with `cols` inputs is stored in when `want` is asked for: F16 for Q8_0 when
// cols % 32 != 0, else `want`. `want` must be F32, F16, BF16 or Q8_0.
DType gguf_matrix_dtype(DType want, int64_t cols);
// general.file_type (llama_ftype) for a file whose matrices are mostly `t`: F32 0, F16 1, Q8_0 7,
// BF16 32.
uint32_t gguf_file_type(DType t);
// The dtype that holds the most matrix elements (vectors excluded) when slots[i] is stored as
// stored[i] (same sizes): the dtype general.file_type names. Ties go to the earliest slot.
DType gguf_file_dtype(const std::vector<LlamaTensorSlot>& slots, const std::vector<DType>& stored);
// general.name for a model loaded from `path`: the file name without a .gguf/.bin extension.
std::string gguf_model_name(std::string_view path);

// Sets all general.*, <arch>.* and (when vocab is not null) tokenizer.* keys described above.
// tokenizer.ggml.padding_token_id is written only when vocab->pad >= 0. `vocab` is borrowed.
void set_model_gguf_metadata(GgufWriter& w, const ModelConfig& c, const Vocab* vocab, const std::string& name,
                             DType matrix_dtype);

// Called after each tensor is written: (tensors done, tensors total, bytes done, bytes total).
using ExportProgress = std::function<void(size_t, size_t, uint64_t, uint64_t)>;

// Writes `m` to `path` (atomically: temp file + rename). Tensors are converted and streamed one
// row block at a time (a few MiB of scratch), so memory use does not grow with the model beyond
// `m` itself. matrix_dtype: F32, F16, BF16 or Q8_0 (others INVALID_ARGUMENT); non-F32 sources are
// dequantized row by row first, and a source already in the target dtype is copied bit for bit.
// general.name comes from gguf_model_name(m.path); general.file_type from gguf_file_dtype.
// Errors: INVALID_ARGUMENT for a bad dtype or an invalid model (a Qwen model with kNormal RoPE);
// UNAVAILABLE for I/O failures (no partial file is left behind). `m` is only read; thread-safe
// with respect to other readers of `m`.
Status write_model_gguf(const Model& m, const std::string& path, std::optional<DType> matrix_dtype = {},
                        const ExportProgress& progress = {});

}  // namespace kvb
