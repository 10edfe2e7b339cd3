// EngineLoop's per-sequence state and the helpers its two translation units share
// (engine_loop.cpp: queue, admission, steps; engine_session.cpp: starting, sampling, finishing).
// Private to runtime/.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "engine/utf8_stream.h"
#include "runtime/engine_loop.h"

namespace kvb::runtime {

using Clock = std::chrono::steady_clock;

inline double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// One Generate or Prefill holding a slot. Engine thread only.
struct EngineLoop::Session {
  explicit Session(const SamplingParams& p) : sampler(p) {}

  bool is_generate = false;
  bool finished = false;      // answered; removed after the step
  SessionInput in;            // in.tokens: the input, prefilled in chunks
  size_t fed = 0;             // input tokens already in the cache
  std::unique_ptr<KvCache> cache;
  int32_t capacity = 0;       // cells the sequence may fill (the cache may have more)
  Clock::time_point started;  // admission

  // Generate
  GenerateOptions opt;
  std::shared_ptr<GenerateSink> sink;
  Sampler sampler;
  std::vector<float> logits;  // [n_vocab]: the distribution for the next token, once has_logits
  bool has_logits = false;    // the input is done: the sequence decodes
  int32_t next = -1;          // the token this step feeds
  bool last_fed = true;       // whether the last streamed token is in the cache
  int32_t prev = -1;          // previous token, for decode_token's leading-space rule
  int32_t n_context = 0, n_prompt = 0, n_generated = 0;
  size_t max_stop = 0;
  Utf8StreamDecoder utf8;     // holds back a character split over tokens until it is complete
  std::string text;           // what was streamed so far: valid UTF-8
  std::optional<Clock::time_point> first_token;

  // Prefill
  PrefillOptions prefill;
  PrefillCallback prefill_done;

  int64_t prompt_left() const { return int64_t(in.tokens.size()) - int64_t(fed); }
  bool decoding() const { return is_generate && has_logits; }
  bool cancel_requested() const { return in.cancel->cancelled(); }
};

}  // namespace kvb::runtime
