#include "engine/sampler.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace kvb {

Status SamplingParams::validate() const {
  if (!(temperature >= 0.0f) || !std::isfinite(temperature)) {
    return invalid_argument(fmt::format("temperature must be >= 0, got {}", temperature));
  }
  if (top_k < 0) return invalid_argument(fmt::format("top_k must be >= 0, got {}", top_k));
  if (!(top_p > 0.0f && top_p <= 1.0f)) return invalid_argument(fmt::format("top_p must be in (0, 1], got {}", top_p));
  return Status::Ok();
}

int32_t argmax(std::span<const float> logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > logits[size_t(best)]) best = int32_t(i);
  }
  return best;
}

Sampler::Sampler(const SamplingParams& p) : p_(p), rng_(p.seed) {}

int32_t Sampler::sample(std::span<const float> logits) {
  if (p_.temperature == 0.0f) return argmax(logits);

  // Candidates sorted by logit (descending, ties by id), cut to top_k.
  candidates_.resize(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) candidates_[i] = {logits[i], int32_t(i)};
  const size_t k = p_.top_k > 0 ? std::min(size_t(p_.top_k), candidates_.size()) : candidates_.size();
  auto by_logit = [](const auto& a, const auto& b) { return a.first > b.first || (a.first == b.first && a.second < b.second); };
  std::partial_sort(candidates_.begin(), candidates_.begin() + std::ptrdiff_t(k), candidates_.end(), by_logit);
  candidates_.resize(k);

  // Softmax at temperature, then the top_p nucleus.
  const float max = candidates_[0].first;
  double sum = 0.0;
  for (auto& c : candidates_) {
    c.first = std::exp((c.first - max) / p_.temperature);
    sum += c.first;
  }
  size_t keep = candidates_.size();
  if (p_.top_p < 1.0f) {
    double mass = 0.0;
    for (size_t i = 0; i < candidates_.size(); ++i) {
      mass += candidates_[i].first / sum;
      if (mass >= p_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept_sum = 0.0;
  for (size_t i = 0; i < keep; ++i) kept_sum += candidates_[i].first;
  // A uniform draw in [0, kept_sum) from 53 random bits: identical on every platform.
  const double r = double(rng_() >> 11) * 0x1.0p-53 * kept_sum;
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += candidates_[i].first;
    if (r < acc) return candidates_[i].second;
  }
  return candidates_[keep - 1].second;
}

TokenLogprobs token_logprobs(std::span<const float> logits, int32_t id, int32_t k) {
  float mx = -std::numeric_limits<float>::infinity();
  for (float l : logits) mx = std::max(mx, l);
  double sum = 0.0;
  for (float l : logits) sum += std::exp(double(l) - double(mx));
  const double log_z = double(mx) + std::log(sum);
  TokenLogprobs out;
  out.logprob = float(double(logits[size_t(id)]) - log_z);
  const size_t kk = std::min(size_t(std::max(k, 0)), logits.size());
  if (kk == 0) return out;
  std::vector<int32_t> ids(logits.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t(i);
  std::partial_sort(ids.begin(), ids.begin() + std::ptrdiff_t(kk), ids.end(), [&](int32_t a, int32_t b) {
    return logits[size_t(a)] > logits[size_t(b)] || (logits[size_t(a)] == logits[size_t(b)] && a < b);
  });
  out.top.reserve(kk);
  for (size_t i = 0; i < kk; ++i) out.top.emplace_back(ids[i], float(double(logits[size_t(ids[i])]) - log_z));
  return out;
}

}  // namespace kvb
