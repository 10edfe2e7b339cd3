// Tokenizer tests: golden ids from llama.cpp's test vectors and llama2.c's reference run, a
// differential check against literal O(n²) transcriptions of both reference encoders, round trips,
// and malformed vocab files.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "engine/gguf.h"
#include "engine/tokenizer.h"
#include "engine/vocab_loaders.h"
#include "support/test_support.h"
#include "support/vocab_vectors.h"
#include "support/model_checks.h"

namespace kvb {
namespace {

using Ids = std::vector<int32_t>;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

std::unique_ptr<Tokenizer> load_llama2c(const std::string& rel) {
  return test::make_tokenizer(read_llama2c_vocab(test::model_path(rel), 512));
}

Vocab gguf_vocab(const std::string& rel) {
  auto f = GgufFile::open(test::model_path(rel));
  INFO(f.status().to_string());
  REQUIRE(f.ok());
  auto v = read_gguf_vocab(**f);
  INFO(v.status().to_string());
  REQUIRE(v.ok());
  return std::move(v).value();
}

std::unique_ptr<Tokenizer> load_gguf(const std::string& rel) { return test::make_tokenizer(gguf_vocab(rel)); }

// Loading the 32,000-token vocab once keeps the 46 per-case runs fast.
const Tokenizer& llama_spm() {
  static const std::unique_ptr<Tokenizer> t = load_gguf("tokenizer-tests/ggml-vocab-llama-spm.gguf");
  return *t;
}
const Tokenizer& stories_l2c() {
  static const std::unique_ptr<Tokenizer> t = load_llama2c("stories260K/tok512.bin");
  return *t;
}
const Tokenizer& stories_gguf() {
  static const std::unique_ptr<Tokenizer> t = load_gguf("stories260K/stories260K.gguf");
  return *t;
}
const Tokenizer& aidreams_l2c() {
  static const std::unique_ptr<Tokenizer> t = load_llama2c("aidreams260K/tok512.bin");
  return *t;
}

using test::printable;
using test::id_of;

EncodeOptions no_bos() {
  EncodeOptions o;
  o.add_bos = false;
  return o;
}

void write_bytes(const std::string& path, std::string_view bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), std::streamsize(bytes.size()));
  REQUIRE(f.good());
}

// ---------------------------------------------------------------------------------------------
// Independent references, transcribed from the algorithms' descriptions and kept naive (O(n²)).
// ---------------------------------------------------------------------------------------------

// llama2.c run.c encode(), over the raw tokenizer.bin pieces (plain spaces, "\n<s>\n").
struct RunCReference {
  std::vector<std::string> vocab;
  std::vector<float> scores;
  std::map<std::string, int> index;

  explicit RunCReference(const std::string& bytes) {
    size_t off = 4;
    while (off + 8 <= bytes.size()) {
      float score;
      int32_t len;
      std::memcpy(&score, bytes.data() + off, 4);
      std::memcpy(&len, bytes.data() + off + 4, 4);
      off += 8;
      vocab.push_back(bytes.substr(off, size_t(len)));
      scores.push_back(score);
      off += size_t(len);
    }
    for (size_t i = 0; i < vocab.size(); ++i) index.emplace(vocab[i], int(i));
  }
  int lookup(const std::string& s) const {
    auto it = index.find(s);
    return it == index.end() ? -1 : it->second;
  }
  Ids encode(const std::string& text) const {  // bos = 1, eos = 0
    Ids t{1};
    if (!text.empty()) t.push_back(lookup(" "));
    std::string buf;
    for (size_t i = 0; i < text.size(); ++i) {
      buf += text[i];
      const bool next_cont = i + 1 < text.size() && (uint8_t(text[i + 1]) & 0xC0) == 0x80;
      if (next_cont && buf.size() < 4) continue;
      const int id = lookup(buf);
      if (id != -1) {
        t.push_back(id);
      } else {
        for (unsigned char c : buf) t.push_back(int(c) + 3);
      }
      buf.clear();
    }
    while (true) {
      float best_score = -1e10f;
      int best_id = -1;
      size_t best_idx = 0;
      for (size_t i = 0; i + 1 < t.size(); ++i) {
        const int id = lookup(vocab[size_t(t[i])] + vocab[size_t(t[i + 1])]);
        if (id != -1 && scores[size_t(id)] > best_score) {
          best_score = scores[size_t(id)];
          best_id = id;
          best_idx = i;
        }
      }
      if (best_id == -1) break;
      t[best_idx] = best_id;
      t.erase(t.begin() + std::ptrdiff_t(best_idx) + 1);
    }
    return t;
  }
};

