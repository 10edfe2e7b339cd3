// add: out = a + b, elementwise, same shapes, or b one row broadcast over a's rows (a bias);
// out may alias a (or b when not broadcast). CPU twin: cpu/add.cpp.
// Grid-stride loop, one element per thread per step (each output reads only its own inputs).
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

// b_cols == 0: b has a's shape; else b is one row of b_cols values, repeated over a's rows.
__global__ void add_kernel(const float* a, const float* b, float* out, int64_t n, int64_t b_cols) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = a[i] + b[b_cols ? i % b_cols : i];
  }
}

}  // namespace

Status add(OpContext& ctx, const Tensor& a, const Tensor& b, const Tensor& out) {
  KVB_ASSIGN_OR_RETURN(const bool broadcast, check_add(a, b, out));
  const int64_t n = out.numel();
  if (n == 0) return Status::Ok();
  add_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, ctx.stream>>>(
      a.as<const float>(), b.as<const float>(), out.as<float>(), n, broadcast ? a.cols() : 0);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
