// Vocab loaders: one per file format, each filling the plain-data Vocab of engine/tokenizer.h.
// Loaders only read and validate; Tokenizer::create checks the vocab's internal consistency.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "engine/tokenizer.h"
#include "kernels/status.h"

namespace kvb {

class GgufFile;

// Reads a llama2.c `tokenizer.bin`: int32 max_token_length, then per token float32 score, int32
// byte length and that many bytes (little-endian). Reads exactly `n_vocab` tokens when
// n_vocab > 0 (trailing bytes are ignored, as run.c does), or every token up to the end of the
// file when n_vocab < 0.
//
// The result is in GGUF conventions, with model kSpm and spm_flavor kLlama2c: spaces in pieces
// become "▁", "\n<s>\n"/"\n</s>\n" become "<s>"/"</s>", ids 0/1/2 are unk/bos/eos (types
// kUnknown/kControl/kControl), "<0xAB>" pieces are kByte, every other piece kNormal; add_bos and
// add_space_prefix are on, add_eos off.
// Errors: NOT_FOUND when the file does not exist; INVALID_ARGUMENT (naming the path, the token
// index and what was wrong) for n_vocab == 0, a truncated or corrupt file, or fewer than 3 tokens.
// Never reads out of bounds. Thread-safe (no shared state).
Result<Vocab> read_llama2c_vocab(const std::string& path, int32_t n_vocab);

// Reads the `tokenizer.ggml.*` metadata of an open GGUF file.
//   model          "llama" → kSpm (spm_flavor kLlamaCpp), "gpt2" → kBpe (pieces and merges
//                  loaded; Tokenizer::create answers UNIMPLEMENTED for BPE); anything else →
//                  UNIMPLEMENTED naming the model; absent → INVALID_ARGUMENT.
//   tokens         required string array, 1 ≤ n ≤ INT32_MAX.
//   scores         optional float array of n (default 0).
//   token_type     optional integer array of n with values 0..6. When absent, types are inferred:
//                  "<0xAB>" pieces kByte, bos/eos/pad kControl, unk kUnknown, the rest kNormal.
//   merges         optional string array (BPE only).
//   bos/eos/unknown/padding_token_id
//                  defaults as llama.cpp: 1/2/0/none for "llama", none for "gpt2"; an id outside
//                  [0, n) (e.g. u32 0xFFFFFFFF) means "none", as llama.cpp ignores it.
//   add_bos_token, add_eos_token, add_space_prefix
//                  defaults: "llama" true/false/true, "gpt2" false/false/false.
// A key present with the wrong type or an array of the wrong length → INVALID_ARGUMENT naming the
// file and key. `f` is only borrowed for the call; the Vocab owns copies.
Result<Vocab> read_gguf_vocab(const GgufFile& f);

// Reads a Hugging Face tokenizer from a model directory: tokenizer.json, else vocab.json +
// merges.txt (or GPT-2's encoder.json + vocab.bpe), plus tokenizer_config.json when present
// (added/special tokens, bos/eos, chat_template). `pre_hint` names the pre-tokenizer when the files
// do not say it ("qwen2", "llama-bpe", "gpt2"; empty: infer). The result is a kBpe Vocab.
// NOT_FOUND when no tokenizer file exists; INVALID_ARGUMENT naming the file for malformed content.
Result<Vocab> read_hf_vocab(const std::string& dir, std::string_view pre_hint = {});

}  // namespace kvb
