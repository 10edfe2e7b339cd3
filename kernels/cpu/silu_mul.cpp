// silu_mul: out = silu(gate) * up, elementwise (SwiGLU); out may alias gate or up.
#include <fmt/format.h>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status silu_mul(OpContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_tensor(gate, DType::kF32, "silu_mul", "gate"));
  KVB_RETURN_IF_ERROR(check_tensor(up, DType::kF32, "silu_mul", "up"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "silu_mul", "out"));
  if (gate.numel() != up.numel() || gate.numel() != out.numel() || gate.cols() != up.cols() ||
      gate.cols() != out.cols()) {
    return invalid_argument(
        fmt::format("silu_mul: gate {}, up {}, out {} do not match", gate.describe(), up.describe(), out.describe()));
  }
  if ((out.data != gate.data && tensors_overlap(out, gate)) || (out.data != up.data && tensors_overlap(out, up))) {
    return invalid_argument("silu_mul: out partially overlaps an input");
  }
  const VecKernels& vk = *ctx.vec;
  const float* g = gate.as<const float>();
  const float* u = up.as<const float>();
  float* o = out.as<float>();
  auto range = [&](int64_t begin, int64_t end, int) { vk.silu_mul(g + begin, u + begin, o + begin, end - begin); };
  const int64_t n = out.numel();
  if (n < kMinParallelElements) {
    range(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, kMinParallelElements / 2, range);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
