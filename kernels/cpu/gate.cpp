// gate_add: out[t][h·D + d] = receiver[t][h·D + d] + sigmoid(logits[t][h]) · projected[t][h·D + d],
// the gated residual that writes a C2C projector's output into the receiver's K or V. out may alias
// receiver or projected. Rows (tokens) are independent and split over the pool.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status gate_add(OpContext& ctx, const Tensor& receiver, const Tensor& logits, const Tensor& projected,
                const Tensor& out) {
  KVB_ASSIGN_OR_RETURN(const GateAddShapes g, check_gate_add(receiver, logits, projected, out));
  const int64_t n = g.n, h = g.h, row = g.row;
  if (n == 0 || row == 0) return Status::Ok();
  const int64_t d = row / h;
  const float* r = receiver.as<const float>();
  const float* l = logits.as<const float>();
  const float* p = projected.as<const float>();
  float* o = out.as<float>();
  auto rows = [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t k = 0; k < h; ++k) {
        // 1 / (1 + e^-x): exp overflows to inf for x < -88 and the weight is then exactly 0.
        const float w = 1.0f / (1.0f + std::exp(-l[t * h + k]));
        const int64_t base = t * row + k * d;
        for (int64_t j = 0; j < d; ++j) o[base + j] = r[base + j] + w * p[base + j];
      }
    }
  };
  if (n * row < kMinParallelElements) {
    rows(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, std::max<int64_t>(1, kMinParallelElements / 4 / row), rows);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
