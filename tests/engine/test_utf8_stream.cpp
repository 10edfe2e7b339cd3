// engine/utf8_stream.h: valid UTF-8 out of a token stream whose pieces split characters.
// Expected strings come from Unicode 15 §3.9 (tables 3-7, 3-8); the property tests compare the
// streaming decoder, under every split of its input, with an independent whole-string reference
// (tests/support/utf8_reference.h).
#include <catch2/catch.hpp>

#include <random>
#include <string>
#include <vector>

#include "engine/unicode.h"
#include "engine/utf8_stream.h"
#include "support/utf8_reference.h"

using namespace kvb;

namespace {

const std::string kFffd = "\xEF\xBF\xBD";

// Decodes `bytes` pushed as the pieces that `cuts` (a bit per inner boundary) delimit; checks
// that every piece's output is valid UTF-8 on its own.
std::string decode_split(std::string_view bytes, uint64_t cuts) {
  Utf8StreamDecoder d;
  std::string all, piece;
  size_t start = 0;
  for (size_t i = 1; i <= bytes.size(); ++i) {
    if (i == bytes.size() || ((cuts >> (i - 1)) & 1)) {
      piece = d.push(bytes.substr(start, i - start));
      INFO("piece [" << start << ", " << i << ")");
      REQUIRE(utf8_first_invalid(piece) == std::string::npos);
      all += piece;
      start = i;
    }
  }
  const std::string tail = d.finish();
  REQUIRE(utf8_first_invalid(tail) == std::string::npos);
  return all + tail;
}

// Every way to split `bytes` (up to 12 bytes: 2^11 splits) gives `want`.
void check_all_splits(std::string_view bytes, const std::string& want) {
  REQUIRE(bytes.size() <= 12);
  const uint64_t n_splits = bytes.empty() ? 1 : uint64_t(1) << (bytes.size() - 1);
  for (uint64_t cuts = 0; cuts < n_splits; ++cuts) {
    INFO("cuts " << cuts);
    REQUIRE(decode_split(bytes, cuts) == want);
  }
}

}  // namespace

TEST_CASE("utf8 stream: a 4-byte emoji is held back until its last byte at every boundary", "[utf8]") {
  const std::string rocket = "\xF0\x9F\x9A\x80";  // U+1F680
  for (size_t cut = 1; cut < rocket.size(); ++cut) {
    Utf8StreamDecoder d;
    INFO("cut " << cut);
    REQUIRE(d.push(rocket.substr(0, cut)).empty());
    REQUIRE(d.n_pending() == cut);
    REQUIRE(d.push(rocket.substr(cut)) == rocket);
    REQUIRE(d.n_pending() == 0);
    REQUIRE(d.finish().empty());
  }
  // One byte per token, as byte-level BPE emits an emoji it has no merge for.
  Utf8StreamDecoder d;
  std::vector<std::string> out;
  for (const char c : rocket) out.push_back(d.push(std::string_view(&c, 1)));
  REQUIRE(out == std::vector<std::string>{"", "", "", rocket});
  check_all_splits("\xF0\x9F\x9A\x80\xF0\x9F\x94\xA5\xF0\x9F\x8E\x89", "\xF0\x9F\x9A\x80\xF0\x9F\x94\xA5\xF0\x9F\x8E\x89");
}

TEST_CASE("utf8 stream: CJK Cyrillic and mixed scripts pass through unchanged under every split", "[utf8]") {
  check_all_splits("中文字", "中文字");          // 3-byte sequences
  check_all_splits("Привет", "Привет");  // 2-byte sequences (12 bytes)
  check_all_splits("aé中🚀b", "aé中🚀b");
  check_all_splits("", "");
}

