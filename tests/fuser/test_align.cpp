// Token alignment (fuser/align.h) on the two llama2.c vocabs, which share 396 of 512 pieces but
// split most words differently: stories260K (TinyStories) and aidreams260K.
#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <memory>

#include "engine/gguf.h"
#include "engine/vocab_loaders.h"
#include "fuser/align.h"
#include "support/test_support.h"
#include "support/model_checks.h"

namespace kvb::fuser {
namespace {

using Ids = std::vector<int32_t>;
using Lists = std::vector<Ids>;
using kvb::test::id_of;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

bool have_models() {
  for (const char* rel :
       {"stories260K/tok512.bin", "aidreams260K/tok512.bin", "stories260K/stories260K.gguf"}) {
    if (!std::filesystem::exists(test::model_path(rel))) {
      WARN("skipped: " << test::model_path(rel) << " is missing");
      return false;
    }
  }
  return true;
}

const Tokenizer& stories() {
  static const std::unique_ptr<Tokenizer> t =
      test::make_tokenizer(read_llama2c_vocab(test::model_path("stories260K/tok512.bin"), 512));
  return *t;
}
const Tokenizer& aidreams() {
  static const std::unique_ptr<Tokenizer> t =
      test::make_tokenizer(read_llama2c_vocab(test::model_path("aidreams260K/tok512.bin"), 512));
  return *t;
}

EncodeOptions raw() {
  EncodeOptions o;
  o.add_bos = false;
  o.add_space_prefix = false;
  return o;
}

std::string joined(const std::vector<std::string>& parts) {
  std::string s;
  for (const std::string& p : parts) s += p;
  return s;
}

// Characters of one token's text: valid UTF-8 (a piece) or a single byte (a byte token).
size_t token_chars(const std::string& s) {
  const auto n =
      size_t(std::count_if(s.begin(), s.end(), [](char c) { return (uint8_t(c) & 0xC0) != 0x80; }));
  return s.empty() ? 0 : std::max<size_t>(n, 1);
}

Result<Alignment> align_local(std::span<const int32_t> ids, const Tokenizer& receiver,
                              const Tokenizer& sharer, AlignStrategy strategy) {
  return align_tokens(ids, receiver, local_encoder(sharer), local_piece_texts(sharer),
                      sharer_specials(sharer), strategy);
}

const std::vector<std::string>& texts() {
  static const std::vector<std::string> t = {
      "Once upon a time, there was a little girl named Lily. She loved to play outside in the park "
      "with her friend Timmy. One day, they saw a big red ball under a tree. \"Can we play with it?\" "
      "Lily asked. Timmy smiled and said, \"Yes, let's play!\"",
      "Whispers unfold through the gentle patterns; thresholds tremble within.",
      "Wait... what?! (yes) - no; 'ok' \"fine\" [x] {y} <z> a/b \\ c|d ~e `f` #1 @2 %3 ^4 &5 *6 +7 =8",
      "In 2024, 3.14159 and 42 apples cost $17.50 (about 1,000,000 cents).",
      "Line one.\nLine two.\n\n\tIndented line.\r\nEnd",
      // "café ☕ naïve — 日本 🦙": byte fallback wherever a vocab lacks the character.
      "caf\xC3\xA9 \xE2\x98\x95 na\xC3\xAFve \xE2\x80\x94 \xE6\x97\xA5\xE6\x9C\xAC \xF0\x9F\xA6\x99",
      "  leading, double  and trailing spaces  ",
      "x",
  };
  return t;
}

// ---------------------------------------------------------------------------------------------
// token_text and the local callbacks
// ---------------------------------------------------------------------------------------------

TEST_CASE("align: token_text keeps the leading space and spells bytes as bytes", "[fuser][align]") {
  if (!have_models()) return;
  const Tokenizer& t = stories();
  const int32_t once = id_of(t, "\xE2\x96\x81Once");
  CHECK(token_text(t, once) == " Once");      // even though it starts the sequence
  CHECK(t.decode_token(once, -1) == "Once");  // (decode drops the dummy prefix)
  CHECK(token_text(t, id_of(t, "ed")) == "ed");
  CHECK(token_text(t, id_of(t, "<0x0A>")) == "\n");
  CHECK(token_text(t, id_of(t, "<0xE2>")) == "\xE2");  // partial UTF-8
  CHECK(token_text(t, t.bos()).empty());
  CHECK(token_text(t, t.eos()).empty());
  CHECK(token_text(t, t.vocab().unk) == "\xE2\x96\x85");  // ▅, as decode_token
  CHECK(token_text(t, -1).empty());
  CHECK(token_text(t, t.n_vocab()).empty());
}

TEST_CASE("align: local_encoder encodes text as given, local_piece_texts checks ids", "[fuser][align]") {
  if (!have_models()) return;
  const Tokenizer& t = stories();
  const std::vector<std::string> in = {" Once", "Once", "", "\xE2"};
  auto got = local_encoder(t)(in);
  REQUIRE(got.ok());
  REQUIRE(got->size() == 4);
  CHECK((*got)[0] == Ids{id_of(t, "\xE2\x96\x81Once")});
  CHECK((*got)[1] == t.encode("Once", raw()));
  CHECK((*got)[1] != (*got)[0]);
  CHECK((*got)[2].empty());
  CHECK((*got)[3] == Ids{id_of(t, "<0xE2>")});

  const Ids ids = {id_of(t, "\xE2\x96\x81Once"), id_of(t, "<0x0A>"), t.bos()};
  auto pieces = local_piece_texts(t)(ids);
  REQUIRE(pieces.ok());
  CHECK(*pieces == std::vector<std::string>{" Once", "\n", ""});
  for (int32_t bad : {-1, 512}) {
    const Ids one = {bad};
    auto r = local_piece_texts(t)(one);
    REQUIRE(!r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
  }

  const SharerSpecials s = sharer_specials(t);
  CHECK(s.bos == 1);
  CHECK(s.eos == 2);
  CHECK(s.unk == 0);
  CHECK(s.pad == -1);
  CHECK(s.n_vocab == 512);
}

TEST_CASE("align: strategy names", "[fuser][align]") {
  CHECK(align_strategy_name(AlignStrategy::kFirst) == "first");
  CHECK(align_strategy_name(AlignStrategy::kLongest) == "longest");
  CHECK(*parse_align_strategy("first") == AlignStrategy::kFirst);
  CHECK(*parse_align_strategy("longest") == AlignStrategy::kLongest);
  CHECK(parse_align_strategy("Longest").status().code() == StatusCode::kInvalidArgument);
  CHECK(parse_align_strategy("").status().code() == StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Different vocabularies, both directions
// ---------------------------------------------------------------------------------------------

TEST_CASE("align: stories <-> aidreams: one sharer token per receiver token, as defined", "[fuser][align]") {
  if (!have_models()) return;
  struct Dir {
    const char* name;
    const Tokenizer* receiver;
    const Tokenizer* sharer;
  };
  int32_t n_differ = 0;  // positions where first and longest pick different tokens
  for (const Dir& d : {Dir{"stories -> aidreams", &stories(), &aidreams()},
                       Dir{"aidreams -> stories", &aidreams(), &stories()}}) {
    const Tokenizer& r = *d.receiver;
    const Tokenizer& s = *d.sharer;
    for (const std::string& text : texts()) {
      INFO(d.name << ": \"" << text << "\"");
      const Ids ids = r.encode(text);  // BOS + dummy prefix, as a prompt
      REQUIRE(ids.size() >= 2);
      REQUIRE(r.decode(ids) == text);
      auto first = align_local(ids, r, s, AlignStrategy::kFirst);
      auto longest = align_local(ids, r, s, AlignStrategy::kLongest);
      INFO(first.status().to_string() << " / " << longest.status().to_string());
      REQUIRE(first.ok());
      REQUIRE(longest.ok());
      CHECK(first->receiver_texts == longest->receiver_texts);

      for (const Alignment* a : {&*first, &*longest}) {
        REQUIRE(a->sharer_ids.size() == ids.size());
        REQUIRE(a->receiver_texts.size() == ids.size());
        for (int32_t id : a->sharer_ids) CHECK((id >= 0 && id < s.n_vocab()));
        CHECK(a->sharer_ids[0] == s.bos());  // BOS → BOS
        CHECK(a->n_empty == 0);
      }
      // The texts are the receiver's text byte for byte, dummy-prefix space included, and they
      // re-encode (without a second prefix) to the receiver's ids.
      const std::string all = joined(first->receiver_texts);
      CHECK(all == " " + text);
      CHECK(r.encode(all, raw()) == Ids(ids.begin() + 1, ids.end()));

      int32_t n_multi = 0;
      for (size_t i = 1; i < ids.size(); ++i) {
        const std::string& t = first->receiver_texts[i];
        INFO("position " << i << ": \"" << t << "\"");
        const Ids cand = s.encode(t, raw());
        REQUIRE(!cand.empty());
        if (cand.size() == 1) {
          // Exactly one sharer token: it spells the same text.
          CHECK(first->sharer_ids[i] == cand[0]);
          CHECK(longest->sharer_ids[i] == cand[0]);
          CHECK(token_text(s, cand[0]) == t);
          continue;
        }
        ++n_multi;
        CHECK(first->sharer_ids[i] == cand[0]);
        // longest: the first candidate of maximal length.
        size_t best = 0;
        for (int32_t c : cand) best = std::max(best, token_chars(token_text(s, c)));
        const auto want = *std::find_if(cand.begin(), cand.end(),
                                        [&](int32_t c) { return token_chars(token_text(s, c)) == best; });
        CHECK(longest->sharer_ids[i] == want);
        if (want != cand[0]) ++n_differ;
      }
      CHECK(first->n_multi == n_multi);
      CHECK(longest->n_multi == n_multi);
    }
  }
  CHECK(n_differ > 0);
}

TEST_CASE("align: first vs longest on ' Lily' (aidreams: ' ' L il y)", "[fuser][align]") {
  if (!have_models()) return;
  const Tokenizer& r = stories();
  const Tokenizer& s = aidreams();
  const Ids ids = r.encode("Lily");
  REQUIRE(ids == Ids{r.bos(), id_of(r, "\xE2\x96\x81Lily")});
  REQUIRE(s.encode(" Lily", raw()) ==
          Ids{id_of(s, "\xE2\x96\x81"), id_of(s, "L"), id_of(s, "il"), id_of(s, "y")});

  auto first = align_local(ids, r, s, AlignStrategy::kFirst);
  auto longest = align_local(ids, r, s, AlignStrategy::kLongest);
  REQUIRE(first.ok());
  REQUIRE(longest.ok());
  CHECK(first->sharer_ids == Ids{s.bos(), id_of(s, "\xE2\x96\x81")});
  CHECK(longest->sharer_ids == Ids{s.bos(), id_of(s, "il")});
  CHECK(first->n_multi == 1);
  CHECK(longest->n_multi == 1);
}

// A scripted sharer: fixed answers, call counting, injectable failures.
struct FakeSharer {
  std::map<std::string, Ids> answers;
  std::map<int32_t, std::string> pieces;
  int n_encode_calls = 0, n_piece_calls = 0;
  std::vector<std::string> last_texts;
  Ids last_ids;

  BatchEncoder encoder() {
    return [this](std::span<const std::string> in) -> Result<Lists> {
      ++n_encode_calls;
      last_texts.assign(in.begin(), in.end());
      Lists out;
      for (const std::string& t : in) out.push_back(answers.count(t) ? answers.at(t) : Ids{});
      return out;
    };
  }
  PieceTexts piece_texts() {
    return [this](std::span<const int32_t> ids) -> Result<std::vector<std::string>> {
      ++n_piece_calls;
      last_ids.assign(ids.begin(), ids.end());
      std::vector<std::string> out;
      for (int32_t id : ids) out.push_back(pieces.at(id));
      return out;
    };
  }
};

TEST_CASE("align: longest counts characters and breaks ties to the first", "[fuser][align]") {
  if (!have_models()) return;
  const Tokenizer& r = stories();
  const Ids ids = {id_of(r, "\xE2\x96\x81the"), id_of(r, "ed"), id_of(r, "\xE2\x96\x81the")};
  FakeSharer f;
  f.answers = {{" the", {5, 6, 7, 8}}, {"ed", {9}}};
  // "é" is 2 bytes but 1 character; "ab" and "cd" tie at 2 characters.
  f.pieces = {{5, "\xC3\xA9"}, {6, "ab"}, {7, "cd"}, {8, "x"}};
  const SharerSpecials sp{1, 2, 0, -1, 10};
  auto a = align_tokens(ids, r, f.encoder(), f.piece_texts(), sp, AlignStrategy::kLongest);
  REQUIRE(a.ok());
  CHECK(a->sharer_ids == Ids{6, 9, 6});
  CHECK(a->n_multi == 2);
  // One batch each: distinct texts in order of first occurrence, distinct candidates only.
  CHECK(f.n_encode_calls == 1);
  CHECK(f.last_texts == std::vector<std::string>{" the", "ed"});
  CHECK(f.n_piece_calls == 1);
  CHECK(f.last_ids == Ids{5, 6, 7, 8});

  auto b = align_tokens(ids, r, f.encoder(), f.piece_texts(), sp, AlignStrategy::kFirst);
  REQUIRE(b.ok());
  CHECK(b->sharer_ids == Ids{5, 9, 5});
  CHECK(f.n_piece_calls == 1);  // kFirst never asks for texts
}

TEST_CASE("align: control, unknown and empty tokens map by role, fallback unk then bos", "[fuser][align]") {
  if (!have_models()) return;
  Vocab v = stories().vocab();
  v.pieces.push_back("<ctl>");
  v.types.push_back(TokenType::kControl);
  v.scores.push_back(0.f);
  v.pieces.push_back("<unused>");
  v.types.push_back(TokenType::kUnused);
  v.scores.push_back(0.f);
  v.pad = 512;  // <ctl> doubles as PAD
  v.pieces.push_back("<ctl2>");
  v.types.push_back(TokenType::kControl);
  v.scores.push_back(0.f);
  auto r = test::make_tokenizer(std::move(v));
  const int32_t pad = 512, unused = 513, ctl2 = 514, the = id_of(*r, "\xE2\x96\x81the");
  const Ids ids = {r->bos(), the, r->vocab().unk, pad, unused, ctl2, r->eos()};

  FakeSharer f;
  f.answers = {{" the", {40}}};
  {
    const SharerSpecials sp{7, 8, 9, 6, 100};
    auto a = align_tokens(ids, *r, f.encoder(), f.piece_texts(), sp, AlignStrategy::kFirst);
    REQUIRE(a.ok());
    CHECK(a->sharer_ids == Ids{7, 40, 9, 6, 9, 9, 8});
    CHECK(a->n_empty == 1);  // the unused token's text is ""
    CHECK(a->n_multi == 0);
    CHECK(f.last_texts == std::vector<std::string>{" the"});  // specials are never encoded
  }
  {
    const SharerSpecials sp{7, -1, 9, -1, 100};  // no EOS, no PAD → UNK
    auto a = align_tokens(ids, *r, f.encoder(), f.piece_texts(), sp, AlignStrategy::kFirst);
    REQUIRE(a.ok());
    CHECK(a->sharer_ids == Ids{7, 40, 9, 9, 9, 9, 9});
  }
  {
    const SharerSpecials sp{7, -1, -1, -1, 100};  // no UNK either → BOS
    auto a = align_tokens(ids, *r, f.encoder(), f.piece_texts(), sp, AlignStrategy::kFirst);
    REQUIRE(a.ok());
    CHECK(a->sharer_ids == Ids{7, 40, 7, 7, 7, 7, 7});
  }
  {
    const SharerSpecials sp{-1, -1, -1, -1, 100};  // nothing at all → 0
    auto a = align_tokens(ids, *r, f.encoder(), f.piece_texts(), sp, AlignStrategy::kFirst);
    REQUIRE(a.ok());
    CHECK(a->sharer_ids == Ids{0, 40, 0, 0, 0, 0, 0});
  }
  {
    // A text the sharer encodes to nothing also takes the fallback.
    f.answers.clear();
    const SharerSpecials sp{7, 8, 9, 6, 100};
    auto a = align_tokens(ids, *r, f.encoder(), f.piece_texts(), sp, AlignStrategy::kLongest);
    REQUIRE(a.ok());
    CHECK(a->sharer_ids == Ids{7, 9, 9, 6, 9, 9, 8});
    CHECK(a->n_empty == 2);
  }
  {
    // Only specials: the encoder is not called at all.
    const int before = f.n_encode_calls;
    const Ids only = {r->bos(), r->eos()};
    auto a = align_tokens(only, *r, f.encoder(), f.piece_texts(), SharerSpecials{7, 8, 9, 6, 100},
                          AlignStrategy::kFirst);
    REQUIRE(a.ok());
    CHECK(a->sharer_ids == Ids{7, 8});
    CHECK(f.n_encode_calls == before);
    auto empty = align_tokens({}, *r, f.encoder(), f.piece_texts(), SharerSpecials{7, 8, 9, 6, 100},
                              AlignStrategy::kFirst);
    REQUIRE(empty.ok());
    CHECK(empty->sharer_ids.empty());
  }
}

// ---------------------------------------------------------------------------------------------
// Same vocabulary
// ---------------------------------------------------------------------------------------------

TEST_CASE("align: same vocabulary: detected, and the sharer gets the receiver's ids", "[fuser][align]") {
  if (!have_models()) return;
  const Tokenizer& st = stories();
  auto again = test::make_tokenizer(read_llama2c_vocab(test::model_path("stories260K/tok512.bin"), 512));
  auto gguf_file = GgufFile::open(test::model_path("stories260K/stories260K.gguf"));
  REQUIRE(gguf_file.ok());
  auto gguf = test::make_tokenizer(read_gguf_vocab(**gguf_file));

  CHECK(same_vocabulary(st, st));
  CHECK(same_vocabulary(st, *again));
  CHECK(same_vocabulary(st, *gguf));  // other file format and SPM flavour, same ids
  CHECK(!same_vocabulary(st, aidreams()));
  {
    Vocab v = st.vocab();
    v.add_bos = false;  // encoding flags do not change what an id means
    v.add_space_prefix = false;
    CHECK(same_vocabulary(st, *test::make_tokenizer(std::move(v))));
  }
  {
    Vocab v = st.vocab();
    v.scores[300] += 1.f;
    CHECK(!same_vocabulary(st, *test::make_tokenizer(std::move(v))));
  }
  {
    Vocab v = st.vocab();
    v.pad = 2;
    CHECK(!same_vocabulary(st, *test::make_tokenizer(std::move(v))));
  }
  {
    Vocab v = st.vocab();
    v.types[300] = TokenType::kUserDefined;
    CHECK(!same_vocabulary(st, *test::make_tokenizer(std::move(v))));
  }

  for (const std::string& text : texts()) {
    INFO(text);
    const Ids ids = st.encode(text);
    // The agent's path for equal vocabularies: identity.
    auto id = identity_alignment(ids, st);
    REQUIRE(id.ok());
    CHECK(id->sharer_ids == ids);
    CHECK(joined(id->receiver_texts) == " " + text);
    CHECK(id->n_multi == 0);
    CHECK(id->n_empty == 0);
    // Sanity: aligning through re-encoding with the same tokenizer changes nothing either.
    for (AlignStrategy strategy : {AlignStrategy::kFirst, AlignStrategy::kLongest}) {
      auto a = align_local(ids, st, *gguf, strategy);
      REQUIRE(a.ok());
      CHECK(a->sharer_ids == ids);
      CHECK(a->n_multi == 0);
      CHECK(a->receiver_texts == id->receiver_texts);
    }
  }
  const Ids bad = {1, 512};
  CHECK(identity_alignment(bad, st).status().code() == StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

TEST_CASE("align: errors: bad ids, bad specials, failing or lying callbacks", "[fuser][align]") {
  if (!have_models()) return;
  const Tokenizer& r = stories();
  const Tokenizer& s = aidreams();
  const Ids ids = r.encode("Lily and Timmy");
  const SharerSpecials sp = sharer_specials(s);
  const BatchEncoder enc = local_encoder(s);
  const PieceTexts texts_of = local_piece_texts(s);
  auto expect = [](const Result<Alignment>& a, StatusCode code, std::string_view needle) {
    INFO(a.status().to_string());
    REQUIRE(!a.ok());
    CHECK(a.status().code() == code);
    CHECK(a.status().message().find(needle) != std::string::npos);
  };

  SECTION("receiver ids outside the vocab") {
    for (int32_t bad : {-1, 512, INT32_MAX}) {
      Ids b = ids;
      b[2] = bad;
      expect(align_tokens(b, r, enc, texts_of, sp, AlignStrategy::kFirst), StatusCode::kInvalidArgument,
             "receiver token 2");
    }
  }
  SECTION("bad specials and strategy") {
    SharerSpecials z = sp;
    z.n_vocab = 0;
    expect(align_tokens(ids, r, enc, texts_of, z, AlignStrategy::kFirst), StatusCode::kInvalidArgument,
           "n_vocab");
    SharerSpecials b = sp;
    b.bos = 512;
    expect(align_tokens(ids, r, enc, texts_of, b, AlignStrategy::kFirst), StatusCode::kInvalidArgument,
           "bos");
    expect(align_tokens(ids, r, enc, texts_of, sp, AlignStrategy(7)), StatusCode::kInvalidArgument,
           "strategy");
  }
  SECTION("encoder failure propagates with context") {
    const BatchEncoder down = [](std::span<const std::string>) -> Result<Lists> {
      return unavailable("sharer agent unreachable");
    };
    expect(align_tokens(ids, r, down, texts_of, sp, AlignStrategy::kFirst), StatusCode::kUnavailable,
           "sharer agent unreachable");
    expect(align_tokens(ids, r, down, texts_of, sp, AlignStrategy::kFirst), StatusCode::kUnavailable,
           "sharer encoder");
  }
  SECTION("encoder answering the wrong number of lists") {
    for (int delta : {-1, +1}) {
      const BatchEncoder off = [&](std::span<const std::string> in) -> Result<Lists> {
        auto got = enc(in);
        if (delta < 0) {
          got->pop_back();
        } else {
          got->push_back({});
        }
        return got;
      };
      expect(align_tokens(ids, r, off, texts_of, sp, AlignStrategy::kFirst), StatusCode::kInternal,
             "id lists");
    }
  }
  SECTION("encoder answering ids outside the sharer vocab") {
    for (int32_t bad : {-1, 512}) {
      const BatchEncoder lying = [&](std::span<const std::string> in) -> Result<Lists> {
        auto got = enc(in);
        got->back().push_back(bad);
        return got;
      };
      expect(align_tokens(ids, r, lying, texts_of, sp, AlignStrategy::kFirst), StatusCode::kInvalidArgument,
             "outside [0, 512)");
    }
  }
  SECTION("piece-text failures (longest only)") {
    const PieceTexts down = [](std::span<const int32_t>) -> Result<std::vector<std::string>> {
      return unavailable("no pieces today");
    };
    expect(align_tokens(ids, r, enc, down, sp, AlignStrategy::kLongest), StatusCode::kUnavailable,
           "no pieces today");
    CHECK(align_tokens(ids, r, enc, down, sp, AlignStrategy::kFirst).ok());  // not needed for kFirst
    const PieceTexts short_answer = [&](std::span<const int32_t> in) -> Result<std::vector<std::string>> {
      auto got = texts_of(in);
      got->pop_back();
      return got;
    };
    expect(align_tokens(ids, r, enc, short_answer, sp, AlignStrategy::kLongest), StatusCode::kInternal,
           "piece texts");
  }
}

}  // namespace
}  // namespace kvb::fuser
