// rms_norm: y[n][d] = x[n][d] / sqrt(mean(x²) + eps) * w[d]. Rows are independent; y may alias x.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status rms_norm(OpContext& ctx, const Tensor& x, const Tensor& w, float eps, const Tensor& y) {
  KVB_RETURN_IF_ERROR(check_rms_norm(x, w, eps, y));
  const int64_t d = x.cols();
  const int64_t n = x.rows();
  if (n == 0 || d == 0) return Status::Ok();

  const VecKernels& vk = *ctx.vec;
  const float* xs = x.as<const float>();
  const float* ws = w.as<const float>();
  float* ys = y.as<float>();
  auto rows = [&](int64_t begin, int64_t end, int) {
    for (int64_t r = begin; r < end; ++r) {
      const float ss = vk.sum_sq(xs + r * d, d);
      const float s = 1.0f / std::sqrt(ss / float(d) + eps);
      vk.scale_mul(xs + r * d, s, ws, ys + r * d, d);
    }
  };
  if (n * d < kMinParallelElements) {
    rows(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, std::max<int64_t>(1, kMinParallelElements / 4 / d), rows);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