// llama.cpp llm_tokenizer_spm semantics (escaped spaces, lead-byte character lengths, merge the
// best-scoring adjacent pair leftmost-first, unmatched symbols as <0xAB> tokens), by rescanning.
struct LlamaCppReference {
  const Vocab& v;
  std::map<std::string, int32_t> index;

  explicit LlamaCppReference(const Vocab& vocab) : v(vocab) {
    for (size_t i = 0; i < v.pieces.size(); ++i) index[v.pieces[i]] = int32_t(i);
  }
  int32_t lookup(const std::string& s) const {
    auto it = index.find(s);
    return it == index.end() ? -1 : it->second;
  }
  Ids encode(std::string text) const;
};

Ids LlamaCppReference::encode(std::string text) const {
  if (text.empty()) return {};
  text = " " + text;
  std::string esc;
  for (char c : text) esc += c == ' ' ? std::string("\xE2\x96\x81") : std::string(1, c);
  std::vector<std::string> sym;
  for (size_t off = 0; off < esc.size();) {
    // Length from the lead byte, but (our one deviation from llama.cpp) never past a byte that
    // is not a continuation byte.
    const uint8_t lead = uint8_t(esc[off]);
    const size_t len = std::min<size_t>(lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4, esc.size() - off);
    size_t n = 1;
    while (n < len && (uint8_t(esc[off + n]) & 0xC0) == 0x80) ++n;
    sym.push_back(esc.substr(off, n));
    off += n;
  }
  while (true) {
    int best = -1;
    float best_score = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      const int id = lookup(sym[i] + sym[i + 1]);
      if (id >= 0 && (best < 0 || v.scores[size_t(id)] > best_score)) {
        best = int(i);
        best_score = v.scores[size_t(id)];
      }
    }
    if (best < 0) break;
    sym[size_t(best)] += sym[size_t(best) + 1];
    sym.erase(sym.begin() + best + 1);
  }
  Ids out;
  for (const auto& s : sym) {
    const int id = lookup(s);
    if (id >= 0) {
      out.push_back(id);
    } else {
      for (unsigned char c : s) {
        char hex[8];
        std::snprintf(hex, sizeof hex, "<0x%02X>", c);
        out.push_back(lookup(hex));
      }
    }
  }
  return out;
}

// Deterministic mixed text: words, spaces, punctuation, multi-byte UTF-8, emoji, control bytes,
// and (when `invalid`) stray bytes that are not valid UTF-8.
std::string random_text(std::mt19937& rng, size_t n_parts, bool invalid) {
  static const std::vector<std::string> kParts = {
      "Once", "upon", "a", "time", "the", "park", "Lily", "ball", "Hello", "world", "ing", "ed",
      " ", " ", " ", "  ", "   ", "\n", "\n\n", "\t", ".", ",", "!", "?", "\"", "'", "(", ")", "-",
      "0", "12", "345", "é", "ü", "ß", "ñ", "Ä", "日本", "語", "中文", "Привет", "мир", "العربية",
      "🦙", "😀", "👍🏽", "∑", "€", "\xC2\xA0", "▁", "<s>", "</s>", "<0x41>", "\r", "~", "@", "#"};
  static const std::vector<std::string> kInvalid = {"\xFF",     "\xC3",     "\x80",     "\xE2\x82",
                                                    "\xF0\x9F", "\xBF\xBF", "\xC0\xAF", "\xFE"};
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
// Golden vectors
// ---------------------------------------------------------------------------------------------

TEST_CASE("llama.cpp test vectors for the Llama 2 SPM vocab", "[tokenizer]") {
  const auto cases = test::load_vocab_vectors("ggml-vocab-llama-spm.gguf");
  REQUIRE(cases.size() == 46);
  for (size_t i = 0; i < cases.size(); ++i) {
    DYNAMIC_SECTION("case " << i << ": \"" << printable(cases[i].text) << "\"") {
      const Ids got = llama_spm().encode(cases[i].text, no_bos());
      CHECK(got == cases[i].ids);
      CHECK(llama_spm().decode(got) == cases[i].text);
    }
  }
}

void check_llama2c_reference(const std::string& json_name, const Tokenizer& tok) {
  const auto doc = nlohmann::json::parse(test::read_file(test::reference_dir() + "/" + json_name));
  const auto& cases = doc.at("cases");
  REQUIRE(cases.size() > 0);
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string prompt = cases[i].at("prompt").get<std::string>();
    DYNAMIC_SECTION("case " << i << ": \"" << prompt << "\"") {
      const Ids want = cases[i].at("prompt_ids").get<Ids>();
      CHECK(tok.encode(prompt) == want);
      CHECK(tok.decode(want) == prompt);
      // The greedy continuation extends the prompt's text with text, not piece spellings.
      Ids all = want;
      for (int32_t id : cases[i].at("greedy_ids").get<Ids>()) all.push_back(id);
      const std::string text = tok.decode(all);
      INFO(text);
      CHECK(text.size() > prompt.size());
      CHECK(text.rfind(prompt, 0) == 0);
      CHECK(text.find("<s>") == std::string::npos);
      CHECK(text.find("<0x") == std::string::npos);
      CHECK(text.find("\xE2\x96\x81") == std::string::npos);
    }
  }
}

