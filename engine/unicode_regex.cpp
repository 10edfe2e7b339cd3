// Byte-level BPE pre-tokenizers, run with PCRE2 (see engine/unicode_regex.h).
//
// Why PCRE2 rather than our own Unicode classifier: the families are *defined* by backtracking
// regexes (Hugging Face runs them with Oniguruma), with alternation order, greedy runs, a
// lookahead `\s+(?!\S)` and Unicode-aware `(?i:...)`. PCRE2 is a backtracking engine with the same
// leftmost-alternative semantics, Unicode property tables (\p{L}, \p{N}; PCRE2 10.42 has Unicode
// 14, as Oniguruma 6.9.8 in HF tokenizers does) and a JIT, so the HF patterns run nearly verbatim
// and fast, and a new family is a new table row rather than a hand-written state machine like
// llama.cpp's unicode_regex_split_custom_*. It reproduces all three families' llama.cpp vectors
// and Hugging Face `tokenizers` on our differential strings (tests/python/test_bpe_vs_hf.py).
//
// One deliberate rewrite: PCRE2's `\s` under UCP is \p{Z} plus \h and \v, which includes U+180E
// MONGOLIAN VOWEL SEPARATOR (no longer a space since Unicode 6.3), while Oniguruma and llama.cpp
// use the Unicode White_Space property. So `\s` / `\S` are spelled out as the White_Space set
// (kWhiteSpace) before compiling; everything else in the pattern is passed through.
//
// Invalid UTF-8 (which PCRE2 in UTF mode cannot match) is matched on a copy where each bad byte is
// U+FFFD, with offsets mapped back, so no byte is ever lost (see PreTokenizer::split).
#include "engine/unicode_regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <fmt/format.h>
#include <string>

#include "engine/unicode.h"

namespace kvb {

namespace {

struct Family {
  std::string_view name;
  std::string_view hf_regex;  // exactly as in tokenizer.json (after JSON unescaping)
  // Hugging Face's Digits(individual_digits) pre-tokenizer first: every \p{N} character is a word of
  // its own, and hf_regex splits the text between them (llama.cpp: {"\p{N}", regex}).
  bool isolate_digits = false;
};

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

constexpr std::array<Family, 4> kFamilies = {{
    {"gpt2", kGpt2Regex},
    // SmolLM, StarCoder, Command-R and others (llama.cpp's "smollm" group): digits, then GPT-2.
    {"smollm", kGpt2Regex, true},
    {"qwen2",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
    {"llama-bpe",
     R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"},
}};

// Unicode White_Space, as the body of a character class.
constexpr std::string_view kWhiteSpace =
    R"(\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

const Family* find_family(std::string_view pre) {
  if (pre.empty()) pre = "gpt2";
  for (const Family& f : kFamilies) {
    if (f.name == pre) return &f;
  }
  return nullptr;
}

// `\s` → [White_Space] (or its items inside a class), `\S` → [^White_Space]. The family patterns
// have no nested classes and no ']' as a class's first character, which this relies on.
std::string to_pcre2(std::string_view re) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < re.size(); ++i) {
    const char c = re[i];
    if (c == '\\' && i + 1 < re.size()) {
      const char d = re[++i];
      if (d == 's') {
        out += in_class ? std::string(kWhiteSpace) : fmt::format("[{}]", kWhiteSpace);
      } else if (d == 'S' && !in_class) {
        out += fmt::format("[^{}]", kWhiteSpace);
      } else {
        out += c;
        out += d;
      }
      continue;
    }
    if (c == '[' && !in_class) in_class = true;
    else if (c == ']' && in_class) in_class = false;
    out += c;
  }
  return out;
}

struct CodeDeleter {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct MatchDataDeleter {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
using Pcre2Code = std::unique_ptr<pcre2_code, CodeDeleter>;
using Pcre2MatchData = std::unique_ptr<pcre2_match_data, MatchDataDeleter>;

// Length of the (well-formed) UTF-8 character at s[off], from its lead byte.
size_t char_length(std::string_view s, size_t off) {
  const uint8_t c = uint8_t(s[off]);
  const size_t n = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  return std::min(n, s.size() - off);
}

class RegexPreTokenizer final : public PreTokenizer {
 public:
  RegexPreTokenizer(Pcre2Code code, bool jit) : code_(std::move(code)), jit_(jit) {}

