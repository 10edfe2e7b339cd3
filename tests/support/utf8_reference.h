// A whole-string reference for engine/utf8_stream.h, written independently of it: Unicode 15
// §3.9 table 3-7 (well-formed byte sequences) with "U+FFFD substitution of maximal subparts"
// (the practice of table 3-8 and the WHATWG decoder). Header-only; tests only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvb::test {

// The byte range allowed at position k (1..3) of a sequence that starts with `lead` (table 3-7).
inline bool utf8_continuation_ok(uint8_t lead, size_t k, uint8_t b) {
  uint8_t lo = 0x80, hi = 0xBF;
  if (k == 1) {
    if (lead == 0xE0) lo = 0xA0;
    if (lead == 0xED) hi = 0x9F;
    if (lead == 0xF0) lo = 0x90;
    if (lead == 0xF4) hi = 0x8F;
  }
  return b >= lo && b <= hi;
}

// The sequence length a lead byte announces (table 3-7), 0 for a byte that starts none.
inline size_t utf8_announced_length(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xC2 && lead <= 0xDF) return 2;
  if (lead >= 0xE0 && lead <= 0xEF) return 3;
  if (lead >= 0xF0 && lead <= 0xF4) return 4;
  return 0;
}

// `bytes` with every ill-formed part replaced: each maximal subpart (the longest prefix of a
// well-formed sequence, at least one byte) that is not a whole sequence becomes one U+FFFD.
inline std::string utf8_replace_reference(std::string_view bytes) {
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    const auto lead = uint8_t(bytes[i]);
    const size_t n = utf8_announced_length(lead);
    size_t ok = n == 0 ? 0 : 1;  // bytes of the longest well-formed prefix
    while (ok > 0 && ok < n && i + ok < bytes.size() && utf8_continuation_ok(lead, ok, uint8_t(bytes[i + ok]))) ++ok;
    if (n != 0 && ok == n) {
      out.append(bytes.substr(i, n));
      i += n;
    } else {
      out += "\xEF\xBF\xBD";
      i += ok == 0 ? 1 : ok;
    }
  }
  return out;
}

}  // namespace kvb::test
