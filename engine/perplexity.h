// Perplexity and KL-divergence math, computed the way llama.cpp's tools/perplexity computes them;
// no I/O, no model: the caller hands in logits rows. engine/perplexity_run.h drives a ModelRunner
// through it, engine/perplexity_base.h stores a base model's rows.
//
// Windows (llama.cpp `perplexity()`): the text's ids (tokenized once, BOS first when the vocab
// adds one) are cut into n_chunk = n_tokens / n_ctx non-overlapping windows of n_ctx ids (the tail
// is dropped). Each window is evaluated from an empty cache with its first id replaced by BOS when
// the vocab adds one. Logit row p predicts id p + 1; rows [first, n_ctx - 1), first = n_ctx / 2,
// are scored (the first half is context only), so each window scores n_ctx - 1 - first ids.
//
// Units: natural logarithms throughout; NLL = -ln p(next id); PPL = exp(mean NLL).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "kernels/status.h"

namespace kvb::ppl {

struct WindowPlan {
  int32_t n_ctx = 0;    // ids per window
  int32_t n_chunk = 0;  // windows evaluated
  int32_t first = 0;    // n_ctx / 2: the first scored logit row
  int32_t n_scored() const { return n_ctx - 1 - first; }  // scored positions per window
};

// INVALID_ARGUMENT when n_ctx < 4, or n_tokens < n_ctx (the message names both counts).
// max_chunks > 0 caps n_chunk (llama.cpp --chunks).
Result<WindowPlan> plan_windows(size_t n_tokens, int32_t n_ctx, int32_t max_chunks = 0);
// The ids of window `chunk`: all[chunk·n_ctx, (chunk+1)·n_ctx) with the first replaced by `bos`
// when bos >= 0. Precondition: chunk < plan.n_chunk and all holds the plan's tokens.
std::vector<int32_t> window_ids(std::span<const int32_t> all, const WindowPlan& plan, int32_t chunk, int32_t bos);

// -ln softmax(logits)[tok] = max + ln Σ exp(l_i - max) - l_tok (exps in float, the sum in double,
// as llama.cpp). Precondition: 0 <= tok < logits.size().
double token_nll(std::span<const float> logits, int32_t tok);

// Mean and standard error of a per-position quantity from running sums (llama.cpp's
// mean_and_uncertainty): err = sqrt((Σx²/n - mean²) / (n - 1)), 0 when n <= 10 or the variance
// is not positive; {0, 0} when n == 0.
struct MeanErr {
  double mean = 0, err = 0;
};
MeanErr mean_and_uncertainty(double sum, double sum2, size_t count);

// Running NLL sums. Final estimate (llama.cpp): PPL = exp(m), m = Σnll / n, and its error
// PPL · sqrt((Σnll²/n - m²) / (n - 1)) (first-order propagation of the mean's standard error).
struct NllStats {
  double sum = 0, sum2 = 0;
  size_t count = 0;
  void add(double nll) { sum += nll, sum2 += nll * nll, ++count; }
  double mean() const { return count ? sum / double(count) : 0; }
  double ppl() const;
  // 0 when count < 2 or the variance is not positive (llama.cpp then prints an error instead).
  double ppl_err() const;
};

// ---- Base log-probabilities: llama.cpp's quantized row ------------------------------------------
// A row is base_row_words(n_vocab) uint16 words: words 0-3 hold two floats (native byte order),
// scale and min_log_prob; word 4 + i holds q_i with ln p_i ≈ scale·q_i + min_log_prob. The range
// spans [max_logit - 16, max_logit] in 65535 steps (about 2.4e-4 nats); logits below the floor
// store q = 0 and are ignored by the KL sum (their probability is under e^-16 of the top one).
int32_t base_row_words(int32_t n_vocab);
// Writes one position's row from its logits [n_vocab]; returns token_nll(logits, tok).
// Precondition: row.size() == base_row_words(logits.size()), 0 <= tok < logits.size().
double encode_base_row(std::span<const float> logits, int32_t tok, std::span<uint16_t> row);
// ln p_i of a row (its n_vocab = logits count it was written for).
float base_log_prob(std::span<const uint16_t> row, int32_t i);

// ---- KL divergence against a base row (llama.cpp `kl_divergence`) -------------------------------
struct KldPoint {
  double kld = 0;    // Σ_i p_base,i · (ln p_base,i - ln q_i), over base log-probs above -16
  float p_diff = 0;  // q(tok) - p_base(tok): the change of the actual next id's probability
};

struct KldStats {
  NllStats nll, nll_base;     // this model's and the base's NLL of the next id
  double sum_nll_nll_base = 0;
  double sum_kld = 0, sum_kld2 = 0;
  double sum_p_diff = 0, sum_p_diff2 = 0, sum_p_diff4 = 0;
  size_t n_same_top = 0;      // positions where argmax q == argmax p_base (first index on ties)
  size_t count = 0;
  std::vector<float> kld_values, p_diff_values;  // per position, in evaluation order

  // One scored position: this model's logits [n_vocab], the base row, the actual next id.
  // Precondition: base_row.size() == base_row_words(logits.size()), 0 <= tok < logits.size().
  KldPoint add(std::span<const float> logits, std::span<const uint16_t> base_row, int32_t tok);
};

// llama.cpp's percentile of sorted values: linear interpolation at fraction·(n - 1); fraction <= 0
// gives the first, >= 1 the last. Precondition: sorted non-empty.
float percentile(std::span<const float> sorted, float fraction);

// The summary llama.cpp prints at the end of a KLD run. Uncertainties are standard errors.
struct KldReport {
  MeanErr ppl, ppl_base;          // exp(mean NLL) of this model and of the base
  double log_ppl_cor = 0;         // correlation of the two mean NLLs (a fraction)
  MeanErr log_ppl_ratio;          // ln(PPL / PPL_base)
  MeanErr ppl_ratio, ppl_diff;    // PPL / PPL_base, PPL - PPL_base
  MeanErr kld;                    // mean KL divergence (nats)
  MeanErr p_diff, rms_p_diff;     // mean and RMS of Δp (fractions)
  MeanErr same_top;               // fraction of positions with the same top id
  // (label, value) rows: Maximum, 99.9%, ..., Median, ..., Minimum.
  std::vector<std::pair<std::string, float>> kld_percentiles, p_diff_percentiles;
};
// Precondition: stats.count >= 1. with_percentiles false leaves the percentile rows empty (no
// sort: for a per-window line).
KldReport kld_report(const KldStats& stats, bool with_percentiles = true);

}  // namespace kvb::ppl
