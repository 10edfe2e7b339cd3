// SentencePiece-style tokenizer: scored bigram merges with byte fallback.
//
// Reproduces llama.cpp's llm_tokenizer_spm (SpmFlavor::kLlamaCpp) and llama2.c run.c encode()
// (SpmFlavor::kLlama2c). Both split the text into characters, then repeatedly merge the adjacent
// pair whose concatenation is the highest-scoring piece (leftmost on ties) until no pair is a
// piece; symbols that are not pieces come out as byte tokens. run.c rescans all pairs after every
// merge (O(n²)); like llama.cpp we keep candidate bigrams in a priority queue and drop stale
// entries lazily, which picks the same pair at every step in O(n log n).
#include "engine/tokenizer_spm.h"

#include <algorithm>
#include <array>
#include <fmt/format.h>
#include <functional>
#include <queue>
#include <unordered_map>
#include <vector>

namespace kvb {

std::optional<uint8_t> parse_byte_piece(std::string_view p) {
  if (p.size() != 6 || p[0] != '<' || p[1] != '0' || p[2] != 'x' || p[5] != '>') return std::nullopt;
  auto hex = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
  };
  const int hi = hex(p[3]), lo = hex(p[4]);
  if (hi < 0 || lo < 0) return std::nullopt;
  return uint8_t(hi * 16 + lo);
}

std::string byte_piece(uint8_t b) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  return {'<', '0', 'x', kHex[b >> 4], kHex[b & 15], '>'};
}

namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  for (size_t hit; (hit = s.find(from, pos)) != std::string_view::npos; pos = hit + from.size()) {
    out.append(s.substr(pos, hit - pos));
    out.append(to);
  }
  out.append(s.substr(pos));
  return out;
}

// run.c only merges a pair whose score beats its initial "best" of -1e10.
constexpr float kLlama2cMinScore = -1e10f;
// llama.cpp's decoding of an unknown token: U+2585 "▅".
constexpr std::string_view kUnknownText = "\xE2\x96\x85";