  void split(std::string_view text, std::vector<std::string_view>& words) const override {
    if (utf8_first_invalid(text) == std::string_view::npos) {
      split_valid(text, [&](size_t b, size_t e) { words.push_back(text.substr(b, e - b)); });
      return;
    }
    // Each byte that does not start a well-formed sequence becomes U+FFFD; orig[i] is the offset
    // in `text` of clean[i] (word boundaries fall on character starts, and on clean.size()).
    std::string clean;
    std::vector<size_t> orig;
    clean.reserve(text.size() + 16);
    orig.reserve(text.size() + 17);
    for (size_t off = 0; off < text.size();) {
      const size_t n = utf8_sequence_length(text, off);
      if (n == 0) {
        clean += "\xEF\xBF\xBD";
        orig.insert(orig.end(), 3, off);
        off += 1;
        continue;
      }
      for (size_t k = 0; k < n; ++k) {
        clean += text[off + k];
        orig.push_back(off + k);
      }
      off += n;
    }
    orig.push_back(text.size());
    split_valid(clean, [&](size_t b, size_t e) {
      words.push_back(text.substr(orig[b], orig[e] - orig[b]));
    });
  }

 private:
  // Calls emit(begin, end) for consecutive words covering `s`, which must be valid UTF-8.
  template <class Emit>
  void split_valid(std::string_view s, Emit&& emit) const {
    if (s.empty()) return;
    const Pcre2MatchData md(pcre2_match_data_create_from_pattern(code_.get(), nullptr));
    if (!md) {  // out of memory: keep the text whole rather than lose it
      emit(0, s.size());
      return;
    }
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
    size_t pos = 0;
    while (pos < s.size()) {
      int rc = PCRE2_ERROR_NOMATCH;
      bool matched = false;
      if (jit_) {
        rc = pcre2_jit_match(code_.get(), subject, s.size(), pos, 0, md.get(), nullptr);
        matched = rc >= 0 || rc == PCRE2_ERROR_NOMATCH;
      }
      if (!matched) {
        // No JIT, or the JIT hit its 32 KiB stack: the interpreter keeps its backtracking state on
        // the heap (PCRE2's default 20 MB heap limit).
        rc = pcre2_match(code_.get(), subject, s.size(), pos, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                         md.get(), nullptr);
      }
      if (rc == PCRE2_ERROR_NOMATCH) {
        emit(pos, s.size());
        return;
      }
      size_t start = pos, end = pos + char_length(s, pos);  // a resource limit: one character
      if (rc >= 0) {
        const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md.get());
        start = ov[0];
        end = ov[1];
        if (start >= s.size()) {
          emit(pos, s.size());
          return;
        }
        if (end <= start) end = start + char_length(s, start);  // (no family matches empty)
      }
      if (start > pos) emit(pos, start);
      emit(start, end);
      pos = end;
    }
  }

  Pcre2Code code_;
  bool jit_;
};

// Two splits in sequence: `first`'s words are each split again by `second`.
class SequencePreTokenizer final : public PreTokenizer {
 public:
  SequencePreTokenizer(std::unique_ptr<RegexPreTokenizer> first, std::unique_ptr<RegexPreTokenizer> second)
      : first_(std::move(first)), second_(std::move(second)) {}

  void split(std::string_view text, std::vector<std::string_view>& words) const override {
    std::vector<std::string_view> pieces;
    first_->split(text, pieces);
    for (std::string_view p : pieces) second_->split(p, words);
  }

 private:
  std::unique_ptr<RegexPreTokenizer> first_, second_;
};

Result<std::unique_ptr<RegexPreTokenizer>> compile(std::string_view name, std::string_view hf_regex) {
  const std::string pattern = to_pcre2(hf_regex);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  Pcre2Code code(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                               PCRE2_UTF | PCRE2_UCP, &err, &err_off, nullptr));
  if (!code) {
    std::array<PCRE2_UCHAR, 256> msg{};
    pcre2_get_error_message(err, msg.data(), msg.size());
    return internal_error(fmt::format("PCRE2 rejected the '{}' pattern at offset {}: {}", name, err_off,
                                      reinterpret_cast<const char*>(msg.data())));
  }
  const bool jit = pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE) == 0;
  return std::make_unique<RegexPreTokenizer>(std::move(code), jit);
}

}  // namespace

bool is_known_pre(std::string_view pre) { return find_family(pre) != nullptr; }

std::optional<std::string_view> pre_from_hf_regex(std::string_view regex) {
  for (const Family& f : kFamilies) {
    if (f.hf_regex == regex && !f.isolate_digits) return f.name;
  }
  return std::nullopt;
}

Result<std::unique_ptr<PreTokenizer>> create_pre_tokenizer(std::string_view pre) {
  const Family* f = find_family(pre);
  if (!f) {
    return invalid_argument(fmt::format(
        "unknown BPE pre-tokenizer '{}' (known: gpt2, smollm, qwen2, llama-bpe)", pre));
  }
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<RegexPreTokenizer> split, compile(f->name, f->hf_regex));
  if (!f->isolate_digits) return std::unique_ptr<PreTokenizer>(std::move(split));
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<RegexPreTokenizer> digits, compile("digits", R"(\p{N})"));
  return std::unique_ptr<PreTokenizer>(new SequencePreTokenizer(std::move(digits), std::move(split)));
}

}  // namespace kvb
