// rope: rotary position embedding, in place on x[n][n_heads][head_dim] with positions pos[n] (i32).
//
// Pair i (i < n_rot/2) of every head of row t is rotated by theta = pos[t] * freq_scale *
// theta_base^(-2i/n_rot) / freq_factors[i] (factor 1 without a table): adjacent pairs (x[2i], x[2i+1]) for kNormal, (x[i], x[i + n_rot/2]) for
// kNeox. Dims >= n_rot are left as they are. The angles and their cos/sin are computed in double
// (positions reach 1e5+, where a float angle would already be off by ~1e-2 rad), once per row and
// shared by all heads. For a run of consecutive positions (a prefill) they are stepped by angle
// addition from the previous row, in double, with an exact sin/cos at least every kMaxSteps rows:
// the drift stays ~1e-14, far below float rounding.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {
namespace {
constexpr int kMaxSteps = 32;  // rows stepped by angle addition between exact sin/cos
}  // namespace

Status rope(OpContext& ctx, const Tensor& x, const Tensor& pos, const RopeParams& p) {
  KVB_RETURN_IF_ERROR(check_rope(x, pos, p));
  const int64_t n = x.shape[0], n_heads = x.shape[1], head_dim = x.shape[2];
  if (n == 0 || n_heads == 0) return Status::Ok();

  const int half = p.n_rot / 2;
  const int n_threads = ctx.pool->n_threads();
  // Shared: inv_freq [half], then cos and sin of one position step [half] each (doubles).
  KVB_RETURN_IF_ERROR(ctx.scratch->reserve_shared(3 * size_t(half) * sizeof(double)));
  // Per thread: the row's cos and sin in double [half] each, then as float [half] each.
  const size_t per_thread = size_t(half) * (2 * sizeof(double) + 2 * sizeof(float));
  KVB_RETURN_IF_ERROR(ctx.scratch->reserve_per_thread(n_threads, per_thread));
  auto* inv_freq = reinterpret_cast<double*>(ctx.scratch->shared());
  double* step_c = inv_freq + half;
  double* step_s = step_c + half;
  const float* factors = p.freq_factors.data ? p.freq_factors.as<const float>() : nullptr;
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = double(p.freq_scale) * std::pow(double(p.theta_base), -2.0 * i / double(p.n_rot));
    if (factors) inv_freq[i] /= double(factors[i]);
    step_c[i] = std::cos(inv_freq[i]);
    step_s[i] = std::sin(inv_freq[i]);
  }

  float* xs = x.as<float>();
  const int32_t* ps = pos.as<const int32_t>();
  const bool neox = p.type == RopeType::kNeox;
  auto rows = [&](int64_t begin, int64_t end, int tid) {
    auto* cd = reinterpret_cast<double*>(ctx.scratch->thread(tid));  // cos, sin of the row (double)
    double* sd = cd + half;
    auto* cs = reinterpret_cast<float*>(sd + half);  // the same as float
    float* sn = cs + half;
    int since_exact = kMaxSteps;
    for (int64_t t = begin; t < end; ++t) {
      if (t > begin && ps[t] == ps[t - 1] + 1 && since_exact < kMaxSteps) {
        // The next position: rotate (cos, sin) by one step (angle addition).
        for (int i = 0; i < half; ++i) {
          const double c = cd[i] * step_c[i] - sd[i] * step_s[i];
          sd[i] = sd[i] * step_c[i] + cd[i] * step_s[i];
          cd[i] = c;
        }
        ++since_exact;
      } else {
        for (int i = 0; i < half; ++i) {
          const double theta = double(ps[t]) * inv_freq[i];
          cd[i] = std::cos(theta);
          sd[i] = std::sin(theta);
        }
        since_exact = 0;
      }
      for (int i = 0; i < half; ++i) {
        cs[i] = float(cd[i]);
        sn[i] = float(sd[i]);
      }
      for (int64_t h = 0; h < n_heads; ++h) {
        float* v = xs + (t * n_heads + h) * head_dim;
        if (neox) {
          for (int i = 0; i < half; ++i) {
            const float x0 = v[i], x1 = v[i + half];
            v[i] = x0 * cs[i] - x1 * sn[i];
            v[i + half] = x0 * sn[i] + x1 * cs[i];
          }
        } else {
          for (int i = 0; i < half; ++i) {
            const float x0 = v[2 * i], x1 = v[2 * i + 1];
            v[2 * i] = x0 * cs[i] - x1 * sn[i];
            v[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
          }
        }
      }
    }
  };
  // Each row costs up to half sin/cos pairs (~40 ns each; exact at least at every chunk start) plus
  // the rotations.
  const int64_t row_cost = half * 8 + n_heads * half;
  if (n * row_cost < kMinParallelElements) {
    rows(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, std::max<int64_t>(1, kMinParallelElements / 4 / row_cost), rows);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
