// Sampler: picks the next token from a logits vector.
//
// Greedy when temperature == 0; otherwise softmax(logits / temperature) restricted to the top_k
// most likely tokens (0 = all) and then to the smallest prefix whose probability mass reaches top_p
// (1 = all), drawn with a seeded mt19937_64: the same seed and logits give the same tokens on every
// machine. Ties in greedy mode go to the lowest id. Not thread-safe (holds RNG state).
#pragma once

#include <cstdint>
#include <random>
#include <span>
#include <utility>
#include <vector>

#include "kernels/status.h"

namespace kvb {

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy
  int32_t top_k = 0;         // 0 = no limit
  float top_p = 1.0f;        // (0, 1]
  uint64_t seed = 0;

  // INVALID_ARGUMENT naming the bad field (negative temperature, top_p outside (0, 1], ...).
  Status validate() const;
};

class Sampler {
 public:
  explicit Sampler(const SamplingParams& p);
  // logits: [n_vocab]. Returns the chosen id.
  int32_t sample(std::span<const float> logits);

 private:
  SamplingParams p_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> candidates_;  // reused between calls
};

int32_t argmax(std::span<const float> logits);

// Log-probabilities of a next-token distribution: natural log of softmax(logits) at temperature 1,
// before any sampling transform (what vLLM's logprobs and llama.cpp's n_probs report).
struct TokenLogprobs {
  float logprob = 0;                            // of `id`
  std::vector<std::pair<int32_t, float>> top;   // the k most likely (id, logprob), most likely first,
                                                // ties by id
};
// logits: [n_vocab]; id in [0, n_vocab); 0 <= k (capped at n_vocab). Sums in double.
TokenLogprobs token_logprobs(std::span<const float> logits, int32_t id, int32_t k);

}  // namespace kvb
