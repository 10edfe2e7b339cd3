// Random-weight models of real shapes (llama, qwen2, qwen3), for benchmarks and tests.
//
// A synthetic model has a preset's exact ModelConfig, weights drawn from a seeded,
// platform-independent generator, and a synthetic vocabulary of exactly n_vocab pieces in its
// family's format, so that every path (tokenize → forward → sample → detokenize, GGUF and Hugging
// Face export, llama.cpp, transformers) runs end to end. The numbers are meaningless; the shapes
// and byte sizes are real.
//
// Weights (a pure function of seed, tensor name and dtype):
//   matrices  uniform in [-0.02·√3, 0.02·√3) (std 0.02), from xoshiro256** seeded per tensor by
//             splitmix64(seed, FNV-1a(tensor GGUF name)); drawn in f32 row-major order in Hugging
//             Face's row order, then converted with from_f32 to the requested dtype. Q8_0 falls
//             back to F16 for matrices whose n_in is not a multiple of 32 (gguf_matrix_dtype), as
//             in GGUF export. A llama model's GGUF (and the in-memory model, which is its GGUF
//             form: RoPE kNormal) holds attn_q/attn_k with rows permuted as llama.cpp's converter
//             permutes them (gguf_row_source), so the GGUF and the Hugging Face files of one
//             (spec, dtype, seed) hold the same model.
//   norms     all 1.0, F32 (attn_norm, ffn_norm, output_norm).
//   qk norms  1 + the matrix distribution, F32 (qwen3 attn_q_norm / attn_k_norm).
//   biases    the matrix distribution, F32 (qwen2 attn_{q,k,v}.bias).
//   rope_freqs  llama3_rope_freq_factors of the preset's scaling (llama3.2-1b), F32.
// With norms at 1 and std 0.02, RMSNorm keeps activations O(1) and logits stay O(1) at any depth.
// Vectors are F32 in every format (Hugging Face files too), so both formats hold the same values.
//
// Vocabularies (SynthVocabKind):
//   kSpm (stories*, n_vocab >= 260): id 0 "<unk>" (unknown), 1 "<s>" (BOS, control), 2 "</s>"
//     (EOS, control), 3..258 the byte tokens "<0x00>".."<0xFF>" (byte), then distinct normal
//     pieces with strictly decreasing scores (-1, -2, ...): every string of length 1, then 2, then
//     3... over the alphabet "▁", a-z, A-Z, 0-9 and ASCII punctuation. Each piece of length k > 1
//     is the merge of two shorter pieces, so SPM merging produces multi-character tokens. add_bos
//     and add_space_prefix on, add_eos off.
//   kQwen, kLlama3 (byte-level BPE, GGUF "gpt2"): ids 0..255 the 256 byte symbols of GPT-2's
//     bytes_to_unicode in its order ("!".."~", "¡".."¬", "®".."ÿ", then "Ā".. for the rest), then
//     pieces built by merges, rank order = id order: every string of 2, then 3, ... characters
//     over "Ġ" (space), a-z, A-Z, 0-9 and ASCII punctuation, piece = merge(its first k-1
//     characters, its last one); the family's special tokens (control) take the last ids:
//       kQwen    <|endoftext|> (pad), <|im_start|>, <|im_end|> (eos); no BOS; pre "qwen2";
//                a ChatML chat template
//       kLlama3  <|begin_of_text|> (bos, added), <|end_of_text|>, <|start_header_id|>,
//                <|end_header_id|>, <|eot_id|> (eos); pre "llama-bpe", ignore_merges; a Llama 3
//                chat template
//     generation_config.json's eos ids: <|im_end|>, <|endoftext|> (qwen); <|end_of_text|>,
//     <|eot_id|> (llama3).
//
// Shape specs: a preset name, optionally followed by overrides ":key=value[,key=value...]" with
// keys n_layer, n_vocab, n_ctx, n_embd, n_ff, n_head, n_head_kv, head_dim (e.g.
// "stories110M:n_layer=2,n_vocab=1024", "qwen3-0.6b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,
// head_dim=16,n_ff=128,n_vocab=1024"), for small test variants of a real shape. Without a head_dim
// override, a preset whose head_dim is n_embd / n_head keeps that relation.
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

enum class SynthVocabKind { kSpm, kQwen, kLlama3 };

struct SynthShape {
  std::string name;    // preset name, or the full spec when overrides were given
  // Valid (ModelConfig::validate), in the GGUF form: kNormal RoPE for llama (Q/K rows permuted),
  // kNeox for qwen; rope_freq_factors from rope_scaling.
  ModelConfig config;
  std::string note;    // one line for `kvbridge synth --list`
  SynthVocabKind vocab = SynthVocabKind::kSpm;
  Llama3RopeScaling rope_scaling;  // factor 0: none
};

