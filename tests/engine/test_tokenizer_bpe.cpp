// Byte-level BPE tests: llama.cpp's golden vectors for GPT-2 (GGUF), Qwen2 (vocab.json +
// merges.txt + Qwen3's tokenizer_config.json) and Llama 3 (encoder.json + vocab.bpe); the merge
// loop against a literal O(n²) transcription of "lowest rank, leftmost first"; the pre-tokenizer
// regexes; added/special tokens; decoding; the loaders' errors on malformed files; speed.
// tests/python/test_bpe_vs_hf.py compares the same files against Hugging Face `tokenizers`.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <thread>
#include <tuple>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/unicode.h"
#include "engine/unicode_regex.h"
#include "engine/vocab_loaders.h"
#include "support/test_support.h"
#include "support/vocab_vectors.h"
#include "support/model_checks.h"

namespace kvb {
namespace {

namespace fs = std::filesystem;
using Ids = std::vector<int32_t>;
using test::id_of;
using test::printable;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

Vocab gguf_vocab(const std::string& path) {
  auto f = GgufFile::open(path);
  INFO(f.status().to_string());
  REQUIRE(f.ok());
  auto v = read_gguf_vocab(**f);
  INFO(v.status().to_string());
  REQUIRE(v.ok());
  return std::move(v).value();
}

void write_text(const std::string& path, std::string_view text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(text.data(), std::streamsize(text.size()));
  REQUIRE(f.good());
}

// A fresh directory under the test's temp dir.
std::string fresh_dir(const std::string& name) {
  const std::string d = test::temp_dir() + "/" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// The Qwen2 files under the standard names read_hf_vocab looks for (the models folder keeps the
// Qwen3 config as qwen3_tokenizer_config.json).
std::string qwen3_dir() {
  static const std::string dir = [] {
    const std::string d = fresh_dir("qwen3");
    const std::string src = test::model_path("tokenizers/qwen2/");
    for (const auto& [from, to] : {std::pair{"vocab.json", "vocab.json"}, {"merges.txt", "merges.txt"},
                                   {"qwen3_tokenizer_config.json", "tokenizer_config.json"}}) {
      std::error_code ec;
      fs::create_symlink(fs::absolute(src + from), d + "/" + to, ec);
      if (ec) fs::copy_file(src + from, d + "/" + to);
    }
    return d;
  }();
  return dir;
}

const Tokenizer& gpt2() {
  static const std::unique_ptr<Tokenizer> t =
      test::make_tokenizer(gguf_vocab(test::model_path("tokenizer-tests/ggml-vocab-gpt-2.gguf")));
  return *t;
}
const Tokenizer& qwen3() {
  static const std::unique_ptr<Tokenizer> t = test::make_tokenizer(read_hf_vocab(qwen3_dir()));
  return *t;
}
const Tokenizer& llama3() {
  static const std::unique_ptr<Tokenizer> t =
      test::make_tokenizer(read_hf_vocab(test::model_path("tokenizers/llama3"), "llama-bpe"));
  return *t;
}

struct Named {
  const char* name;
  const Tokenizer* tok;
};
std::vector<Named> all_bpe() { return {{"gpt-2", &gpt2()}, {"qwen3", &qwen3()}, {"llama3", &llama3()}}; }

EncodeOptions plain() {  // llama.cpp's test-tokenizer-0: no BOS, no special parsing
  EncodeOptions o;
  o.add_bos = false;
  return o;
}
EncodeOptions special() {
  EncodeOptions o = plain();
  o.parse_special = true;
  return o;
}

std::string spelled(std::string_view bytes) {
  std::string s;
  byte_level_encode(bytes, s);
  return s;
}

// A minimal byte-level vocab: the 256 byte pieces (ids 0..255 in byte order), then `extra` pieces,
// with `merges` in rank order.
Vocab tiny_vocab(const std::vector<std::string>& extra, const std::vector<std::string>& merges) {
  Vocab v;
  v.model = Vocab::Model::kBpe;
  v.pre = "gpt2";
  v.add_bos = false;
  v.add_space_prefix = false;
  for (int b = 0; b < 256; ++b) v.pieces.emplace_back(byte_to_unicode(uint8_t(b)));
  for (const auto& p : extra) v.pieces.push_back(p);
  v.types.assign(v.pieces.size(), TokenType::kNormal);
  v.scores.assign(v.pieces.size(), 0.f);
  v.merges = merges;
  return v;
}

// Deterministic mixed text: scripts, spaces and newlines, digits, punctuation, emoji, contractions,
// special-token look-alikes, and (when `invalid`) bytes that are not valid UTF-8.
std::string random_text(std::mt19937& rng, size_t n_parts, bool invalid) {
  static const std::vector<std::string> kParts = {
      "Hello", "world", "the", " the", "ing", "I'm", "you'LL", "it's", "DON'T", " ", "  ", "   ", "\n",
      "\n\n", "\t", "\r\n", ".", ",", "!", "?", "...", "\"", "'", "(", ")", "{", "}", "<", ">", "|", "-",
      "_", "=", "0", "12", "345", "6789", "3.14159", "1,000,000", "é", "ü", "ß", "Ä", "Việt", "日本語",
      "中文", "한국어", "Привет", "мир", "العربية", "עברית", "हिन्दी", "ไทย", "ελληνικά", "🦙", "😀",
      "👍🏽", "🇺🇸", "👨‍👩‍👧", "∑", "€", "\xC2\xA0", "\u3000", "\u2028", "\u180E", "<|im_start|>",
      "<|endoftext|>", "<think>", "<|begin_of_text|>", "def f(x):", "    return x", "//", "#include"};
  static const std::vector<std::string> kInvalid = {"\xFF", "\xC3", "\x80", "\xE2\x82", "\xF0\x9F",
                                                    "\xED\xA0\x80", "\xC0\xAF", "\xFE", "\xF4\x90\x80\x80"};
  std::string s;
  for (size_t i = 0; i < n_parts; ++i) {
    if (invalid && rng() % 8 == 0) {
      s += kInvalid[rng() % kInvalid.size()];
    } else {
      s += kParts[rng() % kParts.size()];
    }
  }
  return s;
}

// ---------------------------------------------------------------------------------------------
// Golden vectors: llama.cpp's test-tokenizer-0 outputs
// ---------------------------------------------------------------------------------------------

void check_vectors(const char* name, const Tokenizer& t) {
  const auto cases = test::load_vocab_vectors(name);
  REQUIRE(cases.size() == 46);
  int passed = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    DYNAMIC_SECTION("case " << i << ": \"" << printable(cases[i].text) << "\"") {
      const Ids got = t.encode(cases[i].text, plain());
      CHECK(got == cases[i].ids);
      CHECK(t.decode(got) == cases[i].text);
    }
    passed += t.encode(cases[i].text, plain()) == cases[i].ids;
  }
  CHECK(passed == 46);
}

TEST_CASE("bpe: llama.cpp vectors for GPT-2 (ggml-vocab-gpt-2.gguf)", "[tokenizer][bpe]") {
  check_vectors("ggml-vocab-gpt-2.gguf", gpt2());
}

TEST_CASE("bpe: llama.cpp vectors for Qwen2 (vocab.json + merges.txt)", "[tokenizer][bpe]") {
  check_vectors("ggml-vocab-qwen2.gguf", qwen3());
}

TEST_CASE("bpe: llama.cpp vectors for Llama 3 (encoder.json + vocab.bpe)", "[tokenizer][bpe]") {
  check_vectors("ggml-vocab-llama-bpe.gguf", llama3());
}

// ---------------------------------------------------------------------------------------------
// What the loaders found
// ---------------------------------------------------------------------------------------------

TEST_CASE("bpe: vocab metadata of the three tokenizers", "[tokenizer][bpe]") {
  const Vocab& g = gpt2().vocab();
  CHECK(g.model == Vocab::Model::kBpe);
  CHECK(g.pre == "gpt2");
  CHECK(!g.ignore_merges);
  CHECK(g.n_vocab() == 50257);
  CHECK(g.types[50256] == TokenType::kControl);
  CHECK(g.pieces[50256] == "<|endoftext|>");

  const Vocab& q = qwen3().vocab();
  CHECK(q.pre == "qwen2");
  CHECK(!q.ignore_merges);
  CHECK(q.n_vocab() == 151669);
  CHECK(q.merges.size() == 151387);
  CHECK(q.bos == -1);
  CHECK(q.eos == 151645);  // <|im_end|>
  CHECK(q.pad == 151643);  // <|endoftext|>
  CHECK(!q.add_bos);
  CHECK(q.pieces[151644] == "<|im_start|>");
  CHECK(q.types[151644] == TokenType::kControl);
  CHECK(q.pieces[151667] == "<think>");
  CHECK(q.types[151667] == TokenType::kUserDefined);  // "special": false in the config
  CHECK(q.chat_template.find("<|im_start|>") != std::string::npos);

  const Vocab& l = llama3().vocab();
  CHECK(l.pre == "llama-bpe");
  CHECK(l.ignore_merges);
  CHECK(l.n_vocab() == 128256);
  CHECK(l.merges.size() == 280147);
  CHECK(l.bos == 128000);
  CHECK(l.eos == 128009);
  CHECK(l.add_bos);
  CHECK(l.pieces[128000] == "<|begin_of_text|>");
  CHECK(l.pieces[128006] == "<|start_header_id|>");
  CHECK(l.pieces[128255] == "<|reserved_special_token_247|>");
  CHECK(l.types[128255] == TokenType::kControl);
  CHECK(l.chat_template.empty());

  // Without the hint the Llama 3 files say nothing about their pre-tokenizer.
  auto r = read_hf_vocab(test::model_path("tokenizers/llama3"));
  REQUIRE(!r.ok());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  // The hint alone adds no specials to a vocab of another size.
  auto q2 = read_hf_vocab(test::model_path("tokenizers/qwen2"), "qwen2");
  REQUIRE(q2.ok());
  CHECK(q2->n_vocab() == 151643);
}

// ---------------------------------------------------------------------------------------------
// Pre-tokenizer regexes
// ---------------------------------------------------------------------------------------------

std::vector<std::string> words(std::string_view pre, std::string_view text) {
  auto p = create_pre_tokenizer(pre);
  REQUIRE(p.ok());
  std::vector<std::string_view> w;
  (*p)->split(text, w);
  std::string joined;
  for (auto s : w) joined += s;
  CHECK(joined == text);
  return {w.begin(), w.end()};
}

using Words = std::vector<std::string>;

TEST_CASE("bpe: pre-tokenizer splits", "[tokenizer][bpe]") {
  CHECK(words("gpt2", "Hello world") == Words{"Hello", " world"});
  CHECK(words("gpt2", "  Hello") == Words{" ", " Hello"});
  CHECK(words("gpt2", "I'm 12345!!") == Words{"I", "'m", " 12345", "!!"});
  CHECK(words("gpt2", "I'M") == Words{"I", "'", "M"});  // GPT-2 contractions are case-sensitive
  CHECK(words("qwen2", "I'M") == Words{"I", "'M"});
  CHECK(words("qwen2", "12345") == Words{"1", "2", "3", "4", "5"});
  CHECK(words("llama-bpe", "1234567") == Words{"123", "456", "7"});
  CHECK(words("llama-bpe", "a\n\n  b") == Words{"a", "\n\n", " ", " b"});
  CHECK(words("qwen2", "x.\n\ny") == Words{"x", ".\n\n", "y"});
  CHECK(words("", "ab cd") == words("gpt2", "ab cd"));
  // U+180E is not White_Space (PCRE2's own \s would say it is): "!\u180E!" is one symbol run.
  CHECK(words("gpt2", "!\u180E!") == Words{"!\u180E!"});
  // Only a plain space joins a GPT-2 word; Qwen2/Llama 3 take any one non-letter in front.
  CHECK(words("gpt2", "a\u3000\u3000b") == Words{"a", "\u3000", "\u3000", "b"});
  CHECK(words("qwen2", "a\u3000\u3000b") == Words{"a", "\u3000", "\u3000b"});
  // Ill-formed UTF-8: each bad byte is a symbol character, and keeps its byte.
  CHECK(words("gpt2", "ab\xFF\xFE cd") == Words{"ab", "\xFF\xFE", " cd"});
  CHECK(words("qwen2", "\xC3" "abc") == Words{"\xC3" "abc"});
  CHECK(words("gpt2", "\xED\xA0\x80 x") == Words{"\xED\xA0\x80", " x"});
  CHECK(words("gpt2", "").empty());
  auto bad = create_pre_tokenizer("deepseek-llm");
  REQUIRE(!bad.ok());
  CHECK(bad.status().code() == StatusCode::kInvalidArgument);
  CHECK(is_known_pre("llama-bpe"));
  CHECK(!is_known_pre("llama3"));
  CHECK(pre_from_hf_regex(R"(\s+)") == std::nullopt);
}

// ---------------------------------------------------------------------------------------------
// Merging: against a literal transcription of the rule, on random single words
// ---------------------------------------------------------------------------------------------

struct NaiveBpe {
  std::map<std::string, int32_t> id;
  std::map<std::string, int32_t> rank;  // "left right" → rank
  bool ignore_merges;

