// silu_mul: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (SwiGLU); out may alias gate or up.
// CPU twin: cpu/silu_mul.cpp. Grid-stride loop, one element per thread per step.
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

__global__ void silu_mul_kernel(const float* gate, const float* up, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = gate[i];
    out[i] = g / (1.0f + expf(-g)) * up[i];  // exp overflows to inf for g < -88: silu is then -0
  }
}

}  // namespace

Status silu_mul(OpContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_tensor(gate, DType::kF32, "silu_mul", "gate"));
  KVB_RETURN_IF_ERROR(check_tensor(up, DType::kF32, "silu_mul", "up"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "silu_mul", "out"));
  if (gate.numel() != up.numel() || gate.numel() != out.numel() || gate.cols() != up.cols() ||
      gate.cols() != out.cols()) {
    return invalid_argument(cat("silu_mul: gate ", gate.describe(), ", up ", up.describe(), ", out ", out.describe(),
                                " do not match"));
  }
  if ((out.data != gate.data && tensors_overlap(out, gate)) || (out.data != up.data && tensors_overlap(out, up))) {
    return invalid_argument("silu_mul: out partially overlaps an input");
  }
  const int64_t n = out.numel();
  if (n == 0) return Status::Ok();
  silu_mul_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, ctx.stream>>>(
      gate.as<const float>(), up.as<const float>(), out.as<float>(), n);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
