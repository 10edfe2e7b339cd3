// Internal to engine/: the pre-tokenizers of byte-level BPE families, which split text into the
// words that BPE then merges within. Not installed.
//
// Each family is defined by the split regex Hugging Face's tokenizer.json carries for it (the
// `Split` pre-tokenizer's pattern, or the one built into `ByteLevel` with use_regex for GPT-2),
// written here in that exact spelling so the HF loader can recognize it:
//   "gpt2"       GPT-2:   's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
//   "qwen2"      Qwen2/2.5/3: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|
//                      ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+   (one digit per word)
//   "llama-bpe"  Llama 3: as qwen2 with \p{N}{1,3} (up to three digits per word)
//   "smollm"     SmolLM, StarCoder, ...: Hugging Face's Digits(individual_digits) first (each \p{N}
//                      character a word), then GPT-2's regex on the text between the digits
#pragma once

#include <memory>
#include <optional>
#include <string_view>
#include <vector>

#include "kernels/status.h"

namespace kvb {

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;

  // Appends the words of `text` to `words`, in order, as views into `text`; their concatenation
  // is exactly `text` (text that no alternative matches becomes words of its own, as HF's
  // "Isolated" split does). Accepts any bytes: each byte of an ill-formed UTF-8 sequence acts as
  // one U+FFFD character (a symbol: neither letter, number nor space), which is how llama.cpp
  // segments such text, but the word keeps the original byte. Thread-safe; O(n) in the text.
  virtual void split(std::string_view text, std::vector<std::string_view>& words) const = 0;
};

// The pre-tokenizer of a family by its Vocab::pre name ("gpt2", "smollm", "qwen2", "llama-bpe"; empty means
// "gpt2"). INVALID_ARGUMENT for any other name; INTERNAL if PCRE2 rejects a pattern (a bug).
// Compiles (and JIT-compiles) the pattern: call once per tokenizer, not per text.
Result<std::unique_ptr<PreTokenizer>> create_pre_tokenizer(std::string_view pre);

// The family whose Hugging Face split regex is exactly `regex` (see above); nullopt if none.
std::optional<std::string_view> pre_from_hf_regex(std::string_view regex);

// True for the names create_pre_tokenizer accepts (the empty name included).
bool is_known_pre(std::string_view pre);

}  // namespace kvb
