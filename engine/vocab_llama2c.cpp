// llama2.c tokenizer.bin → Vocab.
//
// Layout (little-endian): int32 max_token_length, then per token {float32 score, int32 len,
// len bytes}. Pieces spell a space as ' ' and BOS/EOS as "\n<s>\n" / "\n</s>\n" (llama2.c's
// tokenizer.py export); we convert both to GGUF conventions.
#include <bit>
#include <cmath>
#include <cstring>
#include <span>
#include <fmt/format.h>

#include "engine/mmap_file.h"
#include "engine/tokenizer_spm.h"
#include "engine/vocab_loaders.h"

static_assert(std::endian::native == std::endian::little, "tokenizer.bin is read as little-endian");

namespace kvb {

namespace {

// Bounds-checked cursor over the file bytes.
class Reader {
 public:
  explicit Reader(std::span<const uint8_t> b) : b_(b) {}
  size_t remaining() const { return b_.size() - off_; }
  size_t offset() const { return off_; }
  bool read_i32(int32_t& v) { return read_raw(&v, sizeof v); }
  bool read_f32(float& v) { return read_raw(&v, sizeof v); }
  bool read_bytes(std::string& s, size_t n) {
    if (n > remaining()) return false;
    s.assign(reinterpret_cast<const char*>(b_.data() + off_), n);
    off_ += n;
    return true;
  }

 private:
  bool read_raw(void* dst, size_t n) {
    if (n > remaining()) return false;
    std::memcpy(dst, b_.data() + off_, n);
    off_ += n;
    return true;
  }
  std::span<const uint8_t> b_;
  size_t off_ = 0;
};

std::string replace_spaces(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (c == ' ') out += kSpmSpace;
    else out += c;
  }
  return out;
}

}  // namespace

Result<Vocab> read_llama2c_vocab(const std::string& path, int32_t n_vocab) {
  auto bad = [&](const std::string& what) {
    return invalid_argument(fmt::format("llama2.c tokenizer {}: {}", path, what));
  };
  if (n_vocab == 0) return bad("expected vocab size is 0");
  KVB_ASSIGN_OR_RETURN(MappedFile file, MappedFile::open(path));
  Reader r(file.bytes());

  int32_t max_len = 0;
  if (!r.read_i32(max_len)) {
    return bad(fmt::format("file is {} bytes, too short for a header", file.size()));
  }
  if (max_len <= 0) return bad(fmt::format("max_token_length is {}", max_len));
  // Each token needs at least 8 bytes, which bounds the count before we allocate for it.
  if (n_vocab > 0 && size_t(n_vocab) > r.remaining() / 8) {
    return bad(fmt::format(
        "truncated: {} tokens need at least {} bytes after the header, the file has {}", n_vocab,
        size_t(n_vocab) * 8, r.remaining()));
  }

  Vocab v;
  v.model = Vocab::Model::kSpm;
  v.spm_flavor = Vocab::SpmFlavor::kLlama2c;
  if (n_vocab > 0) {
    v.pieces.reserve(size_t(n_vocab));
    v.scores.reserve(size_t(n_vocab));
  }
  std::string raw;
  for (int64_t i = 0; n_vocab < 0 ? r.remaining() > 0 : i < n_vocab; ++i) {
    if (i >= INT32_MAX) return bad("too many tokens");
    float score = 0.f;
    int32_t len = 0;
    const size_t at = r.offset();
    if (!r.read_f32(score) || !r.read_i32(len)) {
      return bad(fmt::format(
          "truncated at token {} (offset {}): no room for its score and length", i, at));
    }
    if (len < 0 || len > max_len) {
      return bad(fmt::format("token {} (offset {}) has length {}, outside [0, max_token_length {}]",
                             i, at, len, max_len));
    }
    if (!r.read_bytes(raw, size_t(len))) {
      return bad(fmt::format("truncated at token {} (offset {}): {} bytes of text, {} left", i,
                             at, len, r.remaining()));
    }
    if (std::isnan(score)) return bad(fmt::format("token {} has a NaN score", i));
    v.scores.push_back(score);
    v.pieces.push_back(replace_spaces(raw));
  }
  if (v.pieces.size() < 3) {
    return bad(fmt::format("has {} tokens; unk, bos and eos need 3", v.pieces.size()));
  }

  // run.c hard-codes unk 0, bos 1, eos 2; give them GGUF spellings where the export used its own.
  v.unk = 0;
  v.bos = 1;
  v.eos = 2;
  if (v.pieces[1] == "\n<s>\n") v.pieces[1] = "<s>";
  if (v.pieces[2] == "\n</s>\n") v.pieces[2] = "</s>";
  v.types.assign(v.pieces.size(), TokenType::kNormal);
  v.types[0] = TokenType::kUnknown;
  v.types[1] = TokenType::kControl;
  v.types[2] = TokenType::kControl;
  for (size_t i = 3; i < v.pieces.size(); ++i) {
    if (parse_byte_piece(v.pieces[i])) v.types[i] = TokenType::kByte;
  }
  v.add_bos = true;
  v.add_eos = false;
  v.add_space_prefix = true;
  return v;
}

}  // namespace kvb