TEST_CASE("llama2.c reference prompts: stories260K tok512.bin", "[tokenizer]") {
  check_llama2c_reference("stories260K.llama2c-reference.json", stories_l2c());
}

TEST_CASE("llama2.c reference prompts: stories260K via its GGUF vocab", "[tokenizer]") {
  check_llama2c_reference("stories260K.llama2c-reference.json", stories_gguf());
}

TEST_CASE("llama2.c reference prompts: aidreams260K tok512.bin", "[tokenizer]") {
  check_llama2c_reference("aidreams260K.llama2c-reference.json", aidreams_l2c());
}

TEST_CASE("stories260K: README tokenizer checks and greedy story", "[tokenizer]") {
  for (const Tokenizer* t : {&stories_l2c(), &stories_gguf()}) {
    CHECK(t->encode("Once upon a time", no_bos()) == Ids{403, 407, 261, 378});
    CHECK(t->encode("Lily went to the park.", no_bos()) == Ids{317, 263, 377, 267, 265, 282, 295, 433, 426});
    CHECK(t->encode("Hello world", no_bos()) == Ids{346, 306, 414, 263, 304, 341});
    const Ids story = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317, 426, 338};
    CHECK(t->decode(story) == "Once upon a time, there was a little girl named Lily. She");
  }
  const auto doc = nlohmann::json::parse(
      test::read_file(test::reference_dir() + "/stories260K.llama2c-reference.json"));
  const auto& c0 = doc.at("cases").at(0);
  REQUIRE(c0.at("prompt") == "Once upon a time");
  Ids all = c0.at("prompt_ids").get<Ids>();
  for (int32_t id : c0.at("greedy_ids").get<Ids>()) all.push_back(id);
  const std::string text = stories_l2c().decode(all);
  INFO(text);
  CHECK(text.rfind("Once upon a time,", 0) == 0);
  CHECK(stories_gguf().decode(all) == text);
}

TEST_CASE("GGUF and tokenizer.bin give the same stories260K vocab", "[tokenizer]") {
  const Vocab& a = stories_l2c().vocab();
  const Vocab& b = stories_gguf().vocab();
  CHECK(a.pieces == b.pieces);
  CHECK(a.scores == b.scores);
  CHECK(a.types == b.types);
  CHECK(a.bos == 1);
  CHECK(b.bos == 1);
  CHECK(a.eos == 2);
  CHECK(b.eos == 2);
  CHECK(a.unk == 0);
  CHECK(b.unk == 0);
  CHECK(b.pad == -1);  // stored as u32 0xFFFFFFFF
  CHECK(a.spm_flavor == Vocab::SpmFlavor::kLlama2c);
  CHECK(b.spm_flavor == Vocab::SpmFlavor::kLlamaCpp);
  CHECK((b.add_bos && b.add_space_prefix && !b.add_eos));
}

TEST_CASE("GGUF vocab metadata of the Llama 2 and GPT-2 files", "[tokenizer]") {
  const Vocab& v = llama_spm().vocab();
  CHECK(v.n_vocab() == 32000);
  CHECK(v.pieces[13] == "<0x0A>");
  CHECK(v.types[13] == TokenType::kByte);
  CHECK(v.types[1] == TokenType::kControl);
  CHECK(v.types[0] == TokenType::kUnknown);
  CHECK((v.add_bos && !v.add_eos && v.add_space_prefix));

  Vocab g = gguf_vocab("tokenizer-tests/ggml-vocab-gpt-2.gguf");
  CHECK(g.model == Vocab::Model::kBpe);
  CHECK(g.n_vocab() == 50257);
  CHECK(g.merges.size() == 50000);
  CHECK(g.bos == 50256);
  CHECK(g.eos == 50256);
  CHECK(!g.add_space_prefix);
  CHECK(g.pre == "gpt2");  // from tokenizer.ggml.pre "gpt-2"; its vectors: test_tokenizer_bpe.cpp
  auto t = Tokenizer::create(std::move(g));
  CHECK(t.ok());

  // The random-weight Llama carries the same 32,000-token vocab.
  const Vocab r = gguf_vocab("llama-2-tiny-random/llama-2-tiny-random.gguf");
  CHECK(r.pieces == v.pieces);
  CHECK(r.scores == v.scores);
}

