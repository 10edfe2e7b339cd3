// Internal to engine/: the byte-level BPE tokenizer (GPT-2, Qwen2/2.5/3, Llama 3). Not installed.
//
// Encoding, as Hugging Face `tokenizers` and llama.cpp's llm_tokenizer_bpe do it:
//   1. added tokens: the text of user-defined tokens (HF added tokens with special=false) is always
//      cut out and emitted as those tokens, and the text of control tokens (special=true) only
//      with EncodeOptions::parse_special; leftmost match first, the longest at a position (HF);
//   2. each remaining run is split into words by the family's regex (Vocab::pre, unicode_regex.h);
//   3. with Vocab::ignore_merges a word whose byte-level spelling is a piece is emitted whole;
//   4. otherwise the word's bytes start as one token each (GPT-2's byte → unicode map) and the
//      adjacent pair with the lowest merge rank (leftmost on ties) merges until no pair has a rank.
// Decoding: a normal piece maps back to its bytes through the byte map (a piece with characters
// outside the map decodes to its own text, as HF's ByteLevel decoder does); user-defined tokens
// decode to their text; control, unknown, unused and undefined tokens to "" (as llama.cpp).
// Vocab::add_space_prefix and EncodeOptions::add_space_prefix do not apply to BPE.
#pragma once

#include <memory>

#include "engine/tokenizer.h"
#include "kernels/status.h"

namespace kvb {

// Builds the BPE tokenizer. Precondition: vocab.model == kBpe and Tokenizer::create's generic
// checks passed. INVALID_ARGUMENT for an unknown Vocab::pre, a merge that is not "left right" or
// names a piece (left, right or their concatenation) that is not in the vocab, a byte whose
// byte-level piece is missing when there is no unk token to fall back on, or a kByte token whose
// piece is not "<0xAB>". Cost O(n_vocab + n_merges); the result is immutable and thread-safe.
Result<std::unique_ptr<Tokenizer>> create_bpe_tokenizer(Vocab vocab);

}  // namespace kvb
