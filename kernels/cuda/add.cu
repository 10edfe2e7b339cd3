// add: out = a + b, elementwise, same shapes; out may alias a or b. CPU twin: cpu/add.cpp.
// Grid-stride loop, one element per thread per step (each output reads only its own inputs).
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

__global__ void add_kernel(const float* a, const float* b, float* out, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    out[i] = a[i] + b[i];
  }
}

}  // namespace

Status add(OpContext& ctx, const Tensor& a, const Tensor& b, const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_tensor(a, DType::kF32, "add", "a"));
  KVB_RETURN_IF_ERROR(check_tensor(b, DType::kF32, "add", "b"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "add", "out"));
  if (a.numel() != b.numel() || a.numel() != out.numel() || a.cols() != b.cols() || a.cols() != out.cols()) {
    return invalid_argument(cat("add: a ", a.describe(), ", b ", b.describe(), ", out ", out.describe(),
                                " do not match"));
  }
  if ((out.data != a.data && tensors_overlap(out, a)) || (out.data != b.data && tensors_overlap(out, b))) {
    return invalid_argument("add: out partially overlaps an input");
  }
  const int64_t n = out.numel();
  if (n == 0) return Status::Ok();
  add_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, ctx.stream>>>(a.as<const float>(), b.as<const float>(),
                                                                           out.as<float>(), n);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
