// Tokenizers: text ↔ token ids.
//
// A Vocab is plain data filled by a loader (GGUF `tokenizer.ggml.*` metadata, llama2.c
// tokenizer.bin, Hugging Face tokenizer files; engine/vocab_loaders.h); Tokenizer::create picks the
// algorithm from Vocab::model (engine/tokenizer_spm.h, engine/tokenizer_bpe.h). Tokenizers are immutable
// after creation and safe to use from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/status.h"

namespace kvb {

// Values equal GGUF's tokenizer.ggml.token_type (llama.cpp's llama_token_type).
enum class TokenType : int32_t {
  kUndefined = 0,
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct Vocab {
  enum class Model {
    kSpm,  // SentencePiece-style scored merges with byte fallback (GGUF "llama", llama2.c)
    kBpe,  // byte-level BPE (GGUF "gpt2", Hugging Face tokenizer.json / vocab.json + merges.txt)
  };
  Model model = Model::kSpm;
  // Which reference implementation kSpm encoding reproduces token for token. Both give the same
  // ids on valid UTF-8 text; they differ only on invalid UTF-8, on a literal "▁" in the text
  // (llama.cpp treats it as a space, llama2.c as three bytes) and on pieces scored <= -1e10
  // (never merged by llama2.c). One deliberate deviation: on invalid UTF-8, kLlamaCpp ends a
  // character at the first non-continuation byte, where llama.cpp swallows the next character
  // (which can tear an escaped space into bytes that decode as "▁"); see tokenizer_spm.cpp.
  enum class SpmFlavor {
    kLlamaCpp,  // llama.cpp llm_tokenizer_spm (GGUF vocabs); user-defined tokens split out first
    kLlama2c,   // llama2.c run.c encode() (tokenizer.bin vocabs)
  };
  SpmFlavor spm_flavor = SpmFlavor::kLlamaCpp;
  // SPM pieces use U+2581 "▁" for a space, byte tokens are spelled "<0xAB>", as in GGUF. BPE
  // pieces are byte-level spellings (GPT-2's byte → unicode map: " the" is "Ġthe"), except
  // control and user-defined tokens, which hold their literal text ("<|im_start|>").
  std::vector<std::string> pieces;  // [n_vocab]
  std::vector<float> scores;        // [n_vocab]; SPM: higher merges first; no NaN; BPE: unused
  std::vector<TokenType> types;     // [n_vocab]
  // BPE only: "left right" in rank order (GGUF tokenizer.ggml.merges); empty for SPM.
  std::vector<std::string> merges;
  // BPE only: the pre-tokenizer (split regex) family, "gpt2", "smollm" (digits apart, then GPT-2's),
  // "qwen2" or "llama-bpe" (Llama 3);
  // see engine/unicode_regex.h. Loaders map llama.cpp's tokenizer.ggml.pre names ("gpt-2",
  // "llama3", ...) and tokenizer.json regexes onto these. Empty means "gpt2".
  std::string pre;
  // BPE only: a word that is itself a vocab piece is emitted whole, before any merging (Llama 3).
  bool ignore_merges = false;
  // The chat template's source text (Jinja, from tokenizer_config.json "chat_template" or GGUF
  // tokenizer.chat_template); empty when the files carry none. See engine/chat_template.h.
  std::string chat_template;
  int32_t bos = -1, eos = -1, unk = -1, pad = -1;  // -1 = none
  bool add_bos = true;
  bool add_eos = false;
  bool add_space_prefix = true;  // SentencePiece "dummy prefix": encode(" " + text)

  int32_t n_vocab() const { return int32_t(pieces.size()); }
};

// BOS/EOS follow llama.cpp's "add_special": each is added only when requested here AND the vocab
// has the token AND wants it (Vocab::add_bos / Vocab::add_eos).
struct EncodeOptions {
  bool add_bos = true;   // and the vocab has one and wants it (Vocab::add_bos)
  bool add_eos = false;  // and the vocab has one and wants it (Vocab::add_eos)
  // The SentencePiece dummy prefix, when the vocab wants it (Vocab::add_space_prefix). false:
  // encode the text exactly as given, e.g. one token's text re-encoded for alignment
  // (fuser/align.h), where " Once" must give "▁Once" and "Once" must not.
  bool add_space_prefix = true;
  // true: the text of control tokens (e.g. "<|im_start|>", "<|endoftext|>") in the input is
  // matched as those tokens before the rest is split, as llama.cpp's parse_special and Hugging
  // Face's special added tokens do; false: such text is tokenized as plain text. The text of
  // user-defined tokens (HF added tokens with special=false, e.g. Qwen3's "<think>") is matched
  // either way, as in both references. Honoured by BPE vocabs; SPM vocabs never parse control
  // tokens (they still split out user-defined ones).
  bool parse_special = false;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // INVALID_ARGUMENT for an inconsistent vocab: empty, pieces/scores/types of different sizes, a
  // NaN score, a type outside TokenType, a special id outside [-1, n_vocab), a kByte token whose
  // piece is not "<0xAB>", or (SPM) a byte with neither a byte token nor an unk to fall back on.
  // BPE: an unknown Vocab::pre, malformed merges or merges naming pieces that are not in the
  // vocab, a byte with no byte-level piece and no unk (engine/tokenizer_bpe.h). Builds the
  // piece → id (and, for BPE, pair → merge) hash maps once: O(n_vocab + n_merges).
  static Result<std::unique_ptr<Tokenizer>> create(Vocab vocab);

  // Text (UTF-8; invalid sequences fall back to byte tokens, so every byte survives) → ids.
  // Control-token text such as "<s>" is parsed only with EncodeOptions::parse_special. Empty text
  // gives just the BOS/EOS asked for (no dummy prefix). Cost O(n log n) in the text length.
  virtual std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt = {}) const = 0;

  // The bytes one token contributes when it follows `prev` (-1 at the start): "▁" → " ",
  // "<0x0A>" → "\n", control tokens (BOS/EOS) → "", and the dummy-prefix space after BOS or at the
  // start is dropped (only when Vocab::add_space_prefix; "at the start" is any prev < 0). Byte
  // tokens may yield partial UTF-8; concatenating the pieces of a sequence gives valid text.
  // Unknown tokens give "▅" (U+2585), unused and undefined ones "", as llama.cpp.
  // BPE (no dummy prefix; `prev` is ignored): a normal piece gives the bytes its byte-level
  // spelling stands for ("Ġthe" → " the"; may be partial UTF-8), user-defined tokens their text
  // ("<think>"), control, unknown, unused and undefined tokens "" (as llama.cpp).
  // An id outside [0, n_vocab) gives "" (callers that take ids from outside validate them first).
  virtual std::string decode_token(int32_t id, int32_t prev) const = 0;
  // The whole sequence, as the concatenation of decode_token over it.
  std::string decode(std::span<const int32_t> ids) const;

  virtual const Vocab& vocab() const = 0;
  int32_t n_vocab() const { return vocab().n_vocab(); }
  int32_t bos() const { return vocab().bos; }
  int32_t eos() const { return vocab().eos; }
};

}  // namespace kvb
