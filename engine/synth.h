// Random-weight llama models of real shapes, for benchmarks and tests.
//
// A synthetic model has a preset's exact ModelConfig, weights drawn from a seeded,
// platform-independent generator, and a synthetic SentencePiece vocabulary of exactly n_vocab
// pieces, so that every path (tokenize → forward → sample → detokenize, GGUF export, llama.cpp)
// runs end to end. The numbers are meaningless; the shapes and byte sizes are real.
//
// Weights (a pure function of seed, tensor name and dtype):
//   matrices  uniform in [-0.02·√3, 0.02·√3) (std 0.02), from xoshiro256** seeded per tensor by
//             splitmix64(seed, FNV-1a(tensor GGUF name)); drawn in f32 row-major order, then
//             converted with from_f32 to the requested dtype. Q8_0 falls back to F16 for matrices
//             whose n_in is not a multiple of 32 (gguf_matrix_dtype), as in GGUF export.
//   norms     all 1.0, F32.
// With norms at 1 and std 0.02, RMSNorm keeps activations O(1) and logits stay O(1) at any depth.
//
// Vocabulary (n_vocab >= 260): id 0 "<unk>" (unknown), 1 "<s>" (BOS, control), 2 "</s>" (EOS,
// control), 3..258 the byte tokens "<0x00>".."<0xFF>" (byte), then distinct normal pieces with
// strictly decreasing scores (-1, -2, ...): every string of length 1, then 2, then 3... over the
// alphabet "▁", a-z, A-Z, 0-9 and ASCII punctuation. Each piece of length k > 1 is the merge of
// two shorter pieces, so SPM merging produces multi-character tokens. add_bos and add_space_prefix
// on, add_eos off.
//
// Shape specs: a preset name, optionally followed by overrides ":key=value[,key=value...]" with
// keys n_layer, n_vocab, n_ctx (e.g. "stories110M:n_layer=2,n_vocab=1024"), for small test
// variants of a real shape.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/gguf_export.h"
#include "engine/model.h"
#include "engine/tokenizer.h"
#include "kernels/dtype.h"
#include "kernels/status.h"

namespace kvb {

struct SynthShape {
  std::string name;    // preset name, or the full spec when overrides were given
  ModelConfig config;  // valid (ModelConfig::validate)
  std::string note;    // one line for `kvbridge synth --list`
};

// The presets, in size order:
//   stories260K  5 layers, n_embd 64, 8 heads / 4 kv, n_ff 172, vocab 512, ctx 512, tied
//   stories15M   6 layers, n_embd 288, 6 heads, n_ff 768, vocab 32000, ctx 256, tied
//   stories42M   8 layers, n_embd 512, 8 heads, n_ff 1376, vocab 32000, ctx 1024, tied
//   stories110M  12 layers, n_embd 768, 12 heads, n_ff 2048, vocab 32000, ctx 1024, tied
//   qwen3-0.6b   28 layers, n_embd 1024, 16 heads / 8 kv, head_dim 128, n_ff 3072, vocab 151936,
//                theta 1e6, eps 1e-6, ctx 40960, tied. Qwen3-0.6B's dimensions as a *llama*
//                model: the qwen3 architecture itself (Q/K norms, NeoX RoPE) comes with a later
//                issue; this preset exercises its sizes (head_dim != n_embd / n_head, big vocab).
//   llama3.2-1b  16 layers, n_embd 2048, 32 heads / 8 kv, head_dim 64, n_ff 8192, vocab 128256,
//                theta 500000, ctx 131072, tied (llama3 RoPE frequency scaling not modelled)
//   llama3-8b    32 layers, n_embd 4096, 32 heads / 8 kv, head_dim 128, n_ff 14336,
//                vocab 128256, theta 500000, ctx 8192, untied
const std::vector<SynthShape>& synth_shapes();
std::vector<std::string> synth_shape_names();

// Resolves a shape spec (see above). INVALID_ARGUMENT listing the presets for an unknown name,
// naming the key for a bad override, or when the result is not a valid config / n_vocab < 260.
Result<SynthShape> find_synth_shape(std::string_view spec);

// The synthetic vocabulary described above. n_vocab must be >= 260 (asserted).
Vocab synth_vocab(int32_t n_vocab);

// Builds a model of shape `spec` with matrices in `dtype` (F32, F16, BF16 or Q8_0; else
// INVALID_ARGUMENT), in memory: the Model owns its weights (about weight_bytes() of RAM, a single
// copy) and a Tokenizer over synth_vocab. Model::format is kGguf and Model::path is
// "synth-<spec>", so write_model_gguf names it that way. Deterministic: the same (spec, dtype,
// seed) gives bit-identical weights on every platform. Single-threaded, a few ns per weight
// (stories110M in f32: about 0.5 s).
Result<std::unique_ptr<Model>> synth_model(std::string_view spec, DType dtype, uint64_t seed);

// Writes the GGUF of synth_model(spec, dtype, seed) to `path` without building the model: each
// tensor is generated in row blocks while the file is written, so memory stays at a few MiB plus
// the vocabulary whatever the preset (llama3-8b in q8_0: ~25 MiB RSS, an 8 GiB file in ~90 s).
// The file is byte-identical to write_model_gguf(*synth_model(spec, dtype, seed), path).
// Errors as synth_model and write_model_gguf.
Status write_synth_gguf(std::string_view spec, DType dtype, uint64_t seed, const std::string& path,
                        const ExportProgress& progress = {});

}  // namespace kvb
