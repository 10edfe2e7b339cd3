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
//   model          "llama" → kSpm (spm_flavor kLlamaCpp), "gpt2" → kBpe; anything else →
//                  UNIMPLEMENTED naming the model; absent → INVALID_ARGUMENT.
//   tokens         required string array, 1 ≤ n ≤ INT32_MAX.
//   scores         optional float array of n (default 0).
//   token_type     optional integer array of n with values 0..6. When absent, types are inferred:
//                  "<0xAB>" pieces kByte, bos/eos/pad kControl, unk kUnknown, the rest kNormal.
//   merges         optional string array (BPE only).
//   pre            BPE only: llama.cpp's pre-tokenizer name → Vocab::pre: "gpt-2"/"phi-2"/"gpt2" →
//                  "gpt2", "qwen2"/"deepseek-r1-qwen" → "qwen2", "llama-bpe"/"llama3"/"llama-v3"
//                  → "llama-bpe" (with ignore_merges, as llama.cpp sets it); "smollm" and the names llama.cpp
//                  groups with it (starcoder, refact, command-r, codeshell, exaone, minerva-7b, mellum2)
//                  → "smollm". Absent → "gpt2" (the
//                  GGUF predates the key; llama.cpp warns and uses a GPT-2-like default). Any other
//                  name → UNIMPLEMENTED naming it (a model then loads without a tokenizer).
//   chat_template  tokenizer.chat_template → Vocab::chat_template (any model; empty if absent).
//   bos/eos/unknown/padding_token_id
//                  defaults as llama.cpp: 1/2/0/none for "llama", none for "gpt2"; an id outside
//                  [0, n) (e.g. u32 0xFFFFFFFF) means "none", as llama.cpp ignores it.
//   add_bos_token, add_eos_token, add_space_prefix
//                  defaults: "llama" true/false/true, "gpt2" false/false/false.
// A key present with the wrong type or an array of the wrong length → INVALID_ARGUMENT naming the
// file and key. `f` is only borrowed for the call; the Vocab owns copies.
Result<Vocab> read_gguf_vocab(const GgufFile& f);

// Reads a Hugging Face byte-level BPE tokenizer from a model directory. The result is a kBpe
// Vocab (scores 0, add_space_prefix off).
//   tokens/merges  tokenizer.json (model.vocab; model.merges as "a b" strings or [a, b] pairs;
//                  model.ignore_merges; added_tokens), else vocab.json + merges.txt, else GPT-2's
//                  layout encoder.json + vocab.bpe ("#version" and blank merge lines skipped).
//                  Ids may leave gaps (up to 65,536 in all), filled with empty kUnused tokens.
//   added tokens   tokenizer.json added_tokens and tokenizer_config.json added_tokens_decoder:
//                  special → kControl, not special → kUserDefined (lstrip/rstrip/single_word are
//                  ignored); an id already holding another text → INVALID_ARGUMENT.
//   pre            the pre_tokenizer's Split regex (or ByteLevel's built-in GPT-2 one) mapped to a
//                  family (engine/unicode_regex.h); else `pre_hint` ("gpt2", "qwen2",
//                  "llama-bpe"); else tokenizer_config's tokenizer_class (Qwen2Tokenizer → qwen2,
//                  GPT2Tokenizer → gpt2, which is what transformers would use for those files);
//                  else INVALID_ARGUMENT asking for a hint. A hint contradicting tokenizer.json, or
//                  one not in that list → INVALID_ARGUMENT. ignore_merges defaults to on for
//                  llama-bpe when tokenizer.json does not say.
//   Llama 3        with pre_hint "llama-bpe" and ids ending at 127999 (Llama 3's encoder.json,
//                  which leaves the specials out), Meta's Llama 3.1/3.2 special tokens
//                  128000..128255 are added as control tokens: <|begin_of_text|>, <|end_of_text|>,
//                  <|reserved_special_token_0|>, <|reserved_special_token_1|>,
//                  <|finetune_right_pad_id|>, <|reserved_special_token_2|>, <|start_header_id|>,
//                  <|end_header_id|>, <|eom_id|>, <|eot_id|>, <|python_tag|>, then
//                  <|reserved_special_token_3|> .. <|reserved_special_token_247|>; unless the
//                  config says otherwise bos = 128000, eos = 128009 (<|eot_id|>, Llama 3.2
//                  Instruct's), add_bos on.
//   config         tokenizer_config.json: bos/eos/unk/pad_token (a string, {"content": ...} or
//                  null; must name a token), add_bos_token, add_eos_token, chat_template (a string,
//                  or a list of named templates: "default" wins), else chat_template.jinja. Without
//                  those keys: tokenizer.json's TemplateProcessing post-processor (a leading special
//                  token is the BOS, and add_bos on), model.unk_token; for gpt2 files without a
//                  config, "<|endoftext|>" becomes a control token and bos/eos.
//   normalizer     null or NFC (accepted and not applied, as llama.cpp; NFC text is unaffected).
// Errors: NOT_FOUND when `dir` or every tokenizer file is missing (or vocab.json / encoder.json
// lacks its merges file); INVALID_ARGUMENT naming the file and what is wrong for malformed content
// (never a crash: JSON type errors are caught here); UNIMPLEMENTED naming what is not supported
// (another model type, byte_fallback, an unknown split regex or pre-tokenizer type, another
// normalizer, ByteLevel add_prefix_space). Merges naming unknown pieces load; Tokenizer::create
// rejects them. Thread-safe (no shared state); reads the whole files (tens of MB at most).
Result<Vocab> read_hf_vocab(const std::string& dir, std::string_view pre_hint = {});

}  // namespace kvb