// ---------------------------------------------------------------------------------------------
// Differential: the fast encoder against the naive references on random text
// ---------------------------------------------------------------------------------------------

TEST_CASE("llama2.c vocabs match a transcription of run.c encode() on random text", "[tokenizer]") {
  struct Case {
    const char* rel;
    const Tokenizer* tok;
  };
  for (const Case& c : {Case{"stories260K/tok512.bin", &stories_l2c()},
                        Case{"aidreams260K/tok512.bin", &aidreams_l2c()}}) {
    const RunCReference ref(test::read_file(test::model_path(c.rel)));
    REQUIRE(ref.vocab.size() == 512);
    std::mt19937 rng(1234);
    for (int i = 0; i < 300; ++i) {
      const std::string text = random_text(rng, 1 + rng() % 24, /*invalid=*/i % 2 == 1);
      INFO(c.rel << " text \"" << printable(text) << "\"");
      const Ids got = c.tok->encode(text);
      REQUIRE(got == ref.encode(text));
      REQUIRE(c.tok->decode(got) == text);
    }
  }
}

TEST_CASE("llama.cpp flavour matches a rescanning reference on random text", "[tokenizer]") {
  std::mt19937 rng(99);
  for (const Tokenizer* t : {&llama_spm(), &stories_gguf()}) {
    const LlamaCppReference ref(t->vocab());
    for (int i = 0; i < 300; ++i) {
      const std::string text = random_text(rng, 1 + rng() % 24, /*invalid=*/i % 2 == 1);
      INFO("text \"" << printable(text) << "\"");
      REQUIRE(t->encode(text, no_bos()) == ref.encode(text));
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Round trips and decoding rules
// ---------------------------------------------------------------------------------------------

TEST_CASE("decode(encode(x)) == x", "[tokenizer]") {
  const std::vector<std::string> texts = {
      "", "a", " ", "  ", "   leading spaces", "trailing spaces   ", "Hello world", "Hello\nworld\n",
      "\n\nnewlines first", "tabs\tand\r\ncarriage returns", "Ünïcödé façade naïve", "日本語のテキスト",
      "Привет, мир!", "emoji 🦙🦙 and 👍🏽 and 🇺🇸", "math ∑∫√ and € £ ¥",
      "mixed   runs    of     spaces",
      "<s> and </s> are plain text here", "<0x41> is text too", "\xC2\xA0non-breaking", "quotes \"'`",
      "a\x01" "b\x7F" "c", "Once upon a time, there was a little girl named Lily."};
  struct Named {
    const char* name;
    const Tokenizer* tok;
  };
  for (const Named& n : {Named{"llama-spm", &llama_spm()}, Named{"stories tok512", &stories_l2c()},
                         Named{"stories gguf", &stories_gguf()}, Named{"aidreams tok512", &aidreams_l2c()}}) {
    for (const std::string& x : texts) {
      INFO(n.name << ": \"" << printable(x) << "\"");
      for (bool bos : {true, false}) {
        EncodeOptions opt;
        opt.add_bos = bos;
        const Ids ids = n.tok->encode(x, opt);
        CHECK(n.tok->decode(ids) == x);
        // Streaming one token at a time gives the same bytes.
        std::string streamed;
        int32_t prev = -1;
        for (int32_t id : ids) {
          streamed += n.tok->decode_token(id, prev);
          prev = id;
        }
        CHECK(streamed == x);
      }
    }
  }
  // Invalid UTF-8 survives as byte tokens.
  const std::string invalid = "ok \xFF\xFE \xC3 \xE2\x82 end\x80";
  for (const Tokenizer* t : {&llama_spm(), &stories_l2c()}) CHECK(t->decode(t->encode(invalid)) == invalid);
}

TEST_CASE("literal U+2581 in the text: llama.cpp reads a space, llama2.c reads bytes", "[tokenizer]") {
  CHECK(stories_gguf().encode("a▁b", no_bos()) == stories_gguf().encode("a b", no_bos()));
  const Ids l2c = stories_l2c().encode("a▁b", no_bos());
  CHECK(l2c != stories_l2c().encode("a b", no_bos()));
  CHECK(std::count_if(l2c.begin(), l2c.end(), [](int32_t id) { return id >= 3 && id < 259; }) == 3);
  CHECK(stories_l2c().decode(l2c) == "a▁b");
}

TEST_CASE("decode_token rules", "[tokenizer]") {
  const Tokenizer& t = llama_spm();
  const int32_t hello = t.encode("Hello", no_bos()).at(0);  // "▁Hello"
  CHECK(t.vocab().pieces[size_t(hello)] == "▁Hello");
  CHECK(t.decode_token(hello, -1) == "Hello");        // dummy prefix dropped at the start
  CHECK(t.decode_token(hello, t.bos()) == "Hello");   // and after BOS
  CHECK(t.decode_token(hello, hello) == " Hello");    // kept elsewhere
  CHECK(t.decode_token(t.bos(), -1).empty());         // control tokens decode to nothing
  CHECK(t.decode_token(t.eos(), hello).empty());
  CHECK(t.decode_token(13, hello) == "\n");            // <0x0A>
  CHECK(t.decode_token(3 + 0x20, -1) == " ");          // a byte-token space is never dropped
  CHECK(t.decode_token(0, hello) == "\xE2\x96\x85");   // <unk> → ▅, as llama.cpp
  // Ids outside the vocab decode to nothing (the server validates ids before they get here).
  CHECK(t.decode_token(-1, -1).empty());
  CHECK(t.decode_token(-7, hello).empty());
  CHECK(t.decode_token(t.n_vocab(), hello).empty());
  CHECK(t.decode_token(INT32_MAX, hello).empty());
  const Ids with_bad = {t.bos(), hello, 99999, hello};
  CHECK(t.decode(with_bad) == "Hello Hello");
}

TEST_CASE("BOS and EOS follow EncodeOptions and the vocab flags", "[tokenizer]") {
  const Tokenizer& t = stories_l2c();
  CHECK(t.encode("") == Ids{1});
  CHECK(t.encode("", no_bos()).empty());
  CHECK(t.encode("Once upon a time") == Ids{1, 403, 407, 261, 378});
  EncodeOptions eos;
  eos.add_eos = true;
  CHECK(t.encode("Once upon a time", eos) == Ids{1, 403, 407, 261, 378});  // vocab.add_eos is off

  Vocab v = t.vocab();
  v.add_eos = true;
  v.add_bos = false;
  auto t2 = test::make_tokenizer(std::move(v));
  CHECK(t2->encode("Once upon a time", eos) == Ids{403, 407, 261, 378, 2});
  CHECK(t2->encode("Once upon a time") == Ids{403, 407, 261, 378});
  CHECK(t2->encode("", eos) == Ids{2});

  Vocab np = stories_gguf().vocab();
  np.add_space_prefix = false;
  auto t3 = test::make_tokenizer(std::move(np));
  const Ids ids = t3->encode("Once upon", no_bos());
  CHECK(ids != Ids{403, 407});
  CHECK(t3->vocab().pieces[size_t(ids.at(0))].rfind("O", 0) == 0);
  CHECK(t3->decode(ids) == "Once upon");
}

TEST_CASE("tokenizer: EncodeOptions::add_space_prefix = false encodes the text exactly as given", "[tokenizer]") {
  EncodeOptions raw;
  raw.add_bos = false;
  raw.add_space_prefix = false;
  struct Named {
    const char* name;
    const Tokenizer* tok;
  };
  for (const Named& n : {Named{"llama-spm", &llama_spm()}, Named{"stories tok512", &stories_l2c()},
                         Named{"stories gguf", &stories_gguf()}, Named{"aidreams tok512", &aidreams_l2c()}}) {
    INFO(n.name);
    const Tokenizer& t = *n.tok;
    auto spelled = [&](const Ids& ids) {
      std::string s;
      for (int32_t id : ids) s += t.vocab().pieces[size_t(id)];
      return s;
    };
    // Default: the dummy prefix is still added.
    const Ids with_prefix = t.encode("Hello", no_bos());
    CHECK(spelled(with_prefix) == "\xE2\x96\x81Hello");
    // Without it, no "▁" anywhere, and the text round-trips.
    const Ids bare = t.encode("Hello", raw);
    CHECK(spelled(bare) == "Hello");
    CHECK(t.decode(bare) == "Hello");
    // A leading space in the text now plays the prefix's part.
    CHECK(t.encode(" Hello", raw) == with_prefix);
    CHECK(t.encode(" Hello world", raw) == t.encode("Hello world", no_bos()));
    // BOS and empty text are unaffected.
    EncodeOptions bos = raw;
    bos.add_bos = true;
    Ids want = {t.bos()};
    want.insert(want.end(), bare.begin(), bare.end());
    CHECK(t.encode("Hello", bos) == want);
    CHECK(t.encode("", raw).empty());
    CHECK(t.encode("", bos) == Ids{t.bos()});
  }
  // The two stories260K flavours still agree (they differ only on invalid UTF-8 and a literal "▁").
  CHECK(stories_l2c().encode("Hello", raw) == stories_gguf().encode("Hello", raw));
}

// ---------------------------------------------------------------------------------------------
// Hand-built vocabs: user-defined tokens, byte coverage, validation
// ---------------------------------------------------------------------------------------------

Vocab tiny_vocab() {
  Vocab v;
  v.pieces = {"<unk>", "<s>", "</s>"};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    v.pieces.push_back(buf);
    v.types.push_back(TokenType::kByte);
  }
  for (const char* p : {"▁", "a", "b", "▁a", "▁b", "ab", "▁ab"}) {
    v.pieces.push_back(p);
    v.types.push_back(TokenType::kNormal);
  }
  v.scores.assign(v.pieces.size(), 0.f);
  for (size_t i = 259; i < v.pieces.size(); ++i) v.scores[i] = -float(i - 259);
  v.bos = 1;
  v.eos = 2;
  v.unk = 0;
  return v;
}

TEST_CASE("user-defined tokens are split out before merging (llama.cpp flavour)", "[tokenizer]") {
  Vocab v = tiny_vocab();
  v.pieces.push_back("<tool>");
  v.types.push_back(TokenType::kUserDefined);
  v.scores.push_back(0.f);
  auto t = test::make_tokenizer(std::move(v));
  const int32_t tool = id_of(*t, "<tool>");
  // Raw text after a user-defined token gets the space prefix again, as in llama.cpp.
  CHECK(t->encode("a<tool>b", no_bos()) == Ids{id_of(*t, "▁a"), tool, id_of(*t, "▁b")});
  CHECK(t->encode("<tool>", no_bos()) == Ids{tool});
  CHECK(t->encode("ab<tool><tool>", no_bos()) == Ids{id_of(*t, "▁ab"), tool, tool});
  CHECK(t->decode(t->encode("ab<tool>", no_bos())) == "ab<tool>");
  // Control tokens are never parsed from text.
  CHECK(t->encode("<s>", no_bos()).size() > 1);
  // Without the dummy prefix, raw text after a user-defined token is not prefixed either.
  EncodeOptions raw = no_bos();
  raw.add_space_prefix = false;
  CHECK(t->encode("a<tool>b", raw) == Ids{id_of(*t, "a"), tool, id_of(*t, "b")});
}

TEST_CASE("merging picks the best score, leftmost on ties", "[tokenizer]") {
  Vocab v = tiny_vocab();
  auto t = test::make_tokenizer(v);
  // "▁ab" beats stopping at "▁a"+"b": ids ▁ab.
  CHECK(t->encode("ab", no_bos()) == Ids{id_of(*t, "▁ab")});
  CHECK(t->encode("ba", no_bos()) == Ids{id_of(*t, "▁b"), id_of(*t, "a")});
  // Unknown characters fall back to bytes.
  CHECK(t->encode("ac", no_bos()) == Ids{id_of(*t, "▁a"), 3 + 'c'});
  // Equal scores: the leftmost pair merges first ("xx" would otherwise pair differently).
  Vocab w = tiny_vocab();
  w.pieces.push_back("aa");
  w.types.push_back(TokenType::kNormal);
  w.scores.push_back(5.f);
  w.add_space_prefix = false;
  auto tw = test::make_tokenizer(std::move(w));
  CHECK(tw->encode("aaa", no_bos()) == Ids{id_of(*tw, "aa"), id_of(*tw, "a")});
}

// A tokenizer.bin in llama2.c's export format (plain spaces, "\n<s>\n"), 256 byte tokens at 3..258.
std::string llama2c_file(const std::vector<std::pair<std::string, float>>& extra) {
  std::vector<std::pair<std::string, float>> toks = {{"<unk>", 0.f}, {"\n<s>\n", 0.f}, {"\n</s>\n", 0.f}};
  for (int b = 0; b < 256; ++b) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "<0x%02X>", b);
    toks.emplace_back(buf, 0.f);
  }
  toks.insert(toks.end(), extra.begin(), extra.end());
  int32_t max_len = 0;
  for (const auto& t : toks) max_len = std::max(max_len, int32_t(t.first.size()));
  std::string out(reinterpret_cast<const char*>(&max_len), 4);
  for (const auto& [piece, score] : toks) {
    const int32_t len = int32_t(piece.size());
    out.append(reinterpret_cast<const char*>(&score), 4);
    out.append(reinterpret_cast<const char*>(&len), 4);
    out += piece;
  }
  return out;
}

