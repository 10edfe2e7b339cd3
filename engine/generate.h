// Text generation on a ModelRunner: prefill a prompt into a cache, then decode token by token.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "engine/forward.h"
#include "engine/sampler.h"

namespace kvb {

enum class StopReason { kEos, kMaxTokens, kCallback };

struct GenerateParams {
  SamplingParams sampling;
  int32_t max_tokens = 128;  // generated tokens, not counting the prompt
  bool stop_at_eos = true;  // stop at any Model::is_eos id (tokenizer eos, generation_config.json's)
};

struct GenerateResult {
  std::vector<int32_t> tokens;  // generated ids (the EOS that stopped generation is not included)
  StopReason reason = StopReason::kMaxTokens;
  int32_t n_prompt = 0;
  double prefill_s = 0;  // time to first token
  double decode_s = 0;   // time for the remaining tokens
};

// Appends `prompt` to `cache` (which may already hold context), then samples up to max_tokens.
// on_token is called with each generated id as soon as it is known; returning false stops
// generation (StopReason::kCallback). Each sampled token is fed back, so the cache ends holding
// prompt + generated tokens (minus the last, which was never fed). Errors from the forward pass
// (e.g. RESOURCE_EXHAUSTED when the context fills) are returned as is.
Result<GenerateResult> generate(ModelRunner& runner, KvCache& cache, std::span<const int32_t> prompt,
                                const GenerateParams& params, const std::function<bool(int32_t)>& on_token = {});

}  // namespace kvb
