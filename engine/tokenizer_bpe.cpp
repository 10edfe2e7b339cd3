// Byte-level BPE tokenizer (see engine/tokenizer_bpe.h).
//
// Merging works on token ids, as Hugging Face's BPE model does: each merge "left right" becomes
// (id(left), id(right)) → (rank, id(left + right)) in a hash map, a word starts as one byte token
// per byte, and a min-heap of candidate pairs (rank, then position) picks the next merge; entries
// made stale by an earlier merge are dropped when popped. That is O(w log w) per word of w bytes,
// so even a 100 kB "word" (a run of letters with no space) stays fast, and no cache is needed:
// the tokenizer holds no mutable state, so concurrent encode() calls need no locking.
//
// Duplicates: a piece spelled twice resolves to its last id (llama.cpp's token_to_id); a pair
// merged twice keeps its first (lowest) rank (llama.cpp's bpe_ranks.emplace). Real vocabs have
// neither.
#include "engine/tokenizer_bpe.h"

#include <algorithm>
#include <array>
#include <fmt/format.h>
#include <functional>
#include <unordered_map>
#include <vector>

#include "engine/tokenizer_spm.h"
#include "engine/unicode.h"
#include "engine/unicode_regex.h"

namespace kvb {

namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
using PieceMap = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

uint64_t pair_key(int32_t left, int32_t right) {
  return uint64_t(uint32_t(left)) << 32 | uint32_t(right);
}
struct PairHash {
  size_t operator()(uint64_t k) const noexcept {  // splitmix64 finalizer: ids are small and dense
    k ^= k >> 30;
    k *= 0xBF58476D1CE4E5B9ull;
    k ^= k >> 27;
    k *= 0x94D049BB133111EBull;
    return size_t(k ^ (k >> 31));
  }
};
struct Merge {
  int32_t rank;
  int32_t id;  // the merged piece
};

// Error messages quote vocab text, which a malformed file can make arbitrarily long.
std::string shown(std::string_view s) {
  constexpr size_t kMax = 80;
  return s.size() <= kMax ? fmt::format("'{}'", s) : fmt::format("'{}...'", s.substr(0, kMax));
}

// Added-token texts in a byte trie, for "the longest token starting here".
class AddedTokens {
 public:
  bool empty() const { return nodes_.size() == 1; }

  void add(std::string_view text, int32_t id, bool control) {
    if (text.empty()) return;  // would match everywhere
    int32_t node = 0;
    for (char c : text) {
      const int32_t next = child(node, uint8_t(c));
      if (next >= 0) {
        node = next;
        continue;
      }
      nodes_.push_back({});
      nodes_[size_t(node)].next.emplace_back(uint8_t(c), int32_t(nodes_.size() - 1));
      node = int32_t(nodes_.size() - 1);
    }
    nodes_[size_t(node)].id = id;  // a later token with the same text wins
    nodes_[size_t(node)].control = control;
    first_[uint8_t(text[0])] = true;
  }

  // The longest token whose text starts at text[pos] (control tokens only when `control_ok`);
  // its length in `len`. -1 when none.
  int32_t match(std::string_view text, size_t pos, bool control_ok, size_t& len) const {
    if (!first_[uint8_t(text[pos])]) return -1;
    int32_t best = -1, node = 0;
    for (size_t i = pos; i < text.size(); ++i) {
      node = child(node, uint8_t(text[i]));
      if (node < 0) break;
      const Node& n = nodes_[size_t(node)];
      if (n.id >= 0 && (control_ok || !n.control)) {
        best = n.id;
        len = i + 1 - pos;
      }
    }
    return best;
  }

 private:
  struct Node {
    std::vector<std::pair<uint8_t, int32_t>> next;
    int32_t id = -1;
    bool control = false;
  };

  int32_t child(int32_t node, uint8_t c) const {
    for (const auto& [b, n] : nodes_[size_t(node)].next) {
      if (b == c) return n;
    }
    return -1;
  }

  std::vector<Node> nodes_{1};  // [0] is the root
  std::array<bool, 256> first_{};
};

class BpeTokenizer final : public Tokenizer {
 public:
  static Result<std::unique_ptr<Tokenizer>> build(Vocab vocab) {
    std::unique_ptr<BpeTokenizer> t(new BpeTokenizer(std::move(vocab)));
    KVB_RETURN_IF_ERROR(t->init());
    return std::unique_ptr<Tokenizer>(std::move(t));
  }

