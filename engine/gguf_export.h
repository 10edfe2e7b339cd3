// Writing a Model as a llama-architecture GGUF v3 file that llama.cpp accepts.
//
// The file holds, in this order:
//   metadata  general.{architecture "llama", name, file_type}, llama.{context_length,
//             embedding_length, block_count, feed_forward_length, attention.head_count,
//             attention.head_count_kv, attention.layer_norm_rms_epsilon, rope.freq_base,
//             rope.dimension_count} (+ attention.key_length/value_length when head_dim !=
//             n_embd / n_head), and tokenizer.ggml.* when the model has a tokenizer. All integers
//             are u32, as llama.cpp expects.
//   tensors   token_embd, output_norm, output (omitted when tied), then per layer blk.N.{attn_q,
//             attn_k, attn_v, attn_output, attn_norm, ffn_gate, ffn_down, ffn_up, ffn_norm}.weight
//             (the order llama.cpp's convert-llama2c-to-ggml uses). GGUF ne order: a matrix
//             [n_out][n_in] is stored with ne = {n_in, n_out}. Q and K are written as stored (the
//             loaders keep adjacent-pair RoPE layout on both sides).
// Norm vectors are always F32. Matrices (token_embd and output included) keep their stored dtype
// unless a matrix dtype is asked for; a Q8_0 request for a matrix whose n_in is not a multiple of
// 32 falls back to F16 for that matrix, as llama.cpp's converter does.
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

// ---- GGUF naming of llama weights (shared by the exporter and engine/synth) ----

enum class LlamaWeight : uint8_t {
  kTokEmbd, kOutputNorm, kOutput,
  kAttnQ, kAttnK, kAttnV, kAttnOutput, kAttnNorm, kFfnGate, kFfnDown, kFfnUp, kFfnNorm,
};

// One tensor of a llama GGUF. Matrices are [rows][cols] = [n_out][n_in] (GGUF ne = {cols, rows});
// norm vectors have rows == 1 and are 1-D in the file (ne = {cols}).
struct LlamaTensorSlot {
  std::string name;  // "token_embd.weight", "blk.3.attn_q.weight", ...
  LlamaWeight weight = LlamaWeight::kTokEmbd;
  int32_t layer = -1;  // -1 for the global tensors
  int64_t rows = 1, cols = 0;

  bool is_norm() const { return weight == LlamaWeight::kOutputNorm || weight == LlamaWeight::kAttnNorm ||
                                weight == LlamaWeight::kFfnNorm; }
  std::vector<int64_t> ne() const { return is_norm() ? std::vector<int64_t>{cols} : std::vector<int64_t>{cols, rows}; }
};

// Every tensor of a llama GGUF for `c`, in file order; output.weight only when !c.tied_output.
// `c` must be valid (ModelConfig::validate).
std::vector<LlamaTensorSlot> llama_tensor_slots(const ModelConfig& c);
// The Model tensor a slot names. `w.layers` must hold slot.layer. The reference borrows `w`.
Tensor& llama_weight(ModelWeights& w, const LlamaTensorSlot& slot);
const Tensor& llama_weight(const ModelWeights& w, const LlamaTensorSlot& slot);

// The dtype a matrix with `cols` inputs is stored in when `want` is asked for: F16 for Q8_0 when
// cols % 32 != 0, else `want`. `want` must be F32, F16, BF16 or Q8_0.
DType gguf_matrix_dtype(DType want, int64_t cols);
// general.file_type (llama_ftype) for a file whose matrices are mostly `t`: F32 0, F16 1, Q8_0 7,
// BF16 32.
uint32_t gguf_file_type(DType t);
// The dtype that holds the most matrix elements (norms excluded) when slots[i] is stored as
// stored[i] (same sizes): the dtype general.file_type names. Ties go to the earliest slot.
DType gguf_file_dtype(const std::vector<LlamaTensorSlot>& slots, const std::vector<DType>& stored);
// general.name for a model loaded from `path`: the file name without a .gguf/.bin extension.
std::string gguf_model_name(std::string_view path);

// Sets all general.*, llama.* and (when vocab is not null) tokenizer.ggml.* keys described above.
// tokenizer.ggml.padding_token_id is written only when vocab->pad >= 0. `vocab` is borrowed.
void set_llama_gguf_metadata(GgufWriter& w, const ModelConfig& c, const Vocab* vocab, const std::string& name,
                             DType matrix_dtype);

// Called after each tensor is written: (tensors done, tensors total, bytes done, bytes total).
using ExportProgress = std::function<void(size_t, size_t, uint64_t, uint64_t)>;

// Writes `m` to `path` (atomically: temp file + rename). Tensors are converted and streamed one
// row block at a time (a few MiB of scratch), so memory use does not grow with the model beyond
// `m` itself. matrix_dtype: F32, F16, BF16 or Q8_0 (others INVALID_ARGUMENT); non-F32 sources are
// dequantized row by row first, and a source already in the target dtype is copied bit for bit.
// general.name comes from gguf_model_name(m.path); general.file_type from gguf_file_dtype. Errors: INVALID_ARGUMENT for a bad dtype or an invalid model;
// UNAVAILABLE for I/O failures (no partial file is left behind). `m` is only read; thread-safe
// with respect to other readers of `m`.
Status write_model_gguf(const Model& m, const std::string& path, std::optional<DType> matrix_dtype = {},
                        const ExportProgress& progress = {});

}  // namespace kvb
