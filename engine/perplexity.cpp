// Perplexity and KL-divergence math (see perplexity.h). Follows llama.cpp's float/double mix so
// that the numbers agree with llama-perplexity to rounding.
#include "engine/perplexity.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/status.h"

namespace kvb::ppl {

Result<WindowPlan> plan_windows(size_t n_tokens, int32_t n_ctx, int32_t max_chunks) {
  if (n_ctx < 4) return invalid_argument(fmt::format("context {} is too small: need at least 4", n_ctx));
  if (n_tokens < size_t(n_ctx)) {
    return invalid_argument(fmt::format(
        "the text tokenizes to only {} tokens: one window of context {} needs at least {}", n_tokens, n_ctx, n_ctx));
  }
  WindowPlan plan;
  plan.n_ctx = n_ctx;
  plan.n_chunk = int32_t(n_tokens / size_t(n_ctx));
  if (max_chunks > 0) plan.n_chunk = std::min(plan.n_chunk, max_chunks);
  plan.first = n_ctx / 2;
  return plan;
}

std::vector<int32_t> window_ids(std::span<const int32_t> all, const WindowPlan& plan, int32_t chunk, int32_t bos) {
  auto begin = all.begin() + ptrdiff_t(chunk) * plan.n_ctx;
  std::vector<int32_t> ids(begin, begin + plan.n_ctx);
  if (bos >= 0) ids[0] = bos;
  return ids;
}

namespace {

struct LogSumExp {
  float max_logit;
  int32_t imax;      // first index of the maximum
  double sum_exp;    // Σ exp(l_i - max), exps in float
};

LogSumExp log_sum_exp(std::span<const float> logits) {
  LogSumExp r{logits[0], 0, 0.0};
  for (size_t i = 1; i < logits.size(); ++i) {
    if (logits[i] > r.max_logit) r.max_logit = logits[i], r.imax = int32_t(i);
  }
  for (float l : logits) r.sum_exp += std::exp(l - r.max_logit);
  return r;
}

}  // namespace

double token_nll(std::span<const float> logits, int32_t tok) {
  const LogSumExp s = log_sum_exp(logits);
  return -(double(logits[size_t(tok)] - s.max_logit) - std::log(s.sum_exp));
}

MeanErr mean_and_uncertainty(double sum, double sum2, size_t count) {
  if (count < 1) return {};
  const double n = double(count);
  const double mean = sum / n;
  const double var = sum2 / n - mean * mean;
  return {mean, var > 0 && count > 10 ? std::sqrt(var / (n - 1)) : 0.0};
}

double NllStats::ppl() const { return std::exp(mean()); }

double NllStats::ppl_err() const {
  if (count < 2) return 0;
  const double m = mean();
  const double var = sum2 / double(count) - m * m;
  return var > 0 ? std::sqrt(var / double(count - 1)) * ppl() : 0.0;
}

int32_t base_row_words(int32_t n_vocab) { return 2 * ((n_vocab + 1) / 2) + 4; }

double encode_base_row(std::span<const float> logits, int32_t tok, std::span<uint16_t> row) {
  const LogSumExp s = log_sum_exp(logits);
  float min_logit = *std::min_element(logits.begin(), logits.end());
  min_logit = std::max(min_logit, s.max_logit - 16);
  const float lse = float(std::log(s.sum_exp));
  const float min_log_prob = min_logit - s.max_logit - lse;
  const float scale = (s.max_logit - min_logit) / 65535.f;
  std::memcpy(&row[0], &scale, sizeof(float));
  std::memcpy(&row[2], &min_log_prob, sizeof(float));
  std::fill(row.begin() + 4, row.end(), uint16_t(0));
  if (scale != 0) {
    const float inv_scale = 1 / scale;
    for (size_t i = 0; i < logits.size(); ++i) {
      if (logits[i] > min_logit) row[4 + i] = uint16_t(std::lrintf(inv_scale * (logits[i] - min_logit)));
    }
  }
  return double(s.max_logit + lse - logits[size_t(tok)]);
}

namespace {

struct RowHeader {
  float scale, min_log_prob;
};
RowHeader row_header(std::span<const uint16_t> row) {
  RowHeader h;
  std::memcpy(&h.scale, &row[0], sizeof(float));
  std::memcpy(&h.min_log_prob, &row[2], sizeof(float));
  return h;
}

}  // namespace

float base_log_prob(std::span<const uint16_t> row, int32_t i) {
  const RowHeader h = row_header(row);
  return h.scale * float(row[4 + size_t(i)]) + h.min_log_prob;
}

KldPoint KldStats::add(std::span<const float> logits, std::span<const uint16_t> base_row, int32_t tok) {
  const LogSumExp s = log_sum_exp(logits);
  const float lse = float(std::log(s.sum_exp));
  const RowHeader h = row_header(base_row);
  const uint16_t* q = base_row.data() + 4;

  const float nll_q = s.max_logit + lse - logits[size_t(tok)];
  const float nll_b = -(h.scale * float(q[tok]) + h.min_log_prob);
  nll.add(nll_q);
  nll_base.add(nll_b);
  sum_nll_nll_base += double(nll_q) * double(nll_b);

  const float log_norm = s.max_logit + lse;  // ln q_i = l_i - log_norm
  double kld = 0;
  int32_t imax_base = 0;
  float lp_base_max = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    const float lp_base = h.scale * float(q[i]) + h.min_log_prob;
    if (i == 0 || lp_base > lp_base_max) lp_base_max = lp_base, imax_base = int32_t(i);
    if (lp_base > -16.f) kld += double(std::exp(lp_base)) * double(lp_base - logits[i] + log_norm);
  }
  sum_kld += kld;
  sum_kld2 += kld * kld;
  ++count;
  if (s.imax == imax_base) ++n_same_top;

