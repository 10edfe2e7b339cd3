// Token alignment: receiver token → its text → sharer tokens → one sharer token (C2C §1b,
// rosetta/model/aligner.py TokenAligner.align_tokens).
#include "fuser/align.h"

#include <fmt/format.h>

#include <unordered_map>
#include <utility>

namespace kvb::fuser {

namespace {

// Length in characters, as Python's len(decode(...)) in the reference: a valid UTF-8 sequence
// counts once, any other byte counts once on its own (it decodes to one U+FFFD).
size_t utf8_chars(std::string_view s) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++n) {
    const uint8_t lead = uint8_t(s[i]);
    size_t len = lead < 0x80           ? 1
                 : (lead >> 5) == 0x6  ? 2
                 : (lead >> 4) == 0xE  ? 3
                 : (lead >> 3) == 0x1E ? 4
                                       : 0;
    for (size_t k = 1; k < len; ++k) {
      if (i + k >= s.size() || (uint8_t(s[i + k]) & 0xC0) != 0x80) {
        len = 0;
        break;
      }
    }
    i += len == 0 ? 1 : len;
  }
  return n;
}

// The sharer id for a receiver control/unknown token, or -1 when `id` is an ordinary token.
int32_t special_counterpart(const Tokenizer& receiver, int32_t id, const SharerSpecials& s,
                            int32_t fallback) {
  const Vocab& v = receiver.vocab();
  const std::pair<int32_t, int32_t> roles[] = {
      {v.bos, s.bos}, {v.eos, s.eos}, {v.unk, s.unk}, {v.pad, s.pad}};
  for (const auto& [mine, theirs] : roles) {
    if (id == mine) return theirs >= 0 ? theirs : fallback;
  }
  const TokenType type = v.types[size_t(id)];
  if (type == TokenType::kControl || type == TokenType::kUnknown) return fallback;
  return -1;
}

Status check_ids(std::span<const int32_t> ids, int32_t n_vocab, std::string_view what) {
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= n_vocab) {
      return invalid_argument(
          fmt::format("token alignment: {} {} is id {}, outside [0, {})", what, i, ids[i], n_vocab));
    }
  }
  return ok_status();
}

Status check_specials(const SharerSpecials& s) {
  if (s.n_vocab <= 0) {
    return invalid_argument(fmt::format("token alignment: sharer n_vocab is {} (must be > 0)", s.n_vocab));
  }
  const std::pair<const char*, int32_t> ids[] = {
      {"bos", s.bos}, {"eos", s.eos}, {"unk", s.unk}, {"pad", s.pad}};
  for (const auto& [name, id] : ids) {
    if (id < -1 || id >= s.n_vocab) {
      return invalid_argument(
          fmt::format("token alignment: sharer {} id {} is outside [-1, {})", name, id, s.n_vocab));
    }
  }
  return ok_status();
}

}  // namespace

std::string_view align_strategy_name(AlignStrategy s) {
  switch (s) {
    case AlignStrategy::kFirst:
      return "first";
    case AlignStrategy::kLongest:
      return "longest";
  }
  return "unknown";
}

Result<AlignStrategy> parse_align_strategy(std::string_view name) {
  if (name == "first") return AlignStrategy::kFirst;
  if (name == "longest") return AlignStrategy::kLongest;
  return invalid_argument(fmt::format("unknown alignment strategy '{}' (expected first or longest)", name));
}

std::string token_text(const Tokenizer& tok, int32_t id) {
  if (id < 0 || id >= tok.n_vocab()) return {};
  // decode_token drops the dummy-prefix space only at the start (prev < 0 or prev == BOS), so
  // decode as if after an ordinary token.
  int32_t prev = tok.bos() == 0 ? 1 : 0;
  if (prev >= tok.n_vocab()) prev = -1;
  return tok.decode_token(id, prev);
}

BatchEncoder local_encoder(const Tokenizer& sharer) {
  return [&sharer](std::span<const std::string> texts) -> Result<std::vector<std::vector<int32_t>>> {
    EncodeOptions opt;
    opt.add_bos = false;
    opt.add_eos = false;
    opt.add_space_prefix = false;
    std::vector<std::vector<int32_t>> out;
    out.reserve(texts.size());
    for (const std::string& t : texts) out.push_back(sharer.encode(t, opt));
    return out;
  };
}

PieceTexts local_piece_texts(const Tokenizer& sharer) {
  return [&sharer](std::span<const int32_t> ids) -> Result<std::vector<std::string>> {
    KVB_RETURN_IF_ERROR(check_ids(ids, sharer.n_vocab(), "sharer piece request"));
    std::vector<std::string> out;
    out.reserve(ids.size());
    for (int32_t id : ids) out.push_back(token_text(sharer, id));
    return out;
  };
}

SharerSpecials sharer_specials(const Tokenizer& sharer) {
  const Vocab& v = sharer.vocab();
  return SharerSpecials{v.bos, v.eos, v.unk, v.pad, v.n_vocab()};
}

