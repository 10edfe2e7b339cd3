// PrefillChunker: how many prompt tokens a step may carry while other sequences are decoding.
//
// Every decoding sequence waits for the whole step, so a step's prompt chunk is their inter-token
// latency. The chunker keeps such a step within `factor` times a decode-only step. It smooths the
// measured duration of decode-only steps and fits the extra time of a mixed step as a + b * c for
// a chunk of c tokens, by least squares over the last kWindow mixed steps (recent ones weigh more):
//   b — a prompt token's own cost (it grows with the prompt's context: attention);
//   a — what any prompt rows cost at all: ~0 where they share the decode rows' weight reads
//       (Weight::mode_invariant: the CPU's weights but Q8_0), a whole extra pass over the weights
//       where they do not (Q8_0 on the CPU, CUDA). Without it, a per-token model charges that pass
//       to each token and shrinks the chunk to 1 token a step, which then pays the pass per token.
// The next chunk is (room - a) / b with room = (factor - 1) x the decode-only step, between 1 and
// max_chunk; when a alone exceeds the room no chunk meets the bound, and max_chunk makes the fewest
// such steps. a is 0 until the window's chunk sizes first spread enough to separate it from b.
// With factor 0 (or before any decode-only step was measured) the chunk is max_chunk. The chunk
// never changes what a sequence computes (a prompt row's bits do not depend on how its prompt is
// cut: RowMode), only when.
//
// Threading: the engine thread only.
#pragma once

#include <algorithm>
#include <array>
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
    window_[size_t(n_seen_++ % kWindow)] = {double(n_prompt), seconds - decode_s_};
    fit_line();
    const double room = (factor_ - 1) * decode_s_;
    const double fit = room > a_ ? (room - a_) / b_ : double(max_);
    chunk_ = std::clamp(0.5 * chunk_ + 0.5 * fit, 1.0, double(max_));
  }

  // The fitted extra cost of a mixed step, seconds: a + b * tokens (for tests and logs).
  double fixed_s() const { return a_; }
  double per_token_s() const { return b_; }

 private:
  struct Point {
    double tokens, extra_s;
  };

  // Weighted least squares over the window (the newest step weighs most) once its chunk sizes
  // spread. Without spread (a steady chunk, or the first steps), a keeps its last fitted value (0
  // before any fit, and never above the mean extra time) and b takes the rest of the mean, at least
  // 5% of a decode step over the mean chunk: an underestimate that grows the chunk, which then
  // spreads the sizes again. b stays positive so that the chunk stays finite.
  void fit_line() {
    const int64_t n = std::min<int64_t>(n_seen_, kWindow);
    double w = 1, sw = 0, mc = 0, me = 0;
    for (int64_t age = 0; age < n; ++age, w *= kDecay) {
      const Point& p = window_[size_t((n_seen_ - 1 - age) % kWindow)];
      sw += w, mc += w * p.tokens, me += w * p.extra_s;
    }
    mc /= sw, me /= sw;
    double var = 0, cov = 0;
    w = 1;
    for (int64_t age = 0; age < n; ++age, w *= kDecay) {
      const Point& p = window_[size_t((n_seen_ - 1 - age) % kWindow)];
      var += w * (p.tokens - mc) * (p.tokens - mc);
      cov += w * (p.tokens - mc) * (p.extra_s - me);
    }
    const double floor_b = 0.001 * decode_s_;
    if (n >= 3 && var / sw >= std::max(1.0, 0.01 * mc * mc) && cov > 0) {
      b_ = std::max(cov / var, floor_b);
      a_ = std::max(me - b_ * mc, 0.0);
      fitted_ = true;
      return;
    }
    a_ = fitted_ ? std::clamp(me, 0.0, a_) : 0.0;
    b_ = std::max(std::max(me - a_, 0.05 * decode_s_) / mc, floor_b);
  }

  static constexpr double kAlpha = 0.2;  // weight of the newest decode-only step
  static constexpr int64_t kWindow = 16;  // mixed steps the line is fitted to
  static constexpr double kDecay = 0.8;   // weight of a step relative to the next
  const int32_t max_;
  const double factor_;
  double chunk_;          // tokens, smoothed
  double decode_s_ = 0;   // a decode-only step, smoothed
  std::array<Point, kWindow> window_{};
  int64_t n_seen_ = 0;    // mixed steps observed
  bool fitted_ = false;   // a and b come from a line fitted to spread chunk sizes
  double a_ = 0, b_ = 0;  // mixed step extra seconds = a_ + b_ * tokens
};

}  // namespace kvb::runtime
