// gelu: out = x/2 · (1 + erf(x/√2)), the exact (erf) GELU of torch.nn.GELU(); out may alias x.
// CPU twin: cpu/gelu.cpp.
//
// Numerics: 1 + erf(x/√2) = erfc(-x/√2), and CUDA's erfcf is accurate to a few ulp over the whole
// range, so the left tail (x ≪ 0, where 1 + erf cancels) keeps its relative accuracy, as the CPU
// version does with its erfc fit. Grid-stride loop, one element per thread per step.
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

__global__ void gelu_kernel(const float* x, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = x[i];
    out[i] = 0.5f * v * erfcf(-v * 0.70710678118654752f);
  }
}

}  // namespace

Status gelu(OpContext& ctx, const Tensor& x, const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_tensor(x, DType::kF32, "gelu", "x"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "gelu", "out"));
  if (x.numel() != out.numel() || x.cols() != out.cols()) {
    return invalid_argument(cat("gelu: x ", x.describe(), " and out ", out.describe(), " do not match"));
  }
  if (out.data != x.data && tensors_overlap(out, x)) return invalid_argument("gelu: out partially overlaps x");
  const int64_t n = out.numel();
  if (n == 0) return Status::Ok();
  gelu_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, ctx.stream>>>(x.as<const float>(), out.as<float>(), n);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
