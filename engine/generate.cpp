#include "engine/generate.h"

#include <chrono>

namespace kvb {

Result<GenerateResult> generate(ModelRunner& runner, KvCache& cache, std::span<const int32_t> prompt,
                                const GenerateParams& params, const std::function<bool(int32_t)>& on_token) {
  KVB_RETURN_IF_ERROR(params.sampling.validate());
  if (params.max_tokens < 0) return invalid_argument("max_tokens must be >= 0");
  if (prompt.empty()) return invalid_argument("generate: empty prompt");
  std::vector<float> logits(static_cast<size_t>(runner.model().config.n_vocab));
  Sampler sampler(params.sampling);
  GenerateResult r;
  r.n_prompt = int32_t(prompt.size());
  using clock = std::chrono::steady_clock;

  const auto t0 = clock::now();
  KVB_RETURN_IF_ERROR(runner.forward(cache, prompt, logits));
  const auto t1 = clock::now();
  r.prefill_s = std::chrono::duration<double>(t1 - t0).count();

  for (int32_t i = 0; i < params.max_tokens; ++i) {
    const int32_t next = sampler.sample(logits);
    if (params.stop_at_eos && runner.model().is_eos(next)) {
      r.reason = StopReason::kEos;
      break;
    }
    r.tokens.push_back(next);
    if (on_token && !on_token(next)) {
      r.reason = StopReason::kCallback;
      break;
    }
    if (i + 1 == params.max_tokens) break;
    KVB_RETURN_IF_ERROR(runner.forward(cache, std::span<const int32_t>(&next, 1), logits));
  }
  r.decode_s = std::chrono::duration<double>(clock::now() - t1).count();
  return r;
}

}  // namespace kvb