// llama.cpp unicode_len_utf8: the sequence length implied by a lead byte (continuation and
// invalid lead bytes count as 1), cut short at the first byte that is not a continuation byte.
// llama.cpp does not cut short, so on invalid UTF-8 it can swallow the next character, even half
// of an escaped space ("\xC3 " → [C3 E2][96][81], decoded back as "\xC3▁"); cutting keeps byte
// fallback to exactly the malformed bytes and is identical on valid UTF-8.
size_t utf8_len_llamacpp(std::string_view text, size_t off) {
  static constexpr uint8_t kLen[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
  const size_t len = std::min<size_t>(kLen[uint8_t(text[off]) >> 4], text.size() - off);
  size_t n = 1;
  while (n < len && (uint8_t(text[off + n]) & 0xC0) == 0x80) ++n;
  return n;
}

// run.c: a byte plus the continuation bytes after it, at most 4 bytes in all.
size_t utf8_len_llama2c(std::string_view text, size_t off) {
  size_t n = 1;
  while (n < 4 && off + n < text.size() && (uint8_t(text[off + n]) & 0xC0) == 0x80) ++n;
  return n;
}

class SpmTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> build(Vocab vocab) {
    std::unique_ptr<SpmTokenizer> t(new SpmTokenizer(std::move(vocab)));
    KVB_RETURN_IF_ERROR(t->init());
    return std::unique_ptr<Tokenizer>(std::move(t));
  }

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (opt.add_bos && vocab_.add_bos && vocab_.bos >= 0) out.push_back(vocab_.bos);
    // Empty text adds no dummy prefix (llama.cpp has no fragment, run.c checks text[0]).
    if (!text.empty()) {
      std::vector<Fragment> frags;
      split_user_defined(text, frags);
      // llama.cpp: raw text at the start or after a token gets the space prefix.
      bool prev_special = true;
      std::string seg;
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          out.push_back(f.token);
          prev_special = true;
          continue;
        }
        seg.clear();
        const bool prefix = opt.add_space_prefix && vocab_.add_space_prefix && prev_special;
        if (prefix) seg += ' ';
        seg += f.text;
        prev_special = false;
        // kLlama2c keys keep plain spaces, so a literal "▁" in the text stays three bytes.
        encode_segment(llama2c_ ? seg : replace_all(seg, " ", kSpmSpace), prefix, out);
      }
    }
    if (opt.add_eos && vocab_.add_eos && vocab_.eos >= 0) out.push_back(vocab_.eos);
    return out;
  }

  std::string decode_token(int32_t id, int32_t prev) const override {
    if (id < 0 || id >= vocab_.n_vocab()) return {};
    const std::string& s = decoded_[size_t(id)];
    const TokenType type = vocab_.types[size_t(id)];
    const bool at_start = prev < 0 || (vocab_.bos >= 0 && prev == vocab_.bos);
    // Drop the dummy-prefix space (never a byte token's literal 0x20).
    if (at_start && vocab_.add_space_prefix && !s.empty() && s[0] == ' ' &&
        (type == TokenType::kNormal || type == TokenType::kUserDefined)) {
      return s.substr(1);
    }
    return s;
  }

  const Vocab& vocab() const override { return vocab_; }

 private:
  struct Fragment {
    std::string_view text;  // raw text when token < 0
    int32_t token = -1;     // a user-defined token matched in the text
  };
  // A run of the segment's bytes; merged-away symbols have n == 0. prev/next link live symbols.
  struct Symbol {
    size_t start = 0, n = 0;
    int64_t prev = -1, next = -1;
    bool mergeable = true;  // kLlama2c: false for characters that are not pieces (byte fallback)
  };
  struct Bigram {
    float score;
    int64_t left, right;
    size_t size;  // bytes of the merged text; a mismatch marks the entry stale
  };
  // Highest score first, then leftmost (llama.cpp llm_bigram_spm::comparator).
  struct BigramLess {
    bool operator()(const Bigram& l, const Bigram& r) const {
      return l.score < r.score || (l.score == r.score && l.left > r.left);
    }
  };

  explicit SpmTokenizer(Vocab vocab)
      : vocab_(std::move(vocab)), llama2c_(vocab_.spm_flavor == Vocab::SpmFlavor::kLlama2c) {}

  Status init() {
    const size_t n = vocab_.pieces.size();
    piece_to_id_.reserve(n);
    decoded_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const std::string& p = vocab_.pieces[i];
      // Later duplicates win, as in llama.cpp's token_to_id; empty pieces can never match.
      if (!p.empty()) {
        std::string key = llama2c_ ? replace_all(p, kSpmSpace, " ") : p;
        max_key_len_ = std::max(max_key_len_, key.size());
        piece_to_id_.insert_or_assign(std::move(key), int32_t(i));
      }
      switch (vocab_.types[i]) {
        case TokenType::kNormal:
        case TokenType::kUserDefined:
          decoded_[i] = replace_all(p, kSpmSpace, " ");
          break;
        case TokenType::kByte: {
          auto b = parse_byte_piece(p);
          if (!b) {
            return invalid_argument(fmt::format(
                "tokenizer: token {} is a byte token but its piece '{}' is not <0xAB>", i, p));
          }
          decoded_[i] = std::string(1, char(*b));
          break;
        }
        case TokenType::kUnknown:
          decoded_[i] = kUnknownText;
          break;
        case TokenType::kControl:
        case TokenType::kUnused:
        case TokenType::kUndefined:
          break;  // decode to nothing, as llama.cpp
      }
      if (!llama2c_ && vocab_.types[i] == TokenType::kUserDefined && !p.empty()) {
        user_defined_.push_back(int32_t(i));
      }
    }
    // llama.cpp splits out the longest user-defined texts first.
    std::stable_sort(user_defined_.begin(), user_defined_.end(), [&](int32_t a, int32_t b) {
      return vocab_.pieces[size_t(a)].size() > vocab_.pieces[size_t(b)].size();
    });
    for (int b = 0; b < 256; ++b) {
      int32_t id = lookup(byte_piece(uint8_t(b)));
      if (id < 0) id = lookup(std::string(1, char(b)));  // llama.cpp: fall back to the raw byte
      if (id < 0) id = vocab_.unk;
      if (id < 0) {
        return invalid_argument(fmt::format(
            "tokenizer: byte 0x{:02X} has no <0x{:02X}> token and the vocab has no unk token", b, b));
      }
      byte_to_id_[size_t(b)] = id;
    }
    return ok_status();
  }

  int32_t lookup(std::string_view key) const {
    auto it = piece_to_id_.find(key);
    return it == piece_to_id_.end() ? -1 : it->second;
  }

  // llama.cpp tokenizer_st_partition with parse_special = false: user-defined token texts are cut
  // out of the raw text before tokenizing (longest first, leftmost matches). No-op without them.
  void split_user_defined(std::string_view text, std::vector<Fragment>& frags) const {
    frags.assign(1, Fragment{text, -1});
    std::vector<Fragment> next;
    for (int32_t id : user_defined_) {
      const std::string& tok = vocab_.pieces[size_t(id)];
      next.clear();
      for (const Fragment& f : frags) {
        if (f.token >= 0) {
          next.push_back(f);
          continue;
        }
        std::string_view rest = f.text;
        for (size_t hit; (hit = rest.find(tok)) != std::string_view::npos;) {
          if (hit > 0) next.push_back({rest.substr(0, hit), -1});
          next.push_back({{}, id});
          rest.remove_prefix(hit + tok.size());
        }
        if (!rest.empty()) next.push_back({rest, -1});
      }
      frags.swap(next);
    }
  }

  // Tokenizes one run of text (for kLlamaCpp already space-escaped) into `out`. `prefixed`: the
  // run starts with the dummy-prefix space, which run.c looks up as a token of its own.
  void encode_segment(std::string_view text, bool prefixed, std::vector<int32_t>& out) const {
    std::vector<Symbol> sym;
    sym.reserve(text.size());
    for (size_t off = 0; off < text.size();) {
      Symbol s;
      s.start = off;
      if (!llama2c_) s.n = utf8_len_llamacpp(text, off);
      else if (off == 0 && prefixed) s.n = 1;
      else s.n = utf8_len_llama2c(text, off);
      // run.c emits a character that is not a piece as byte tokens, which never merge again.
      if (llama2c_) s.mergeable = lookup(text.substr(off, s.n)) >= 0;
      s.prev = int64_t(sym.size()) - 1;
      off += s.n;
      s.next = off == text.size() ? -1 : int64_t(sym.size()) + 1;
      sym.push_back(s);
    }
    if (sym.empty()) return;

    std::vector<Bigram> storage;
    storage.reserve(sym.size());
    std::priority_queue<Bigram, std::vector<Bigram>, BigramLess> queue(BigramLess{},
                                                                       std::move(storage));
    auto try_add = [&](int64_t left, int64_t right) {
      if (left < 0 || right < 0) return;
      const Symbol& l = sym[size_t(left)];
      const Symbol& r = sym[size_t(right)];
      if (!l.mergeable || !r.mergeable) return;
      const size_t size = l.n + r.n;
      if (size > max_key_len_) return;
      const int32_t id = lookup(text.substr(l.start, size));  // adjacent symbols are contiguous
      if (id < 0) return;
      const float score = vocab_.scores[size_t(id)];
      if (llama2c_ && !(score > kLlama2cMinScore)) return;
      queue.push({score, left, right, size});
    };
    for (size_t i = 1; i < sym.size(); ++i) try_add(int64_t(i) - 1, int64_t(i));

    while (!queue.empty()) {
      const Bigram b = queue.top();
      queue.pop();
      Symbol& l = sym[size_t(b.left)];
      Symbol& r = sym[size_t(b.right)];
      if (l.n == 0 || r.n == 0 || l.n + r.n != b.size) continue;  // stale
      l.n += r.n;
      r.n = 0;
      l.next = r.next;
      if (r.next >= 0) sym[size_t(r.next)].prev = b.left;
      try_add(l.prev, b.left);
      try_add(b.left, l.next);
    }

    // Every merged symbol is a piece; only single characters can need byte fallback.
    for (int64_t i = 0; i != -1; i = sym[size_t(i)].next) {
      const std::string_view s = text.substr(sym[size_t(i)].start, sym[size_t(i)].n);
      const int32_t id = lookup(s);
      if (id >= 0) {
        out.push_back(id);
      } else {
        for (char c : s) out.push_back(byte_to_id_[uint8_t(c)]);
      }
    }
  }

  Vocab vocab_;
  bool llama2c_ = false;
  PieceMap piece_to_id_;  // match key → id; keys are the pieces, with "▁" → " " for kLlama2c
  size_t max_key_len_ = 0;
  std::array<int32_t, 256> byte_to_id_{};
  std::vector<std::string> decoded_;   // [n_vocab] the bytes each token decodes to
  std::vector<int32_t> user_defined_;  // kLlamaCpp: user-defined token ids, longest piece first
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> create_spm_tokenizer(Vocab vocab) {
  return SpmTokenizer::build(std::move(vocab));
}

}  // namespace kvb