// The presets, in size order:
//   stories260K  5 layers, n_embd 64, 8 heads / 4 kv, n_ff 172, vocab 512, ctx 512, tied
//   stories15M   6 layers, n_embd 288, 6 heads, n_ff 768, vocab 32000, ctx 256, tied
//   stories42M   8 layers, n_embd 512, 8 heads, n_ff 1376, vocab 32000, ctx 1024, tied
//   stories110M  12 layers, n_embd 768, 12 heads, n_ff 2048, vocab 32000, ctx 1024, tied
//   qwen2.5-0.5b qwen2: 24 layers, n_embd 896, 14 heads / 2 kv, head_dim 64, n_ff 4864,
//                vocab 151936, theta 1e6, eps 1e-6, ctx 32768, tied, Q/K/V biases
//   qwen3-0.6b   qwen3: 28 layers, n_embd 1024, 16 heads / 8 kv, head_dim 128, n_ff 3072,
//                vocab 151936, theta 1e6, eps 1e-6, ctx 40960, tied, Q/K norms
//   llama3.2-1b  llama: 16 layers, n_embd 2048, 32 heads / 8 kv, head_dim 64, n_ff 8192,
//                vocab 128256, theta 500000, eps 1e-5, ctx 131072, tied, llama3 RoPE scaling
//                (factor 32, low 1, high 4, original 8192)
//   llama3-8b    llama: 32 layers, n_embd 4096, 32 heads / 8 kv, head_dim 128, n_ff 14336,
//                vocab 128256, theta 500000, ctx 8192, untied
// stories* use the kSpm vocab, qwen* kQwen, llama3* kLlama3.
const std::vector<SynthShape>& synth_shapes();
std::vector<std::string> synth_shape_names();

// Resolves a shape spec (see above). INVALID_ARGUMENT listing the presets for an unknown name,
// naming the key for a bad override, or when the result is not a valid config / n_vocab is below
// the vocabulary's minimum (260 for kSpm; 256 + specials + 1 for BPE).
Result<SynthShape> find_synth_shape(std::string_view spec);

// The kSpm vocabulary described above. n_vocab must be >= 260 (asserted).
Vocab synth_vocab(int32_t n_vocab);
// A BPE vocabulary (kQwen or kLlama3) described above. n_vocab must be at least
// synth_min_vocab(kind) (asserted).
Vocab synth_bpe_vocab(int32_t n_vocab, SynthVocabKind kind);
int32_t synth_min_vocab(SynthVocabKind kind);
// The vocabulary of a shape: synth_vocab or synth_bpe_vocab of shape.config.n_vocab.
Vocab synth_shape_vocab(const SynthShape& shape);

// Writes a BPE vocab as Hugging Face tokenizer files into `dir`: vocab.json (the non-special
// pieces), merges.txt ("#version: 0.2" then one merge per line), tokenizer_config.json
// (added_tokens_decoder with the special tokens, bos/eos/pad tokens, add_bos_token,
// chat_template). INVALID_ARGUMENT for an SPM vocab; UNAVAILABLE on I/O errors.
Status write_hf_tokenizer_files(const Vocab& v, const std::string& dir);

// Builds a model of shape `spec` with matrices in `dtype` (F32, F16, BF16 or Q8_0; else
// INVALID_ARGUMENT), in memory, in the GGUF form: the Model owns its weights (about
// weight_bytes() of RAM, a single copy) and a Tokenizer over the shape's vocab (null, with
// Model::tokenizer_note saying why, while kvbridge cannot build that tokenizer). Model::format is
// kGguf and Model::path is "synth-<spec>", so write_model_gguf names it that way. Deterministic:
// the same (spec, dtype, seed) gives bit-identical weights on every platform. Single-threaded, a
// few ns per weight (stories110M in f32: about 0.5 s).
Result<std::unique_ptr<Model>> synth_model(std::string_view spec, DType dtype, uint64_t seed);

// Writes the GGUF of synth_model(spec, dtype, seed) to `path` without building the model: each
// tensor is generated in row blocks while the file is written, so memory stays at a few MiB plus
// the vocabulary whatever the preset (llama3-8b in q8_0: ~25 MiB RSS, an 8 GiB file in ~90 s).
// The file is byte-identical to write_model_gguf(*synth_model(spec, dtype, seed), path) whenever
// that model has its tokenizer. Errors as synth_model and write_model_gguf.
Status write_synth_gguf(std::string_view spec, DType dtype, uint64_t seed, const std::string& path,
                        const ExportProgress& progress = {});

struct SynthHfOptions {
  // Weights above this many bytes are split into model-0000K-of-0000N.safetensors shards with a
  // model.safetensors.index.json (transformers' layout); a tensor larger than it gets a shard of
  // its own. Transformers' default max_shard_size is 5 GB.
  uint64_t shard_bytes = 5'000'000'000;
};

// Writes the same model as a Hugging Face directory `dir` (created if needed; existing files of
// the same names are overwritten): config.json (model_type, architectures, hyper-parameters,
// rope_scaling, torch_dtype), generation_config.json (bos, eos ids), the safetensors weights
// (model.safetensors, or shards + index) with Hugging Face tensor names, Q/K rows in Hugging Face
// order, matrices in `dtype` and vectors in F32, and for BPE vocabs write_hf_tokenizer_files (an
// SPM vocab writes no tokenizer: the model then loads with ids only). Streams one tensor block at
// a time, like write_synth_gguf. dtype: F32, F16 or BF16 (safetensors holds no Q8_0; else
// INVALID_ARGUMENT). UNAVAILABLE on I/O errors (files written so far are left behind).
Status write_synth_hf(std::string_view spec, DType dtype, uint64_t seed, const std::string& dir,
                      const SynthHfOptions& opt = {}, const ExportProgress& progress = {});

}  // namespace kvb
