// add: out = a + b, elementwise, same shapes, or b one row broadcast over a's rows (a bias);
// out may alias a (or b when not broadcast).
#include <fmt/format.h>

#include <algorithm>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status add(OpContext& ctx, const Tensor& a, const Tensor& b, const Tensor& out) {
  KVB_ASSIGN_OR_RETURN(const bool broadcast, check_add(a, b, out));
  const VecKernels& vk = *ctx.vec;
  const float* as = a.as<const float>();
  const float* bs = b.as<const float>();
  float* os = out.as<float>();
  const int64_t n = out.numel();
  if (broadcast) {
    const int64_t d = a.cols(), rows = a.rows();
    auto range = [&](int64_t begin, int64_t end, int) {
      for (int64_t r = begin; r < end; ++r) vk.add(as + r * d, bs, os + r * d, d);
    };
    if (n < kMinParallelElements) {
      range(0, rows, 0);
    } else {
      ctx.pool->parallel_for(rows, std::max<int64_t>(1, kMinParallelElements / 2 / d), range);
    }
    return Status::Ok();
  }
  auto range = [&](int64_t begin, int64_t end, int) { vk.add(as + begin, bs + begin, os + begin, end - begin); };
  if (n < kMinParallelElements) {
    range(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, kMinParallelElements / 2, range);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
