// Internal to engine/: UTF-8 scanning and GPT-2's byte ↔ unicode map, for byte-level BPE.
// Not installed. All functions are pure and thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace kvb {

// The length (1..4) of the well-formed UTF-8 sequence that starts at text[off], or 0 when the
// bytes there are not one. Well-formed as in RFC 3629 / Unicode table 3-7 (what PCRE2 and Rust
// accept): no overlong forms, no surrogates (U+D800..U+DFFF), nothing above U+10FFFF, no
// truncated sequence. Precondition: off < text.size().
size_t utf8_sequence_length(std::string_view text, size_t off);

// The offset of the first byte that does not start a well-formed sequence, or npos when `text` is
// entirely well-formed UTF-8. O(n).
size_t utf8_first_invalid(std::string_view text);

// GPT-2's bytes_to_unicode (openai/gpt-2 encoder.py, used by every byte-level BPE vocab): the 188
// printable bytes '!'..'~', '¡'..'¬' and '®'..'ÿ' stand for themselves (U+0021.., as Latin-1), the
// other 68 bytes for U+0100..U+0143 in byte order (so ' ' is "Ġ" U+0120 and '\n' is "Ċ" U+010A).
// The result is that code point's UTF-8 spelling (1 or 2 bytes); it stays valid forever.
std::string_view byte_to_unicode(uint8_t b);

// Appends the byte-level spelling of raw bytes: byte_to_unicode of each byte.
void byte_level_encode(std::string_view bytes, std::string& out);

// The raw bytes a byte-level spelling stands for; nullopt when some character is not one of the
// 256 in the map (e.g. a Hugging Face added token's raw text such as "<|fim prefix|>"), or the
// spelling is not valid UTF-8.
std::optional<std::string> byte_level_decode(std::string_view spelling);

}  // namespace kvb