Result<Alignment> align_tokens(std::span<const int32_t> receiver_ids, const Tokenizer& receiver,
                               const BatchEncoder& sharer_encode, const PieceTexts& sharer_texts,
                               const SharerSpecials& specials, AlignStrategy strategy) {
  if (strategy != AlignStrategy::kFirst && strategy != AlignStrategy::kLongest) {
    return invalid_argument(fmt::format("token alignment: unknown strategy {}", int(strategy)));
  }
  KVB_RETURN_IF_ERROR(check_specials(specials));
  KVB_RETURN_IF_ERROR(check_ids(receiver_ids, receiver.n_vocab(), "receiver token"));
  const int32_t fallback = specials.unk >= 0 ? specials.unk : specials.bos >= 0 ? specials.bos : 0;

  const size_t n = receiver_ids.size();
  Alignment a;
  a.sharer_ids.assign(n, -1);
  a.receiver_texts.reserve(n);

  // Positions still to encode point at their distinct text: text_of[i] indexes `texts`.
  constexpr int32_t kNone = -1;
  std::vector<int32_t> text_of(n, kNone);
  std::vector<std::string> texts;
  std::unordered_map<std::string, int32_t> text_index;
  for (size_t i = 0; i < n; ++i) {
    const int32_t id = receiver_ids[i];
    a.receiver_texts.push_back(token_text(receiver, id));
    if (const int32_t s = special_counterpart(receiver, id, specials, fallback); s >= 0) {
      a.sharer_ids[i] = s;
    } else if (a.receiver_texts[i].empty()) {
      a.sharer_ids[i] = fallback;
      ++a.n_empty;
    } else {
      auto [it, added] = text_index.try_emplace(a.receiver_texts[i], int32_t(texts.size()));
      if (added) texts.push_back(a.receiver_texts[i]);
      text_of[i] = it->second;
    }
  }
  if (texts.empty()) return a;

  auto encoded = sharer_encode(texts);
  if (!encoded.ok()) return encoded.status().with_context("token alignment: sharer encoder");
  const std::vector<std::vector<int32_t>>& lists = *encoded;
  if (lists.size() != texts.size()) {
    return internal_error(fmt::format("token alignment: sharer encoder answered {} id lists for {} texts",
                                      lists.size(), texts.size()));
  }
  for (size_t t = 0; t < lists.size(); ++t) {
    for (int32_t id : lists[t]) {
      if (id < 0 || id >= specials.n_vocab) {
        return invalid_argument(
            fmt::format("token alignment: sharer encoder answered id {} (outside [0, {})) for text {}", id,
                        specials.n_vocab, t));
      }
    }
  }

  // kLongest: the character length of every candidate, fetched in one batch.
  std::unordered_map<int32_t, size_t> length_of;
  if (strategy == AlignStrategy::kLongest) {
    std::vector<int32_t> candidates;
    for (const auto& list : lists) {
      if (list.size() < 2) continue;
      for (int32_t id : list) {
        if (length_of.try_emplace(id, 0).second) candidates.push_back(id);
      }
    }
    if (!candidates.empty()) {
      auto got = sharer_texts(candidates);
      if (!got.ok()) return got.status().with_context("token alignment: sharer piece texts");
      if (got->size() != candidates.size()) {
        return internal_error(fmt::format("token alignment: sharer piece texts answered {} texts for {} ids",
                                          got->size(), candidates.size()));
      }
      for (size_t k = 0; k < candidates.size(); ++k) length_of[candidates[k]] = utf8_chars((*got)[k]);
    }
  }

  for (size_t i = 0; i < n; ++i) {
    if (text_of[i] == kNone) continue;
    const std::vector<int32_t>& list = lists[size_t(text_of[i])];
    if (list.empty()) {
      a.sharer_ids[i] = fallback;
      ++a.n_empty;
      continue;
    }
    int32_t pick = list.front();
    if (list.size() > 1) {
      ++a.n_multi;
      if (strategy == AlignStrategy::kLongest) {
        size_t best = length_of.at(pick);
        for (int32_t id : list) {
          if (length_of.at(id) > best) {
            best = length_of.at(id);
            pick = id;
          }
        }
      }
    }
    a.sharer_ids[i] = pick;
  }
  return a;
}

Result<Alignment> identity_alignment(std::span<const int32_t> receiver_ids, const Tokenizer& receiver) {
  KVB_RETURN_IF_ERROR(check_ids(receiver_ids, receiver.n_vocab(), "receiver token"));
  Alignment a;
  a.sharer_ids.assign(receiver_ids.begin(), receiver_ids.end());
  a.receiver_texts.reserve(receiver_ids.size());
  for (int32_t id : receiver_ids) a.receiver_texts.push_back(token_text(receiver, id));
  return a;
}

bool same_vocabulary(const Tokenizer& a, const Tokenizer& b) {
  if (&a == &b) return true;
  const Vocab& x = a.vocab();
  const Vocab& y = b.vocab();
  return x.model == y.model && x.bos == y.bos && x.eos == y.eos && x.unk == y.unk && x.pad == y.pad &&
         x.pieces == y.pieces && x.scores == y.scores && x.types == y.types && x.merges == y.merges;
}

std::vector<int32_t> reread_context(const Tokenizer& receiver, std::string_view text) {
  return receiver.encode(text, EncodeOptions{true, false});
}

ExampleTokens example_tokens(const Tokenizer& sharer, const Tokenizer& receiver, std::string_view context,
                             std::string_view continuation) {
  ExampleTokens e;
  e.sharer_context = sharer.encode(context, EncodeOptions{true, false});
  e.receiver_context = reread_context(receiver, sharer.decode(e.sharer_context));
  EncodeOptions raw{false, false};
  raw.add_space_prefix = false;
  e.continuation = receiver.encode(continuation, raw);
  return e;
}

bool fit_example(ExampleTokens& e, size_t max_tokens, bool* truncated) {
  const size_t n_ctx = e.receiver_context.size();
  if (n_ctx < 2 || n_ctx + 2 > max_tokens || e.continuation.size() < 2) return false;
  const bool cut = n_ctx + e.continuation.size() > max_tokens;
  if (cut) e.continuation.resize(max_tokens - n_ctx);
  if (truncated != nullptr) *truncated = cut;
  return true;
}

}  // namespace kvb::fuser