TEST_CASE("utf8 stream: invalid bytes become U+FFFD per maximal subpart", "[utf8]") {
  // Unicode 15 table 3-8: 61 F1 80 80 E1 80 C2 62 80 63 80 BF 64.
  check_all_splits("\x61\xF1\x80\x80\xE1\x80\xC2\x62\x80\x63\x80\xBF",
                   "a" + kFffd + kFffd + kFffd + "b" + kFffd + "c" + kFffd + kFffd);
  check_all_splits("\x80", kFffd);                            // a lone continuation byte
  check_all_splits("\xFF\xFE", kFffd + kFffd);                // never in UTF-8
  check_all_splits("\xF0\x9F" "A", kFffd + "A");              // cut short by ASCII: one U+FFFD, then "A"
  check_all_splits("\xE4\xB8\xF0\x9F\x9A\x80", kFffd + "\xF0\x9F\x9A\x80");  // a new lead restarts
}

TEST_CASE("utf8 stream: overlong forms surrogates and code points above U+10FFFF are rejected", "[utf8]") {
  check_all_splits("\xC0\xAF", kFffd + kFffd);                  // overlong "/": C0 never leads
  check_all_splits("\xC1\xBF", kFffd + kFffd);
  check_all_splits("\xE0\x80\xAF", kFffd + kFffd + kFffd);      // overlong: E0 takes A0..BF only
  check_all_splits("\xF0\x8F\xBF\xBF", kFffd + kFffd + kFffd + kFffd);
  check_all_splits("\xED\xA0\x80", kFffd + kFffd + kFffd);      // U+D800, a surrogate
  check_all_splits("\xED\xBF\xBF", kFffd + kFffd + kFffd);      // U+DFFF
  check_all_splits("\xED\x9F\xBF", "\xED\x9F\xBF");             // U+D7FF is fine
  check_all_splits("\xF4\x90\x80\x80", kFffd + kFffd + kFffd + kFffd);  // U+110000
  check_all_splits("\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF");     // U+10FFFF is fine
  check_all_splits("\xF8\x88\x80\x80\x80", kFffd + kFffd + kFffd + kFffd + kFffd);  // 5-byte form
}

TEST_CASE("utf8 stream: a sequence truncated at the end flushes as one U+FFFD", "[utf8]") {
  Utf8StreamDecoder d;
  REQUIRE(d.push("ok \xF0\x9F\x9A") == "ok ");
  REQUIRE(d.n_pending() == 3);
  REQUIRE(d.finish() == kFffd);
  REQUIRE(d.n_pending() == 0);
  REQUIRE(d.finish().empty());  // nothing left
  // The decoder starts a new stream after finish().
  REQUIRE(d.push("\x9A\x80") == kFffd + kFffd);
  REQUIRE(d.push("\xE4\xB8").empty());
  REQUIRE(d.finish() == kFffd);
  check_all_splits("x\xE4\xB8", "x" + kFffd);
  check_all_splits("\xC3", kFffd);
}

TEST_CASE("utf8 stream: random bytes under random splits match the whole-string reference", "[utf8]") {
  std::mt19937_64 rng(20240615);
  // Bytes biased towards the interesting ones: leads, continuations, ASCII, the boundary values.
  const std::vector<uint8_t> alphabet = {0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2,
                                         0xDF, 0xE0, 0xE1, 0xED, 0xEF, 0xF0, 0xF1, 0xF4, 0xF5, 0xFF};
  for (int round = 0; round < 3000; ++round) {
    std::string bytes(rng() % 24, '\0');
    for (char& c : bytes) c = char(rng() % 3 == 0 ? uint8_t(rng()) : alphabet[rng() % alphabet.size()]);
    const std::string want = test::utf8_replace_reference(bytes);
    REQUIRE(utf8_first_invalid(want) == std::string::npos);
    if (utf8_first_invalid(bytes) == std::string::npos) REQUIRE(want == bytes);
    INFO("round " << round);
    REQUIRE(decode_split(bytes, rng()) == want);
    REQUIRE(decode_split(bytes, 0) == want);
    REQUIRE(decode_split(bytes, ~uint64_t(0)) == want);
  }
}
