// softmax: row-wise, in place on x[n][m]; max-subtracted so large logits do not overflow.
#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status softmax(OpContext& ctx, const Tensor& x) {
  KVB_RETURN_IF_ERROR(check_tensor(x, DType::kF32, "softmax", "x"));
  const int64_t m = x.cols();
  const int64_t n = x.rows();
  if (n == 0 || m == 0) return Status::Ok();
  const VecKernels& vk = *ctx.vec;
  float* xs = x.as<float>();
  auto rows = [&](int64_t begin, int64_t end, int) {
    for (int64_t r = begin; r < end; ++r) {
      float* row = xs + r * m;
      const float mx = vk.max(row, m);
      // A row of -inf (fully masked) has no distribution; leave it as zeros rather than NaN.
      if (mx == -std::numeric_limits<float>::infinity()) {
        for (int64_t i = 0; i < m; ++i) row[i] = 0.0f;
        continue;
      }
      const float sum = vk.exp_sum(row, mx, m);
      vk.scale(row, 1.0f / sum, m);
    }
  };
  if (n * m < kMinParallelElements) {
    rows(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, std::max<int64_t>(1, kMinParallelElements / 4 / m), rows);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
