// UTF-8 scanning and GPT-2's byte ↔ unicode map (see engine/unicode.h).
#include "engine/unicode.h"

#include <array>

namespace kvb {

size_t utf8_sequence_length(std::string_view text, size_t off) {
  const auto b = [&](size_t i) { return uint8_t(text[off + i]); };
  const size_t left = text.size() - off;
  const uint8_t c = b(0);
  if (c < 0x80) return 1;
  // Second-byte ranges from Unicode table 3-7; later bytes are plain continuations.
  uint8_t lo = 0x80, hi = 0xBF;
  size_t n;
  if (c >= 0xC2 && c <= 0xDF) {
    n = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    n = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    n = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // above U+10FFFF
  } else {
    return 0;  // continuation byte, C0/C1 (overlong), F5..FF
  }
  if (left < n || b(1) < lo || b(1) > hi) return 0;
  for (size_t i = 2; i < n; ++i) {
    if ((b(i) & 0xC0) != 0x80) return 0;
  }
  return n;
}

size_t utf8_first_invalid(std::string_view text) {
  for (size_t off = 0; off < text.size();) {
    if (uint8_t(text[off]) < 0x80) {  // ASCII fast path
      ++off;
      continue;
    }
    const size_t n = utf8_sequence_length(text, off);
    if (n == 0) return off;
    off += n;
  }
  return std::string_view::npos;
}

namespace {

struct ByteMap {
  std::array<std::string, 256> spelling;  // byte → UTF-8 of its code point
  std::array<int16_t, 0x144> byte_of{};   // code point (< U+0144) → byte, or -1

  ByteMap() {
    byte_of.fill(-1);
    auto printable = [](int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); };
    int next = 0x100;
    for (int b = 0; b < 256; ++b) {
      const int cp = printable(b) ? b : next++;
      std::string& s = spelling[size_t(b)];
      if (cp < 0x80) {
        s = std::string(1, char(cp));
      } else {
        s = {char(0xC0 | (cp >> 6)), char(0x80 | (cp & 0x3F))};
      }
      byte_of[size_t(cp)] = int16_t(b);
    }
  }
};

const ByteMap& byte_map() {
  static const ByteMap m;
  return m;
}

}  // namespace

std::string_view byte_to_unicode(uint8_t b) { return byte_map().spelling[b]; }

void byte_level_encode(std::string_view bytes, std::string& out) {
  const ByteMap& m = byte_map();
  for (char c : bytes) out += m.spelling[uint8_t(c)];
}

std::optional<std::string> byte_level_decode(std::string_view spelling) {
  const ByteMap& m = byte_map();
  std::string out;
  out.reserve(spelling.size());
  for (size_t off = 0; off < spelling.size();) {
    const uint8_t c = uint8_t(spelling[off]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      off += 1;
    } else if (c >= 0xC2 && c <= 0xC5 && off + 1 < spelling.size() &&
               (uint8_t(spelling[off + 1]) & 0xC0) == 0x80) {
      cp = uint32_t(c & 0x1F) << 6 | (uint8_t(spelling[off + 1]) & 0x3F);
      off += 2;
    } else {
      return std::nullopt;  // a character beyond U+017F (or invalid UTF-8): not in the map
    }
    if (cp >= m.byte_of.size() || m.byte_of[cp] < 0) return std::nullopt;
    out += char(m.byte_of[cp]);
  }
  return out;
}

}  // namespace kvb