  const float p_diff = std::exp(-nll_q) - std::exp(-nll_b);
  const double d2 = double(p_diff) * double(p_diff);
  sum_p_diff += p_diff;
  sum_p_diff2 += d2;
  sum_p_diff4 += d2 * d2;
  kld_values.push_back(float(kld));
  p_diff_values.push_back(p_diff);
  return {kld, p_diff};
}

float percentile(std::span<const float> sorted, float fraction) {
  if (fraction <= 0) return sorted.front();
  if (fraction >= 1) return sorted.back();
  float p = fraction * float(sorted.size() - 1);
  const size_t ip = size_t(p);
  p -= float(ip);
  return (1 - p) * sorted[ip] + p * sorted[std::min(ip + 1, sorted.size() - 1)];
}

namespace {

// Covariance of the two means (llama.cpp): 0 below 10 positions.
double mean_covariance(double suma, double sumb, double sumab, size_t count) {
  if (count < 10) return 0.0;
  const double n = double(count);
  return (sumab / n - (suma / n) * (sumb / n)) / (n - 1);
}

double sqrt_pos(double x) { return x > 0 ? std::sqrt(x) : 0.0; }

std::vector<std::pair<std::string, float>> percentile_rows(std::vector<float> v, std::span<const float> fractions) {
  std::sort(v.begin(), v.end());
  std::vector<std::pair<std::string, float>> rows;
  rows.emplace_back("Maximum", v.back());
  for (float f : fractions) {
    rows.emplace_back(f == 0.5f ? std::string("Median") : fmt::format("{:4.1f}%", 100.0 * f), percentile(v, f));
  }
  rows.emplace_back("Minimum", v.front());
  return rows;
}

}  // namespace

KldReport kld_report(const KldStats& st, bool with_percentiles) {
  KldReport r;
  const size_t n = st.count;
  const MeanErr lq = mean_and_uncertainty(st.nll.sum, st.nll.sum2, n);
  const MeanErr lb = mean_and_uncertainty(st.nll_base.sum, st.nll_base.sum2, n);
  r.ppl = {std::exp(lq.mean), std::exp(lq.mean) * lq.err};
  r.ppl_base = {std::exp(lb.mean), std::exp(lb.mean) * lb.err};
  const double cov = mean_covariance(st.nll.sum, st.nll_base.sum, st.sum_nll_nll_base, n);
  r.log_ppl_cor = lq.err > 0 && lb.err > 0 ? cov / (lq.err * lb.err) : 0.0;
  r.log_ppl_ratio = {lq.mean - lb.mean, sqrt_pos(lq.err * lq.err + lb.err * lb.err - 2 * cov)};
  r.ppl_ratio = {std::exp(r.log_ppl_ratio.mean), std::exp(r.log_ppl_ratio.mean) * r.log_ppl_ratio.err};
  const double ppl_cov = r.ppl.mean * r.ppl_base.mean * cov;
  r.ppl_diff = {r.ppl.mean - r.ppl_base.mean,
                sqrt_pos(r.ppl.err * r.ppl.err + r.ppl_base.err * r.ppl_base.err - 2 * ppl_cov)};
  r.kld = mean_and_uncertainty(st.sum_kld, st.sum_kld2, n);
  r.p_diff = mean_and_uncertainty(st.sum_p_diff, st.sum_p_diff2, n);
  const MeanErr mse = mean_and_uncertainty(st.sum_p_diff2, st.sum_p_diff4, n);
  const double rms = std::sqrt(mse.mean);
  r.rms_p_diff = {rms, rms > 0 ? 0.5 / rms * mse.err : 0.0};
  const double top = double(st.n_same_top) / double(n);
  r.same_top = {top, n > 1 ? std::sqrt(top * (1 - top) / double(n - 1)) : 0.0};
  if (!with_percentiles) return r;
  static constexpr float kKld[] = {0.999f, 0.99f, 0.95f, 0.90f, 0.5f, 0.10f, 0.05f, 0.01f, 0.001f};
  static constexpr float kPDiff[] = {0.999f, 0.99f, 0.95f, 0.90f, 0.75f, 0.5f, 0.25f, 0.10f, 0.05f, 0.01f, 0.001f};
  r.kld_percentiles = percentile_rows(st.kld_values, kKld);
  r.p_diff_percentiles = percentile_rows(st.p_diff_values, kPDiff);
  return r;
}

}  // namespace kvb::ppl