  explicit NaiveBpe(const Vocab& v) : ignore_merges(v.ignore_merges) {
    for (size_t i = 0; i < v.pieces.size(); ++i) id[v.pieces[i]] = int32_t(i);
    for (size_t r = 0; r < v.merges.size(); ++r) rank.emplace(v.merges[r], int32_t(r));
  }
  Ids encode_word(std::string_view bytes) const {
    if (ignore_merges && id.count(spelled(bytes))) return {id.at(spelled(bytes))};
    std::vector<std::string> sym;
    for (char c : bytes) sym.push_back(spelled(std::string_view(&c, 1)));
    while (true) {
      int best = -1;
      int32_t best_rank = 0;
      for (size_t i = 0; i + 1 < sym.size(); ++i) {
        auto it = rank.find(sym[i] + " " + sym[i + 1]);
        if (it != rank.end() && (best < 0 || it->second < best_rank)) {
          best = int(i);
          best_rank = it->second;
        }
      }
      if (best < 0) break;
      sym[size_t(best)] += sym[size_t(best) + 1];
      sym.erase(sym.begin() + best + 1);
    }
    Ids out;
    for (const auto& s : sym) out.push_back(id.at(s));
    return out;
  }
};

TEST_CASE("bpe: merging matches a rescanning transcription on random words", "[tokenizer][bpe]") {
  // Letters only, so every family's regex keeps the whole string as one word.
  static const std::vector<std::string> kLetters = {
      "a", "b", "e", "i", "n", "o", "r", "s", "t", "th", "ing", "A", "T", "é", "ü", "ß", "ы", "и", "н",
      "е", "日", "本", "語", "中", "의", "한", "α", "λ", "ế", "ệ", "ส", "ว"};
  for (const Named& n : all_bpe()) {
    const NaiveBpe ref(n.tok->vocab());
    std::mt19937 rng(42);
    for (int i = 0; i < 300; ++i) {
      std::string w;
      const size_t len = 1 + rng() % 30;
      for (size_t k = 0; k < len; ++k) w += kLetters[rng() % kLetters.size()];
      INFO(n.name << ": \"" << w << "\"");
      REQUIRE(n.tok->encode(w, plain()) == ref.encode_word(w));
    }
  }
}

TEST_CASE("bpe: lowest rank first, leftmost on ties; ignore_merges", "[tokenizer][bpe]") {
  // pieces 256.. : "ab", "bc", "abc", "aa"
  Vocab v = tiny_vocab({"ab", "bc", "abc", "aa"}, {"b c", "a b", "a bc", "a a"});
  auto t = test::make_tokenizer(v);
  const int32_t a = 'a', b = 'b', c = 'c', ab = 256, abc = 258, aa = 259;  // 257 is "bc"
  CHECK(t->encode("abc", plain()) == Ids{abc});    // "b c" (rank 0) before "a b" (rank 1), then "a bc"
  CHECK(t->encode("abab", plain()) == Ids{ab, ab});
  CHECK(t->encode("aaa", plain()) == Ids{aa, a});  // leftmost pair first
  CHECK(t->encode("cab", plain()) == Ids{c, ab});
  CHECK(t->encode("ba", plain()) == Ids{b, a});
  CHECK(t->decode(Ids{abc, aa}) == "abcaa");
  // ignore_merges: a word that is a piece comes out whole even when merges would not build it.
  Vocab w = tiny_vocab({"xyz"}, {});
  auto t_merge = test::make_tokenizer(w);
  w.ignore_merges = true;
  auto t_ignore = test::make_tokenizer(std::move(w));
  CHECK(t_merge->encode("xyz", plain()) == Ids{'x', 'y', 'z'});
  CHECK(t_ignore->encode("xyz", plain()) == Ids{256});
  // Llama 3's example: " Việt" is one token only with ignore_merges.
  CHECK(llama3().encode(" Việt", plain()) == Ids{101798});
  Vocab l = llama3().vocab();
  l.ignore_merges = false;
  CHECK(test::make_tokenizer(std::move(l))->encode(" Việt", plain()).size() == 3);
}

// ---------------------------------------------------------------------------------------------
// Added and special tokens, BOS/EOS, decoding
// ---------------------------------------------------------------------------------------------

TEST_CASE("bpe: control tokens need parse_special, user-defined ones are always split out", "[tokenizer][bpe]") {
  const Tokenizer& q = qwen3();
  const std::string chat = "<|im_start|>user\nHi<think>x</think><|im_end|>";
  const Ids with = q.encode(chat, special());
  REQUIRE(with.size() >= 6);
  CHECK(with.front() == 151644);
  CHECK(with.back() == 151645);
  CHECK(std::count(with.begin(), with.end(), 151667) == 1);  // <think>
  CHECK(q.decode(with) == "user\nHi<think>x</think>");      // control tokens decode to nothing
  const Ids without = q.encode(chat, plain());
  CHECK(std::count(without.begin(), without.end(), 151644) == 0);
  CHECK(std::count(without.begin(), without.end(), 151667) == 1);  // user-defined: split anyway
  CHECK(q.decode(without) == chat);
  // Leftmost match, longest at a position; text around tokens is pre-tokenized on its own.
  CHECK(q.encode("a<|im_end|>b", special()) ==
        Ids{id_of(q, "a"), 151645, id_of(q, "b")});
  CHECK(q.encode("<|im_end|<|im_end|>", special()).back() == 151645);
  CHECK(q.encode("<|endoftext|>", special()) == Ids{151643});
  CHECK(q.decode_token(151667, -1) == "<think>");

  const Tokenizer& l = llama3();
  const Ids ids = l.encode("<|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>", EncodeOptions{.parse_special = true});
  REQUIRE(ids.size() >= 5);
  CHECK(ids[0] == 128000);  // add_bos (Llama 3 adds <|begin_of_text|>)
  CHECK(ids[1] == 128006);
  CHECK(ids.back() == 128009);
  CHECK(l.encode("hi", EncodeOptions{.add_bos = false}) == l.encode("hi", plain()));
  CHECK(l.encode("").size() == 1);
  CHECK(l.encode("", plain()).empty());

  const Tokenizer& g = gpt2();
  CHECK(g.encode("<|endoftext|>", special()) == Ids{50256});
  CHECK(g.encode("<|endoftext|>", plain()).size() > 1);
  CHECK(g.encode("x").front() != 50256);  // the GGUF does not ask for a BOS
}

TEST_CASE("bpe: decode_token rules and round trips", "[tokenizer][bpe]") {
  const Tokenizer& g = gpt2();
  const int32_t the = id_of(g, "Ġthe");
  CHECK(g.decode_token(the, -1) == " the");  // no dummy prefix to drop
  CHECK(g.decode_token(the, the) == " the");
  CHECK(g.decode_token(id_of(g, "Ċ"), -1) == "\n");
  CHECK(g.decode_token(50256, the).empty());  // control
  CHECK(g.decode_token(-1, -1).empty());
  CHECK(g.decode_token(g.n_vocab(), -1).empty());
  // A byte token of a multi-byte character yields a partial character; the sequence is whole.
  const Ids llama = g.encode("🦙", plain());
  REQUIRE(llama.size() > 1);
  CHECK(g.decode(llama) == "🦙");

  const std::vector<std::string> texts = {
      "", " ", "\n", "Hello world", "  leading", "trailing  ", "tabs\tand\r\nCRLF", "Ünïcödé façade",
      "日本語のテキスト", "Привет, мир!", "emoji 🦙🦙 and 👍🏽 and 🇺🇸", "👨‍👩‍👧 family", "math ∑∫√ € £",
      "1234567890 3.14", "it's I'M we'Ll", "\xC2\xA0nbsp\u3000ideographic\u2028ls", "!\u180E!",
      "<|im_start|> as text", "code: for (int i = 0; i < n; ++i) { x[i] = 0; }", "a\x01" "b\x7F" "c",
      "ok \xFF\xFE \xC3 \xE2\x82 end\x80", "\xED\xA0\x80\xC0\xAF\xF4\x90\x80\x80"};
  for (const Named& n : all_bpe()) {
    for (const std::string& x : texts) {
      INFO(n.name << ": \"" << printable(x) << "\"");
      for (bool parse : {false, true}) {
        EncodeOptions o;
        o.parse_special = parse;
        const Ids ids = n.tok->encode(x, o);
        for (int32_t id : ids) REQUIRE((id >= 0 && id < n.tok->n_vocab()));
        std::string streamed;
        for (int32_t id : ids) streamed += n.tok->decode_token(id, -1);
        CHECK(streamed == n.tok->decode(ids));
        if (!parse) CHECK(n.tok->decode(ids) == x);  // (special text would decode to "")
      }
    }
    std::mt19937 rng(7);
    for (int i = 0; i < 200; ++i) {
      const std::string x = random_text(rng, 1 + rng() % 20, /*invalid=*/i % 2 == 1);
      INFO(n.name << ": \"" << printable(x) << "\"");
      REQUIRE(n.tok->decode(n.tok->encode(x, plain())) == x);
    }
  }
}

TEST_CASE("bpe: tokenizers are safe to share between threads", "[tokenizer][bpe]") {
  std::mt19937 rng(3);
  std::vector<std::string> texts;
  for (int i = 0; i < 64; ++i) texts.push_back(random_text(rng, 50, i % 3 == 0));
  for (const Named& n : all_bpe()) {
    std::vector<Ids> want;
    for (const auto& x : texts) want.push_back(n.tok->encode(x, special()));
    std::vector<int> mismatches(4, 0);
    std::vector<std::thread> threads;
    for (int k = 0; k < 4; ++k) {
      threads.emplace_back([&, k] {
        for (int rep = 0; rep < 5; ++rep) {
          for (size_t i = 0; i < texts.size(); ++i) {
            mismatches[size_t(k)] += n.tok->encode(texts[i], special()) != want[i];
          }
        }
      });
    }
    for (auto& th : threads) th.join();
    INFO(n.name);
    CHECK(mismatches == std::vector<int>(4, 0));
  }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer::create validation
// ---------------------------------------------------------------------------------------------

TEST_CASE("bpe: create() rejects inconsistent vocabs", "[tokenizer][bpe]") {
  auto expect_invalid = [](Vocab bad, std::string_view what, std::string_view needle) {
    auto r = Tokenizer::create(std::move(bad));
    INFO(what << ": " << r.status().to_string());
    REQUIRE(!r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find(needle) != std::string::npos);
  };
  const Vocab good = tiny_vocab({"ab"}, {"a b"});
  REQUIRE(Tokenizer::create(good).ok());
  {
    Vocab v = good;
    v.merges = {"a xyz"};
    expect_invalid(v, "merge with an unknown right piece", "'xyz'");
  }
  expect_invalid(tiny_vocab({}, {"a b"}), "merged piece not in the vocab", "'ab'");
  expect_invalid(tiny_vocab({"ab"}, {"ab"}), "merge without a space", "not \"left right\"");
  expect_invalid(tiny_vocab({"ab"}, {"a b c"}), "merge with two spaces", "not \"left right\"");
  expect_invalid(tiny_vocab({"ab"}, {" ab"}), "merge with an empty left", "not \"left right\"");
  {
    Vocab v = good;
    v.pieces[size_t('z')] = "zz";  // byte 'z' has no piece any more
    expect_invalid(v, "missing byte piece, no unk", "0x7A");
    v.unk = 0;
    CHECK(Tokenizer::create(v).ok());  // falls back on unk
  }
  {
    Vocab v = good;
    v.pre = "deepseek-llm";
    expect_invalid(v, "unknown pre", "deepseek-llm");
  }
  {
    Vocab v = good;
    v.types[256] = TokenType::kByte;
    expect_invalid(v, "kByte piece that is not <0xAB>", "<0xAB>");
  }
}

// ---------------------------------------------------------------------------------------------
// GGUF loader
// ---------------------------------------------------------------------------------------------

// A vocab-only GGUF with a tiny byte-level vocab; `pre` empty: no tokenizer.ggml.pre key.
std::string write_bpe_gguf(const std::string& name, const std::string& pre) {
  const Vocab v = tiny_vocab({"ab", "<|eot|>"}, {"a b"});
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_string("tokenizer.ggml.model", "gpt2");
  if (!pre.empty()) w.set_string("tokenizer.ggml.pre", pre);
  w.set_string_array("tokenizer.ggml.tokens", v.pieces);
  std::vector<int32_t> types(v.pieces.size(), 1);
  types.back() = 3;
  w.set_i32_array("tokenizer.ggml.token_type", types);
  w.set_string_array("tokenizer.ggml.merges", v.merges);
  w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(v.pieces.size() - 1));
  w.set_string("tokenizer.chat_template", "{{ messages }}");
  const std::string path = test::temp_dir() + "/" + name + ".gguf";
  REQUIRE(w.write(path).ok());
  return path;
}

TEST_CASE("bpe: GGUF tokenizer.ggml.pre, merges and chat template", "[tokenizer][bpe]") {
  for (const auto& [gguf_pre, pre, ignore] : {std::tuple{"llama-bpe", "llama-bpe", true},
                                              {"llama3", "llama-bpe", true}, {"qwen2", "qwen2", false},
                                              {"gpt-2", "gpt2", false}, {"", "gpt2", false}}) {
    INFO("tokenizer.ggml.pre = '" << gguf_pre << "'");
    const Vocab v = gguf_vocab(write_bpe_gguf(std::string("pre_") + gguf_pre, gguf_pre));
    CHECK(v.pre == pre);
    CHECK(v.ignore_merges == ignore);
    CHECK(v.chat_template == "{{ messages }}");
    CHECK(v.merges == std::vector<std::string>{"a b"});
    CHECK(v.eos == 257);
    auto t = test::make_tokenizer(v);
    CHECK(t->encode("ab<|eot|>", special()) == Ids{256, 257});
    CHECK(t->decode(Ids{256, 257}) == "ab");
  }
  auto f = GgufFile::open(write_bpe_gguf("pre_unknown", "deepseek-coder"));
  REQUIRE(f.ok());
  auto r = read_gguf_vocab(**f);
  REQUIRE(!r.ok());
  CHECK(r.status().code() == StatusCode::kUnimplemented);
  CHECK(r.status().message().find("deepseek-coder") != std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face loader: tokenizer.json forms and malformed files
// ---------------------------------------------------------------------------------------------

using json = nlohmann::json;

// A tokenizer.json for the tiny vocab (pieces 0..255 bytes, 256 "ab", 257 "abc"), qwen2's regex.
json tiny_tokenizer_json() {
  json vocab = json::object();
  const Vocab v = tiny_vocab({"ab", "abc"}, {});
  for (size_t i = 0; i < v.pieces.size(); ++i) vocab[v.pieces[i]] = i;
  return {
      {"version", "1.0"},
      {"normalizer", {{"type", "NFC"}}},
      {"added_tokens",
       json::array({{{"id", 258}, {"content", "<|im_start|>"}, {"special", true}},
                    {{"id", 259}, {"content", "<tool>"}, {"special", false}}})},
      {"pre_tokenizer",
       {{"type", "Sequence"},
        {"pretokenizers",
         json::array({{{"type", "Split"},
                       {"pattern", {{"Regex", R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
                       {"behavior", "Isolated"},
                       {"invert", false}},
                      {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", json::array({{{"SpecialToken", {{"id", "<|im_start|>"}, {"type_id", 0}}}},
                                {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}})}}},
      {"model",
       {{"type", "BPE"},
        {"vocab", vocab},
        {"merges", json::array({"a b", json::array({"ab", "c"})})},
        {"ignore_merges", false}}},
  };
}

std::string write_tokenizer_json(const std::string& name, const json& j) {
  const std::string d = fresh_dir(name);
  write_text(d + "/tokenizer.json", j.dump());
  return d;
}

TEST_CASE("bpe: tokenizer.json: both merge forms, added tokens, post-processor", "[tokenizer][bpe]") {
  const std::string d = write_tokenizer_json("tj_good", tiny_tokenizer_json());
  auto v = read_hf_vocab(d);
  INFO(v.status().to_string());
  REQUIRE(v.ok());
  CHECK(v->pre == "qwen2");
  CHECK(v->merges == std::vector<std::string>{"a b", "ab c"});
  CHECK(v->n_vocab() == 260);
  CHECK(v->types[258] == TokenType::kControl);
  CHECK(v->types[259] == TokenType::kUserDefined);
  CHECK(v->bos == 258);  // the template's leading special token
  CHECK(v->add_bos);
  auto t = test::make_tokenizer(std::move(v));
  CHECK(t->encode("abc<tool>") == Ids{258, 257, 259});
  CHECK(t->decode(Ids{258, 257, 259}) == "abc<tool>");

  // tokenizer_config.json overrides the post-processor and names eos / the chat template.
  write_text(d + "/tokenizer_config.json", json{{"add_bos_token", false},
                                                {"eos_token", {{"content", "<tool>"}}},
                                                {"chat_template", json::array({{{"name", "tool_use"}, {"template", "T"}},
                                                                               {{"name", "default"}, {"template", "D"}}})}}
                                               .dump());
  auto c = read_hf_vocab(d);
  REQUIRE(c.ok());
  CHECK(!c->add_bos);
  CHECK(c->eos == 259);
  CHECK(c->chat_template == "D");

  // A hint that contradicts the file is an error; one that agrees is fine.
  CHECK(read_hf_vocab(d, "qwen2").ok());
  auto conflict = read_hf_vocab(d, "gpt2");
  REQUIRE(!conflict.ok());
  CHECK(conflict.status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("bpe: tokenizer.json built from the Qwen2 files gives the same ids", "[tokenizer][bpe]") {
  // The real vocab and merges in tokenizer.json form: array-form merges, added tokens from the
  // Qwen3 config, the Split regex, NFC normalizer (accepted, not applied).
  const json vocab = json::parse(test::read_file(test::model_path("tokenizers/qwen2/vocab.json")));
  const std::string merges_txt = test::read_file(test::model_path("tokenizers/qwen2/merges.txt"));
  json merges = json::array();
  std::istringstream lines(merges_txt);
  for (std::string line; std::getline(lines, line);) {
    if (line.rfind("#version", 0) == 0 || line.empty()) continue;
    const size_t sp = line.find(' ');
    merges.push_back(json::array({line.substr(0, sp), line.substr(sp + 1)}));
  }
  json j = tiny_tokenizer_json();
  j["model"]["vocab"] = vocab;
  j["model"]["merges"] = merges;
  j.erase("post_processor");
  json added = json::array();
  const json cfg = json::parse(test::read_file(test::model_path("tokenizers/qwen2/qwen3_tokenizer_config.json")));
  for (const auto& [id, t] : cfg["added_tokens_decoder"].items()) {
    added.push_back({{"id", std::stoi(id)}, {"content", t["content"]}, {"special", t["special"]}});
  }
  j["added_tokens"] = added;
  auto t = test::make_tokenizer(read_hf_vocab(write_tokenizer_json("tj_qwen2", j)));
  CHECK(t->vocab().pieces == qwen3().vocab().pieces);
  CHECK(t->vocab().types == qwen3().vocab().types);
  CHECK(t->vocab().merges == qwen3().vocab().merges);
  for (const auto& c : test::load_vocab_vectors("ggml-vocab-qwen2.gguf")) {
    INFO(printable(c.text));
    CHECK(t->encode(c.text, plain()) == c.ids);
  }
}

TEST_CASE("bpe: read_hf_vocab errors: missing, malformed and unsupported files", "[tokenizer][bpe]") {
  auto expect = [](const Result<Vocab>& r, StatusCode code, std::string_view needle, std::string_view what) {
    INFO(what << ": " << r.status().to_string());
    REQUIRE(!r.ok());
    CHECK(r.status().code() == code);
    CHECK(r.status().message().find(needle) != std::string::npos);
  };
  SECTION("missing") {
    expect(read_hf_vocab(test::temp_dir() + "/no-such-dir"), StatusCode::kNotFound, "no-such-dir", "no dir");
    const std::string empty = fresh_dir("hf_empty");
    expect(read_hf_vocab(empty), StatusCode::kNotFound, "tokenizer.json", "empty dir");
    const std::string only_vocab = fresh_dir("hf_only_vocab");
    write_text(only_vocab + "/vocab.json", "{\"a\": 0}");
    expect(read_hf_vocab(only_vocab, "gpt2"), StatusCode::kNotFound, "merges.txt", "vocab.json alone");
    expect(read_hf_vocab(empty, "gpt-2"), StatusCode::kInvalidArgument, "gpt-2", "bad hint");
  }
  SECTION("malformed JSON and fields") {
    auto with = [&](const std::string& name, const std::string& text) {
      const std::string d = fresh_dir(name);
      write_text(d + "/tokenizer.json", text);
      return read_hf_vocab(d);
    };
    expect(with("hf_syntax", "{\"model\": {"), StatusCode::kInvalidArgument, "tokenizer.json", "truncated JSON");
    expect(with("hf_array", "[1, 2]"), StatusCode::kInvalidArgument, "tokenizer.json", "not an object");
    json j = tiny_tokenizer_json();
    j["model"]["merges"] = "a b";
    expect(with("hf_merges_type", j.dump()), StatusCode::kInvalidArgument, "model.merges", "merges not array");
    j = tiny_tokenizer_json();
    j["model"]["merges"] = json::array({json::array({"a", "b", "c"})});
    expect(with("hf_merge_triple", j.dump()), StatusCode::kInvalidArgument, "model.merges[0]", "3-element merge");
    j = tiny_tokenizer_json();
    j["model"]["merges"] = json::array({json::array({"a b", "c"})});
    expect(with("hf_merge_space", j.dump()), StatusCode::kInvalidArgument, "merge 0", "space inside a piece");
    j = tiny_tokenizer_json();
    j["model"]["vocab"]["a"] = "zero";
    expect(with("hf_id_type", j.dump()), StatusCode::kInvalidArgument, "not an integer", "string id");
    j = tiny_tokenizer_json();
    j["model"]["vocab"]["zzz"] = 4000000000LL;
    expect(with("hf_id_huge", j.dump()), StatusCode::kInvalidArgument, "outside", "huge id");
    j = tiny_tokenizer_json();
    j["model"]["vocab"]["zzz"] = 1000000;
    expect(with("hf_id_gap", j.dump()), StatusCode::kInvalidArgument, "assigned", "huge gap");
    j = tiny_tokenizer_json();
    j["added_tokens"][0]["id"] = 97;  // 'a' already
    expect(with("hf_id_clash", j.dump()), StatusCode::kInvalidArgument, "added_tokens", "id clash");
    j = tiny_tokenizer_json();
    j["model"]["ignore_merges"] = "yes";
    expect(with("hf_ignore_type", j.dump()), StatusCode::kInvalidArgument, "ignore_merges", "bool type");
    j = tiny_tokenizer_json();
    j["model"]["byte_fallback"] = "sure";  // wrong type: nlohmann throws, the loader converts
    expect(with("hf_throw", j.dump()), StatusCode::kInvalidArgument, "tokenizer.json", "type error");
  }
  SECTION("merges naming unknown pieces load, then fail in Tokenizer::create") {
    json j = tiny_tokenizer_json();
    j["model"]["merges"] = json::array({"a q9"});
    const std::string d = write_tokenizer_json("hf_unknown_piece", j);
    auto v = read_hf_vocab(d);
    REQUIRE(v.ok());
    auto t = Tokenizer::create(std::move(v).value());
    REQUIRE(!t.ok());
    CHECK(t.status().code() == StatusCode::kInvalidArgument);
    CHECK(t.status().message().find("'q9'") != std::string::npos);
  }
  SECTION("unsupported: other models, regexes, normalizers") {
    auto with = [&](const std::string& name, const json& j) { return read_hf_vocab(write_tokenizer_json(name, j)); };
    json j = tiny_tokenizer_json();
    j["model"]["type"] = "Unigram";
    expect(with("hf_unigram", j), StatusCode::kUnimplemented, "Unigram", "unigram");
    j = tiny_tokenizer_json();
    j["model"]["byte_fallback"] = true;
    expect(with("hf_fallback", j), StatusCode::kUnimplemented, "byte_fallback", "byte fallback");
    j = tiny_tokenizer_json();
    j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = R"(\p{N}{1,5})";
    expect(with("hf_regex", j), StatusCode::kUnimplemented, R"(\p{N}{1,5})", "unknown regex");
    j = tiny_tokenizer_json();
    j["pre_tokenizer"] = {{"type", "Metaspace"}};
    expect(with("hf_metaspace", j), StatusCode::kUnimplemented, "Metaspace", "metaspace");
    j = tiny_tokenizer_json();
    j["normalizer"] = {{"type", "Lowercase"}};
    expect(with("hf_lower", j), StatusCode::kUnimplemented, "Lowercase", "lowercase");
    j = tiny_tokenizer_json();
    j["pre_tokenizer"] = nullptr;
    expect(with("hf_no_pre", j), StatusCode::kInvalidArgument, "hint", "no pre-tokenizer, no hint");
    CHECK(read_hf_vocab(write_tokenizer_json("hf_no_pre_hint", j), "llama-bpe").ok());
  }
  SECTION("merges.txt and tokenizer_config.json problems") {
    const std::string d = fresh_dir("hf_txt");
    write_text(d + "/vocab.json", json(json::object({{"a", 0}, {"b", 1}, {"ab", 2}})).dump());
    write_text(d + "/merges.txt", "#version: 0.2\na b c\n");
    expect(read_hf_vocab(d, "gpt2"), StatusCode::kInvalidArgument, "line 2", "three parts");
    write_text(d + "/merges.txt", "#version: 0.2\r\na b\r\n\r\n");
    auto ok = read_hf_vocab(d, "gpt2");
    REQUIRE(ok.ok());
    CHECK(ok->merges == std::vector<std::string>{"a b"});
    write_text(d + "/tokenizer_config.json", "{\"eos_token\": \"<nope>\"}");
    expect(read_hf_vocab(d, "gpt2"), StatusCode::kInvalidArgument, "<nope>", "unknown eos");
    write_text(d + "/tokenizer_config.json", "{\"added_tokens_decoder\": {\"x1\": {\"content\": \"q\"}}}");
    expect(read_hf_vocab(d, "gpt2"), StatusCode::kInvalidArgument, "x1", "bad added id");
    write_text(d + "/tokenizer_config.json", "{\"add_bos_token\": 1}");
    expect(read_hf_vocab(d, "gpt2"), StatusCode::kInvalidArgument, "add_bos_token", "int flag");
    write_text(d + "/tokenizer_config.json", "{\"tokenizer_class\": \"Qwen2Tokenizer\"}");
    auto inferred = read_hf_vocab(d);
    REQUIRE(inferred.ok());
    CHECK(inferred->pre == "qwen2");
  }
  SECTION("random corruption never crashes") {
    const std::string good = tiny_tokenizer_json().dump();
    const std::string d = fresh_dir("hf_fuzz");
    std::mt19937 rng(11);
    for (int i = 0; i < 300; ++i) {
      std::string b = good;
      const int flips = 1 + int(rng() % 6);
      for (int k = 0; k < flips; ++k) b[rng() % b.size()] = "{}[]\",:0a \\"[rng() % 12];
      if (rng() % 4 == 0) b.resize(rng() % b.size());
      write_text(d + "/tokenizer.json", b);
      auto r = read_hf_vocab(d);
      if (!r.ok()) {
        const StatusCode c = r.status().code();
        CHECK((c == StatusCode::kInvalidArgument || c == StatusCode::kUnimplemented));
        continue;
      }
      auto t = Tokenizer::create(std::move(r).value());
      if (!t.ok()) continue;
      for (int32_t id : (*t)->encode("abc <|im_start|> x", special())) CHECK((id >= 0 && id < (*t)->n_vocab()));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Speed: long texts are not quadratic
// ---------------------------------------------------------------------------------------------

std::string long_mixed_text(size_t bytes) {
  std::mt19937 rng(5);
  std::string s;
  while (s.size() < bytes) s += random_text(rng, 16, false) + " ";
  return s;
}

TEST_CASE("bpe: 100 kB texts encode quickly", "[tokenizer][bpe]") {
  const std::vector<std::pair<const char*, std::string>> texts = {
      {"mixed", long_mixed_text(100000)},
      {"one letter", std::string(100000, 'a')},
      {"spaces", std::string(100000, ' ')},
      {"spaces then letter", std::string(100000, ' ') + "a"},
      {"newlines and spaces", [] {
         std::string s;
         while (s.size() < 100000) s += " \n";
         return s;
       }()},
      {"digits", std::string(100000, '7')},
      {"invalid bytes", std::string(100000, '\xFF')},
      {"emoji", [] {
         std::string s;
         while (s.size() < 100000) s += "🦙";
         return s;
       }()}};
  for (const Named& n : all_bpe()) {
    for (const auto& [name, text] : texts) {
      const auto t0 = std::chrono::steady_clock::now();
      const Ids ids = n.tok->encode(text, plain());
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      INFO(n.name << " " << name << ": " << ids.size() << " tokens in " << s << " s");
      CHECK(s < 2.0);  // milliseconds expected; quadratic would take minutes
      const bool round_trip = n.tok->decode(ids) == text;  // (not expanded: 100 kB strings)
      CHECK(round_trip);
    }
  }
}

// Throughput report: build-tok/tests/test_tokenizer_bpe "[.bench]"
TEST_CASE("bpe: load time, and throughput on 4 MB of text", "[.bench]") {
  auto seconds_since = [](std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  for (const Named& n : all_bpe()) {
    const auto t0 = std::chrono::steady_clock::now();
    auto again = Tokenizer::create(n.tok->vocab());
    REQUIRE(again.ok());
    std::printf("%-7s Tokenizer::create: %.3f s\n", n.name, seconds_since(t0));
  }
  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(read_hf_vocab(qwen3_dir()).ok());
  std::printf("qwen3   read_hf_vocab: %.3f s\n", seconds_since(t0));
  t0 = std::chrono::steady_clock::now();
  REQUIRE(read_hf_vocab(test::model_path("tokenizers/llama3"), "llama-bpe").ok());
  std::printf("llama3  read_hf_vocab: %.3f s\n", seconds_since(t0));

  std::string docs;  // English prose, tables and code: this repository's Markdown
  for (const auto& e : fs::directory_iterator(std::string(KVB_SOURCE_DIR) + "/docs")) {
    if (e.path().extension() == ".md") docs += test::read_file(e.path().string());
  }
  docs += test::read_file(std::string(KVB_SOURCE_DIR) + "/README.md");
  std::string natural;
  while (natural.size() < (4u << 20)) natural += docs;
  for (const auto& [what, text] : {std::pair{"random mixed", long_mixed_text(4 << 20)}, {"docs", natural}}) {
    for (const Named& n : all_bpe()) {
      t0 = std::chrono::steady_clock::now();
      const Ids ids = n.tok->encode(text, plain());
      const double s = seconds_since(t0);
      std::printf("%-7s %-12s %8zu bytes -> %8zu tokens in %.3f s: %.2f M tokens/s, %.1f MB/s\n", n.name,
                  what, text.size(), ids.size(), s, double(ids.size()) / s / 1e6, double(text.size()) / s / 1e6);
    }
  }
}

}  // namespace
}  // namespace kvb
