#include "engine/utf8_stream.h"

namespace kvb {

// The WHATWG UTF-8 decoder (encoding.spec.whatwg.org, "UTF-8 decoder"), keeping bytes instead of
// building code points: the lead byte fixes the length and the range of the first continuation
// byte (E0: A0..BF excludes overlongs, ED: 80..9F excludes surrogates, F0: 90..BF overlongs,
// F4: 80..8F above U+10FFFF); later continuation bytes are 80..BF.
void Utf8StreamDecoder::push(std::string_view bytes, std::string& out) {
  size_t i = 0;
  while (i < bytes.size()) {
    const auto b = static_cast<uint8_t>(bytes[i++]);
    if (n_needed_ == 0) {
      if (b < 0x80) {
        out.push_back(char(b));
        continue;
      }
      if (b >= 0xC2 && b <= 0xDF) {
        n_needed_ = 2;
      } else if (b >= 0xE0 && b <= 0xEF) {
        n_needed_ = 3;
        if (b == 0xE0) lower_ = 0xA0;
        if (b == 0xED) upper_ = 0x9F;
      } else if (b >= 0xF0 && b <= 0xF4) {
        n_needed_ = 4;
        if (b == 0xF0) lower_ = 0x90;
        if (b == 0xF4) upper_ = 0x8F;
      } else {
        out += kReplacement;  // 80..BF, C0, C1, F5..FF never start a sequence
        continue;
      }
      pending_[n_pending_++] = char(b);
      continue;
    }
    if (b < lower_ || b > upper_) {
      // The held prefix is a maximal subpart: one U+FFFD, then `b` starts afresh.
      reset();
      out += kReplacement;
      --i;  // not consumed
      continue;
    }
    lower_ = 0x80;
    upper_ = 0xBF;
    pending_[n_pending_++] = char(b);
    if (n_pending_ == n_needed_) {
      out.append(pending_, n_pending_);
      reset();
    }
  }
}

void Utf8StreamDecoder::finish(std::string& out) {
  if (n_needed_ != 0) out += kReplacement;
  reset();
}

}  // namespace kvb
