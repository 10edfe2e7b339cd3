// Utf8StreamDecoder: turns the bytes of a token stream into text that is always valid UTF-8.
//
// Byte-level BPE (GPT-2, Qwen2, Llama 3) and SPM byte fallback split one character over several
// tokens: "🚀" (F0 9F 9A 80) may arrive as F0 9F | 9A | 80. A stream of text pieces must not carry
// those fragments (a proto3 `string` must be valid UTF-8, and a terminal would print garbage), so
// this decoder holds back an incomplete sequence until the bytes that complete it arrive and
// replaces what can never complete with U+FFFD.
//
// Exactly what comes out (the WHATWG Encoding Standard's UTF-8 decoder, which is Unicode's
// "U+FFFD substitution of maximal subparts", Unicode 15 §3.9 / table 3-8):
//   - every well-formed sequence (RFC 3629: no overlong forms, no surrogates U+D800..U+DFFF,
//     nothing above U+10FFFF) is emitted byte for byte, in order, as soon as its last byte arrives;
//   - a byte that cannot start a sequence (80..BF, C0, C1, F5..FF) becomes one U+FFFD;
//   - a valid prefix of a sequence (a "maximal subpart": E0 A0, F0 9F 9A, ...) that is followed by
//     a byte that cannot continue it becomes one U+FFFD, and that byte is then decoded afresh
//     (so "\xF0\x9F" "A" gives U+FFFD "A"; "\xE0\x80" gives U+FFFD U+FFFD: E0 admits only A0..BF);
//   - finish(): a prefix still held at the end becomes one U+FFFD.
// The output for a byte string does not depend on how it was split into push() calls, and for
// well-formed input it is the input itself.
//
// Threading: one instance per stream, used by one thread at a time. Pure CPU, never fails.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvb {

class Utf8StreamDecoder {
 public:
  // U+FFFD REPLACEMENT CHARACTER, UTF-8.
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

  // Appends to `out` the valid UTF-8 that `bytes` completes (possibly nothing); keeps at most 3
  // bytes of an incomplete sequence for the next call. O(bytes.size()).
  void push(std::string_view bytes, std::string& out);
  std::string push(std::string_view bytes) {
    std::string out;
    push(bytes, out);
    return out;
  }

  // Ends the stream: appends U+FFFD when a sequence is still incomplete, and resets the decoder
  // (it can then start another stream).
  void finish(std::string& out);
  std::string finish() {
    std::string out;
    finish(out);
    return out;
  }

  // Bytes held back, waiting for the rest of their sequence (0..3).
  size_t n_pending() const { return n_pending_; }

 private:
  void reset() {
    n_pending_ = n_needed_ = 0;
    lower_ = 0x80;
    upper_ = 0xBF;
  }

  char pending_[4] = {};
  size_t n_pending_ = 0;  // bytes of the current sequence seen so far
  size_t n_needed_ = 0;   // its total length (0: between sequences)
  uint8_t lower_ = 0x80, upper_ = 0xBF;  // the range the next continuation byte must fall in
};

}  // namespace kvb
