// softmax: row-wise, in place on x[n][m]; max-subtracted so large logits do not overflow. A row of
// -inf (fully masked) becomes zeros, as on the CPU. CPU twin: cpu/softmax.cpp.
//
// One block of 256 threads per row (grid-stride over rows), three passes over a strided slice per
// thread: max (block_max), exp and sum (block_sum, exps stored in place), scale. Every thread only
// rewrites the elements it reads, so the in-place passes never race.
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads) softmax_kernel(float* x, int64_t n, int64_t m) {
  __shared__ float scratch[kWarpSize];
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    float* row = x + r * m;
    float mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) mx = fmaxf(mx, row[j]);
    mx = block_max(mx, scratch);
    if (mx == -INFINITY) {  // uniform across the block
      for (int64_t j = threadIdx.x; j < m; j += blockDim.x) row[j] = 0.0f;
      continue;
    }
    float sum = 0.0f;
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
      const float e = expf(row[j] - mx);
      row[j] = e;
      sum += e;
    }
    const float inv = 1.0f / block_sum(sum, scratch);
    for (int64_t j = threadIdx.x; j < m; j += blockDim.x) row[j] *= inv;
  }
}

}  // namespace

Status softmax(OpContext& ctx, const Tensor& x) {
  KVB_RETURN_IF_ERROR(check_tensor(x, DType::kF32, "softmax", "x"));
  const int64_t m = x.cols();
  const int64_t n = x.rows();
  if (n == 0 || m == 0) return Status::Ok();
  const unsigned blocks = unsigned(n < 65536 ? n : 65536);
  softmax_kernel<<<blocks, kThreads, 0, ctx.stream>>>(x.as<float>(), n, m);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
