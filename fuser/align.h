// Token alignment (C2C §1b): a sharer with a different vocabulary runs on a sequence of exactly
// the receiver's length, so that position i of its KV cache lines up with the receiver's token i.
//
// Each receiver token's text is re-encoded with the sharer's tokenizer and one sharer token is
// kept per receiver token (AlignStrategy). Control tokens map to the sharer's counterparts. The
// receiver's tokenization is the base; the sharer sees a lossy re-tokenization. When both sides
// have the same vocabulary (same_vocabulary, or equal ModelIdentity::tokenizer_hash) alignment is
// skipped: the sharer gets the receiver's ids unchanged (identity_alignment).
//
// The sharer's tokenizer may live in another process (the gRPC agent), so align_tokens reaches it
// only through two batch callbacks, each called at most once per alignment (one RPC each);
// local_encoder / local_piece_texts are the in-process versions and define what a remote
// implementation must return.
//
// Threading: every function here is pure (no shared state); the local callbacks are as
// thread-safe as the Tokenizer they borrow, which is immutable.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/tokenizer.h"
#include "kernels/status.h"

namespace kvb::fuser {

// How to pick one sharer token when a receiver token's text re-encodes to several (C2C
// "alignment_strategy"): the first, or the one whose text is longest in characters (UTF-8 code
// points; a byte that starts no valid sequence counts as one), ties to the first. Declared only
// here; the fuser config includes this header.
enum class AlignStrategy { kFirst, kLongest };

// "first" / "longest".
std::string_view align_strategy_name(AlignStrategy s);
// "first" / "longest" (the C2C config spelling) → the strategy; INVALID_ARGUMENT otherwise.
Result<AlignStrategy> parse_align_strategy(std::string_view name);

// The text one token stands for, as re-encoded during alignment: its piece with "▁" → " " (the
// leading space is kept, even at the start of a sequence), a byte token → its single byte (may be
// partial UTF-8), control, unused and undefined tokens → "", unknown tokens → "▅" (as
// Tokenizer::decode_token). An id outside [0, n_vocab) gives "" (validate ids first).
std::string token_text(const Tokenizer& tok, int32_t id);

// Encodes each text with the sharer's tokenizer exactly as given: no BOS/EOS, no dummy prefix
// (" Once" → "▁Once", "Once" → "Once"). Returns one id list per text, in order. Texts are raw bytes
// and may be partial UTF-8 (a receiver byte token), so a remote transport must carry them as bytes,
// not as UTF-8 strings. A non-OK result aborts the alignment and is returned from align_tokens.
using BatchEncoder =
    std::function<Result<std::vector<std::vector<int32_t>>>(std::span<const std::string> texts)>;
// The in-process encoder: sharer.encode(text, {add_bos=false, add_eos=false,
// add_space_prefix=false}). Borrows `sharer`, which must outlive the returned function. Never fails.
BatchEncoder local_encoder(const Tokenizer& sharer);

// Maps sharer ids to their token_text, one string per id, in order (used by kLongest).
using PieceTexts = std::function<Result<std::vector<std::string>>(std::span<const int32_t> ids)>;
// The in-process version: token_text(sharer, id); INVALID_ARGUMENT for an id outside the vocab.
// Borrows `sharer`, which must outlive the returned function.
PieceTexts local_piece_texts(const Tokenizer& sharer);

// What align_tokens must know of the sharer's vocabulary besides its callbacks. -1 = none.
struct SharerSpecials {
  int32_t bos = -1, eos = -1, unk = -1, pad = -1;
  int32_t n_vocab = 0;  // required (> 0): every sharer id must lie in [0, n_vocab)
};
// The specials and vocab size of a local tokenizer (the agent sends the same four ids and size).
SharerSpecials sharer_specials(const Tokenizer& sharer);

struct Alignment {
  std::vector<int32_t> sharer_ids;  // [n_tokens] one per receiver position, each in [0, n_vocab)
  // [n_tokens] token_text of each receiver token. Their concatenation is the text the receiver
  // tokenized, byte-exact: Tokenizer::decode of the ids, but with the dummy-prefix space kept.
  std::vector<std::string> receiver_texts;
  int32_t n_multi = 0;  // receiver tokens whose text re-encoded to more than one sharer token
  int32_t n_empty = 0;  // ... to none (or whose text is empty); these get the fallback id
};

// Aligns `receiver_ids` (tokenized by `receiver`) to the sharer's vocabulary.
//
// Per position: the receiver's BOS/EOS/UNK/PAD ids map by role to the sharer's BOS/EOS/UNK/PAD,
// any other control or unknown token to the fallback id; these are never encoded. Every other
// token's text is re-encoded by `sharer_encode`: one sharer token → it; several → chosen by
// `strategy`; none (or an empty text) → the fallback id. The fallback id, also used where the
// sharer lacks the counterpart, is the sharer's UNK, else its BOS, else 0.
//
// Calls: `sharer_encode` at most once, with the distinct non-empty texts in order of first
// occurrence (not at all when there are none); `sharer_texts` at most once, only for kLongest and
// only when some text re-encoded to several tokens, with the distinct candidate ids. Both are
// called on this thread and not retained.
//
// Errors: INVALID_ARGUMENT for a receiver id outside [0, receiver.n_vocab()) (naming its position),
// specials outside [-1, n_vocab) or n_vocab <= 0, an unknown strategy, or a callback answering an
// id outside [0, n_vocab); INTERNAL for a callback answering the wrong number of entries; a
// callback's own error is returned with context. Cost: O(n_tokens) plus the callbacks.
Result<Alignment> align_tokens(std::span<const int32_t> receiver_ids, const Tokenizer& receiver,
                               const BatchEncoder& sharer_encode, const PieceTexts& sharer_texts,
                               const SharerSpecials& specials, AlignStrategy strategy);

// The same-vocabulary case: sharer_ids are the receiver's ids, receiver_texts as above, no
// multi/empty counts. INVALID_ARGUMENT for a receiver id outside the vocab.
Result<Alignment> identity_alignment(std::span<const int32_t> receiver_ids, const Tokenizer& receiver);

// True when every id means the same token on both sides: same model, pieces, scores, types,
// merges and BOS/EOS/UNK/PAD ids. Encoding flags (add_bos, add_space_prefix, ...) and the SPM
// flavour are ignored, as they never change what an id means. Equal ModelIdentity::tokenizer_hash
// implies this (the hash also covers the flags). O(n_vocab).
bool same_vocabulary(const Tokenizer& a, const Tokenizer& b);

// The receiver's tokens of a context re-read from another model's cache (receiver mode): a cache
// an agent holds starts its sequence, so they start as the receiver's own sequences do (its BOS
// when its vocab wants one), whether or not the sharer's vocab uses a BOS.
std::vector<int32_t> reread_context(const Tokenizer& receiver, std::string_view text);

// One training / evaluation example as receiver mode reads it (kvbridge fuser dump trains on
// these, bench/c2c_eval scores them): the sharer's tokens of the context (as its Prefill of the
// text makes them), the receiver's reread_context of their decoded text, and the continuation as
// the receiver's raw tokens (no BOS, no dummy-prefix space).
struct ExampleTokens {
  std::vector<int32_t> sharer_context, receiver_context, continuation;
};
ExampleTokens example_tokens(const Tokenizer& sharer, const Tokenizer& receiver, std::string_view context,
                             std::string_view continuation);

// Fits an example into max_tokens receiver cells. false (skip it): either part has under 2 tokens,
// or the context leaves no room for 2 continuation tokens (one is predicted from the context).
// Otherwise the continuation is cut to fit; returns true and sets *truncated when it was cut.
bool fit_example(ExampleTokens& e, size_t max_tokens, bool* truncated = nullptr);

}  // namespace kvb::fuser
