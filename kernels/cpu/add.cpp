// add: out = a + b, elementwise, same shapes; out may alias a or b.
#include <fmt/format.h>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status add(OpContext& ctx, const Tensor& a, const Tensor& b, const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_tensor(a, DType::kF32, "add", "a"));
  KVB_RETURN_IF_ERROR(check_tensor(b, DType::kF32, "add", "b"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "add", "out"));
  if (a.numel() != b.numel() || a.numel() != out.numel() || a.cols() != b.cols() || a.cols() != out.cols()) {
    return invalid_argument(
        fmt::format("add: a {}, b {}, out {} do not match", a.describe(), b.describe(), out.describe()));
  }
  if ((out.data != a.data && tensors_overlap(out, a)) || (out.data != b.data && tensors_overlap(out, b))) {
    return invalid_argument("add: out partially overlaps an input");
  }
  const VecKernels& vk = *ctx.vec;
  const float* as = a.as<const float>();
  const float* bs = b.as<const float>();
  float* os = out.as<float>();
  auto range = [&](int64_t begin, int64_t end, int) { vk.add(as + begin, bs + begin, os + begin, end - begin); };
  const int64_t n = out.numel();
  if (n < kMinParallelElements) {
    range(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, kMinParallelElements / 2, range);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