  std::vector<int32_t> encode(std::string_view text, const EncodeOptions& opt) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (opt.add_bos && vocab_.add_bos && vocab_.bos >= 0) out.push_back(vocab_.bos);
    Workspace ws;
    size_t run = 0;  // start of the plain text not yet encoded
    if (!added_.empty()) {
      for (size_t pos = 0; pos < text.size();) {
        size_t len = 0;
        const int32_t id = added_.match(text, pos, opt.parse_special, len);
        if (id < 0) {
          ++pos;
          continue;
        }
        encode_plain(text.substr(run, pos - run), ws, out);
        out.push_back(id);
        pos += len;
        run = pos;
      }
    }
    encode_plain(text.substr(run), ws, out);
    if (opt.add_eos && vocab_.add_eos && vocab_.eos >= 0) out.push_back(vocab_.eos);
    return out;
  }

  std::string decode_token(int32_t id, int32_t /*prev: BPE has no dummy prefix*/) const override {
    if (id < 0 || id >= vocab_.n_vocab()) return {};
    return decoded_[size_t(id)];
  }

  const Vocab& vocab() const override { return vocab_; }

 private:
  // A word's symbols: a token id (-1 once merged into its left neighbour), linked to live ones.
  struct Symbol {
    int32_t id, prev, next;
  };
  struct Bigram {
    int32_t rank;
    int32_t left, right;        // symbol indices
    int32_t left_id, right_id;  // the pair when pushed; a mismatch on pop marks the entry stale
    int32_t merged;
  };
  // std heap functions keep the "largest" on top: make that the lowest rank, then leftmost.
  struct BigramAfter {
    bool operator()(const Bigram& a, const Bigram& b) const {
      return a.rank > b.rank || (a.rank == b.rank && a.left > b.left);
    }
  };
  // Scratch buffers reused across the words of one encode() call.
  struct Workspace {
    std::vector<std::string_view> words;
    std::vector<Symbol> sym;
    std::vector<Bigram> heap;
    std::string spelling;
  };

  explicit BpeTokenizer(Vocab vocab) : vocab_(std::move(vocab)) {}