TEST_CASE("llama2.c flavour: unmatched characters and scores <= -1e10 never merge", "[tokenizer]") {
  const std::string bytes = llama2c_file({{" ", -1.f}, {"x", -2.f}, {" é", -3.f}, {" x", -2e10f}, {"xx", -4.f}});
  const std::string path = test::temp_dir() + "/flavours.bin";
  write_bytes(path, bytes);
  const RunCReference ref(bytes);
  auto l2c = test::make_tokenizer(read_llama2c_vocab(path, -1));
  Vocab cpp_vocab = l2c->vocab();
  cpp_vocab.spm_flavor = Vocab::SpmFlavor::kLlamaCpp;
  auto cpp = test::make_tokenizer(std::move(cpp_vocab));
  const int32_t sp = 259, x = 260, sp_e = 261, sp_x = 262, xx = 263;

  CHECK(ref.encode("é") == Ids{1, sp, 3 + 0xC3, 3 + 0xA9});
  CHECK(l2c->encode("é") == ref.encode("é"));
  CHECK(cpp->encode("é") == Ids{1, sp_e});  // llama.cpp merges the raw character

  CHECK(ref.encode("x") == Ids{1, sp, x});
  CHECK(l2c->encode("x") == ref.encode("x"));
  CHECK(cpp->encode("x") == Ids{1, sp_x});

  CHECK(ref.encode("xx") == Ids{1, sp, xx});
  CHECK(l2c->encode("xx") == ref.encode("xx"));
  for (const char* text : {"x é xx", "éé x", "xxx é", " x", "x  x"}) {
    INFO(text);
    CHECK(l2c->encode(text) == ref.encode(text));
    CHECK(l2c->decode(l2c->encode(text)) == text);
    CHECK(cpp->decode(cpp->encode(text)) == text);
  }
}

