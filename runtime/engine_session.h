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
  // The sequence's cells: the shared prefix blocks (runtime/prefix_cache.h), then its own cache,
  // which continues them (its pos0() is the blocks' cell count when there are blocks).
  std::vector<std::shared_ptr<const KvCache>> prefix;
  std::unique_ptr<KvCache> cache;
  int32_t capacity = 0;       // cells the sequence may fill (prefix and cache together)
  // in.tokens are all of the sequence's tokens from position 0 (a single context cache at
  // position 0 became their first fed part): its whole blocks go to the prefix cache.
  bool cacheable = false;
  int32_t n_cached = 0;       // input tokens found in the prefix cache (not computed here)
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
  int32_t n_prefix() const { return prefix.empty() ? 0 : cache->pos0(); }  // cells in `prefix`
  int32_t n_cells() const { return n_prefix() + cache->n_tokens(); }
  SeqStep step(std::span<const int32_t> tokens, float* logits_out, bool decode) const {
    return SeqStep{cache.get(), tokens, logits_out, decode, prefix};
  }
  bool decoding() const { return is_generate && has_logits; }
  bool cancel_requested() const { return in.cancel->cancelled(); }
};

}  // namespace kvb::runtime