  Status init() {
    auto pre = create_pre_tokenizer(vocab_.pre);
    if (!pre.ok()) return pre.status().with_context("tokenizer");
    pre_ = std::move(pre).value();
    const size_t n = vocab_.pieces.size();
    piece_to_id_.reserve(n);
    decoded_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      const std::string& p = vocab_.pieces[i];
      if (!p.empty()) piece_to_id_.insert_or_assign(p, int32_t(i));
      switch (vocab_.types[i]) {
        case TokenType::kNormal:
          decoded_[i] = byte_level_decode(p).value_or(p);
          break;
        case TokenType::kUserDefined:
          decoded_[i] = p;
          if (!p.empty()) added_.add(p, int32_t(i), /*control=*/false);
          break;
        case TokenType::kControl:
          if (!p.empty()) added_.add(p, int32_t(i), /*control=*/true);
          break;  // decodes to nothing, as llama.cpp
        case TokenType::kByte: {
          auto b = parse_byte_piece(p);
          if (!b) {
            return invalid_argument(fmt::format(
                "tokenizer: token {} is a byte token but its piece {} is not <0xAB>", i, shown(p)));
          }
          decoded_[i] = std::string(1, char(*b));
          break;
        }
        case TokenType::kUnknown:
        case TokenType::kUnused:
        case TokenType::kUndefined:
          break;
      }
    }
    for (int b = 0; b < 256; ++b) {
      int32_t id = lookup(byte_to_unicode(uint8_t(b)));
      if (id < 0) id = vocab_.unk;
      if (id < 0) {
        return invalid_argument(fmt::format(
            "tokenizer: byte 0x{:02X} has no piece '{}' and the vocab has no unk token", b,
            byte_to_unicode(uint8_t(b))));
      }
      byte_to_id_[size_t(b)] = id;
    }
    merges_.reserve(vocab_.merges.size());
    for (size_t r = 0; r < vocab_.merges.size(); ++r) {
      const std::string_view m = vocab_.merges[r];
      const size_t sp = m.find(' ');
      if (sp == std::string_view::npos || sp == 0 || sp + 1 == m.size() ||
          m.find(' ', sp + 1) != std::string_view::npos) {
        return invalid_argument(
            fmt::format("tokenizer: merge {} {} is not \"left right\"", r, shown(m)));
      }
      const std::string_view left = m.substr(0, sp), right = m.substr(sp + 1);
      const std::string merged = std::string(left).append(right);
      const int32_t l = lookup(left), rt = lookup(right), id = lookup(merged);
      for (const auto& [piece, pid] : {std::pair{left, l}, std::pair{right, rt},
                                       std::pair{std::string_view(merged), id}}) {
        if (pid < 0) {
          return invalid_argument(fmt::format("tokenizer: merge {} {} needs piece {}, which is not in the vocab",
                                              r, shown(m), shown(piece)));
        }
      }
      merges_.emplace(pair_key(l, rt), Merge{int32_t(r), id});
    }
    return ok_status();
  }

  int32_t lookup(std::string_view piece) const {
    auto it = piece_to_id_.find(piece);
    return it == piece_to_id_.end() ? -1 : it->second;
  }

  // Text with no added tokens in it: split into words, then merge each.
  void encode_plain(std::string_view text, Workspace& ws, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    ws.words.clear();
    pre_->split(text, ws.words);
    for (std::string_view w : ws.words) encode_word(w, ws, out);
  }

  void encode_word(std::string_view word, Workspace& ws, std::vector<int32_t>& out) const {
    if (word.empty()) return;
    if (word.size() == 1) {
      out.push_back(byte_to_id_[uint8_t(word[0])]);
      return;
    }
    if (vocab_.ignore_merges) {
      ws.spelling.clear();
      byte_level_encode(word, ws.spelling);
      const int32_t id = lookup(ws.spelling);
      if (id >= 0) {
        out.push_back(id);
        return;
      }
    }
    std::vector<Symbol>& sym = ws.sym;
    sym.resize(word.size());
    const auto n = int32_t(word.size());
    for (int32_t i = 0; i < n; ++i) {
      sym[size_t(i)] = {byte_to_id_[uint8_t(word[size_t(i)])], i - 1, i + 1 < n ? i + 1 : -1};
    }
    std::vector<Bigram>& heap = ws.heap;
    heap.clear();
    auto try_add = [&](int32_t left) {
      if (left < 0) return;
      const int32_t right = sym[size_t(left)].next;
      if (right < 0) return;
      const int32_t a = sym[size_t(left)].id, b = sym[size_t(right)].id;
      auto it = merges_.find(pair_key(a, b));
      if (it == merges_.end()) return;
      heap.push_back({it->second.rank, left, right, a, b, it->second.id});
      std::push_heap(heap.begin(), heap.end(), BigramAfter{});
    };
    for (int32_t i = 0; i + 1 < n; ++i) try_add(i);
    while (!heap.empty()) {
      std::pop_heap(heap.begin(), heap.end(), BigramAfter{});
      const Bigram g = heap.back();
      heap.pop_back();
      Symbol& l = sym[size_t(g.left)];
      Symbol& r = sym[size_t(g.right)];
      if (l.id != g.left_id || l.next != g.right || r.id != g.right_id) continue;  // stale
      l.id = g.merged;
      l.next = r.next;
      if (r.next >= 0) sym[size_t(r.next)].prev = g.left;
      r.id = -1;
      try_add(l.prev);
      try_add(g.left);
    }
    for (int32_t i = 0; i >= 0; i = sym[size_t(i)].next) out.push_back(sym[size_t(i)].id);
  }

  Vocab vocab_;
  std::unique_ptr<PreTokenizer> pre_;
  PieceMap piece_to_id_;  // piece (byte-level spelling, or an added token's text) → id
  std::unordered_map<uint64_t, Merge, PairHash> merges_;  // pair_key(left, right) → merge
  std::array<int32_t, 256> byte_to_id_{};                 // the one-byte tokens words start from
  std::vector<std::string> decoded_;                      // [n_vocab] bytes each token decodes to
  AddedTokens added_;                                     // control and user-defined token texts
};

}  // namespace

Result<std::unique_ptr<Tokenizer>> create_bpe_tokenizer(Vocab vocab) {
  return BpeTokenizer::build(std::move(vocab));
}

}  // namespace kvb