TEST_CASE("byte fallback without byte tokens uses unk, and create() rejects bad vocabs", "[tokenizer]") {
  Vocab v;
  v.pieces = {"<unk>", "<s>", "</s>", "▁", "a"};
  v.types = {TokenType::kUnknown, TokenType::kControl, TokenType::kControl, TokenType::kNormal,
             TokenType::kNormal};
  v.scores = {0, 0, 0, -1, -2};
  v.bos = 1;
  v.eos = 2;
  v.unk = 0;
  {
    auto t = test::make_tokenizer(v);
    CHECK(t->encode("ab", no_bos()) == Ids{3, 4, 0});
  }
  auto expect_invalid = [](Vocab bad, std::string_view what) {
    auto r = Tokenizer::create(std::move(bad));
    INFO(what << ": " << r.status().to_string());
    REQUIRE(!r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
  };
  {
    Vocab b = v;
    b.unk = -1;
    expect_invalid(b, "no byte tokens and no unk");
  }
  {
    Vocab b = v;
    b.scores.pop_back();
    expect_invalid(b, "sizes differ");
  }
  {
    Vocab b = v;
    b.scores[4] = std::nanf("");
    expect_invalid(b, "NaN score");
  }
  {
    Vocab b = v;
    b.bos = 5;
    expect_invalid(b, "bos out of range");
  }
  {
    Vocab b = v;
    b.types[4] = TokenType(9);
    expect_invalid(b, "bad token type");
  }
  {
    Vocab b = v;
    b.types[4] = TokenType::kByte;
    expect_invalid(b, "byte token that is not <0xAB>");
  }
  expect_invalid(Vocab{}, "empty vocab");
}

// ---------------------------------------------------------------------------------------------
// Malformed tokenizer.bin
// ---------------------------------------------------------------------------------------------

TEST_CASE("read_llama2c_vocab: truncated and corrupt files are errors, not crashes", "[tokenizer]") {
  const std::string good = test::read_file(test::model_path("stories260K/tok512.bin"));
  const std::string path = test::temp_dir() + "/tok.bin";

  auto expect_invalid = [&](std::string_view bytes, int32_t n_vocab, std::string_view what) {
    write_bytes(path, bytes);
    auto r = read_llama2c_vocab(path, n_vocab);
    INFO(what << ": " << r.status().to_string());
    REQUIRE(!r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK(r.status().message().find(path) != std::string::npos);
  };

  SECTION("truncated at every kind of boundary") {
    for (size_t len : {size_t(0), size_t(2), size_t(4), size_t(7), size_t(12), size_t(17), good.size() / 2,
                       good.size() - 1}) {
      expect_invalid(std::string_view(good).substr(0, len), 512, "truncated to " + std::to_string(len));
    }
  }
  SECTION("more tokens asked for than the file holds") { expect_invalid(good, 513, "n_vocab 513"); }
  SECTION("n_vocab 0") { expect_invalid(good, 0, "n_vocab 0"); }
  SECTION("negative and oversized token lengths, bad max_token_length") {
    std::string b = good;
    const int32_t neg = -5, huge = 1 << 30, zero = 0;
    std::memcpy(b.data() + 8, &neg, 4);  // token 0's length
    expect_invalid(b, 512, "negative length");
    std::memcpy(b.data() + 8, &huge, 4);
    expect_invalid(b, 512, "huge length");
    b = good;
    std::memcpy(b.data(), &zero, 4);
    expect_invalid(b, 512, "max_token_length 0");
  }
  SECTION("fewer than 3 tokens") {
    expect_invalid(good.substr(0, 4 + 8 + 5), -1, "one token");
  }
  SECTION("missing file") {
    auto r = read_llama2c_vocab(test::temp_dir() + "/does-not-exist.bin", 512);
    REQUIRE(!r.ok());
    CHECK(r.status().code() == StatusCode::kNotFound);
  }
  SECTION("n_vocab < 0 reads to the end of the file") {
    write_bytes(path, good);
    auto r = read_llama2c_vocab(path, -1);
    REQUIRE(r.ok());
    CHECK(r->n_vocab() == 512);
    CHECK(r->pieces == stories_l2c().vocab().pieces);
  }
  SECTION("random corruption never crashes") {
    std::mt19937 rng(7);
    for (int i = 0; i < 300; ++i) {
      std::string b = good;
      const int flips = 1 + int(rng() % 8);
      for (int k = 0; k < flips; ++k) b[rng() % b.size()] = char(rng());
      if (rng() % 4 == 0) b.resize(rng() % b.size());
      write_bytes(path, b);
      auto r = read_llama2c_vocab(path, (rng() % 2) ? 512 : -1);
      if (!r.ok()) {
        CHECK(r.status().code() == StatusCode::kInvalidArgument);
        continue;
      }
      auto t = Tokenizer::create(std::move(r).value());
      if (!t.ok()) continue;
      const std::string text = "Once upon a time, \xF0\x9F\xA6\x99 a llama.";
      const Ids ids = (*t)->encode(text);
      for (int32_t id : ids) CHECK((id >= 0 && id < (*t)->n_vocab()));
      (void)(*t)->decode(ids);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Performance: long prompts must not be quadratic
// ---------------------------------------------------------------------------------------------

TEST_CASE("100k-character prompts encode quickly", "[tokenizer]") {
  std::mt19937 rng(5);
  std::string raw;
  while (raw.size() < 100000) raw += random_text(rng, 8, false);
  // A literal "▁" reads as a space in llama.cpp's flavour, which would spoil the round trip.
  std::string words;
  for (size_t i = 0; i < raw.size();) {
    const bool spm_space = raw.compare(i, 3, "▁") == 0;
    words += spm_space ? '_' : raw[i];
    i += spm_space ? 3 : 1;
  }
  const std::vector<std::pair<const char*, std::string>> texts = {
      {"mixed text", words}, {"spaces", std::string(100000, ' ')}, {"one letter", std::string(100000, 'a')},
      {"newlines", std::string(100000, '\n')}, {"emoji", [] {
         std::string s;
         while (s.size() < 100000) s += "🦙";
         return s;
       }()}};
  for (const Tokenizer* t : {&llama_spm(), &stories_l2c()}) {
    for (const auto& [name, text] : texts) {
      const auto t0 = std::chrono::steady_clock::now();
      const Ids ids = t->encode(text);
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      INFO(name << ": " << ids.size() << " tokens in " << s << " s");
      CHECK(s < 2.0);  // a few tens of ms expected; quadratic would take minutes
      const bool round_trip = t->decode(ids) == text;  // (not expanded: 100 kB strings)
      CHECK(round_trip);
    }
  }
}

}  // namespace
}  // namespace kvb
