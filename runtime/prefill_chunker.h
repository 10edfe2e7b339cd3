// PrefillChunker: how many prompt tokens a step may carry while other sequences are decoding.
//
// Every decoding sequence waits for the whole step, so a step's prompt chunk is their inter-token
// latency. The chunker keeps such a step within `factor` times a decode-only step: it smooths the
// measured duration of decode-only steps, estimates the cost of a prompt token in mixed steps
// (which grows with the prompt's context: attention), and sizes the next chunk to fit, between 1
// and max_chunk tokens. With factor 0 (or before any decode-only step was measured) the chunk is
// max_chunk. The chunk never changes what a sequence computes (a prompt row's bits do not depend
// on how its prompt is cut: RowMode), only when.
//
// Threading: the engine thread only.
#pragma once

#include <algorithm>
#include <cstdint>

namespace kvb::runtime {

class PrefillChunker {
 public:
  PrefillChunker(int32_t max_chunk, double factor) : max_(std::max(1, max_chunk)), factor_(factor), chunk_(max_) {}

  int32_t chunk() const {
    if (factor_ <= 0 || decode_s_ <= 0) return max_;
    return std::clamp(int32_t(chunk_), 1, max_);
  }

  // One step: its decode rows, prompt rows and the forward's wall time.
  void observe(int32_t n_decode, int32_t n_prompt, double seconds) {
    if (n_decode <= 0 || seconds <= 0) return;
    if (n_prompt == 0) {
      decode_s_ = decode_s_ > 0 ? (1 - kAlpha) * decode_s_ + kAlpha * seconds : seconds;
      return;
    }
    if (factor_ <= 0 || decode_s_ <= 0) return;
    // The prompt rows' share of the step, per token; the room a step has for them.
    const double per_token = std::max(seconds - decode_s_, 0.05 * decode_s_) / n_prompt;
    const double fit = (factor_ - 1) * decode_s_ / per_token;
    chunk_ = std::clamp(0.5 * chunk_ + 0.5 * fit, 1.0, double(max_));
  }

 private:
  static constexpr double kAlpha = 0.2;  // weight of the newest decode-only step
  const int32_t max_;
  const double factor_;
  double chunk_;          // tokens, smoothed
  double decode_s_ = 0;   // a decode-only step, smoothed
};

}  // namespace kvb::runtime
