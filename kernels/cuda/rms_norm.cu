// rms_norm: y[n][d] = x[n][d] / sqrt(mean(x²) + eps) * w[d]; y may alias x. CPU twin: cpu/rms_norm.cpp.
//
// One block of 256 threads per row (grid-stride over rows): each thread sums the squares of a
// strided slice, block_sum combines them (f32), then each thread scales the same slice it read,
// so an in-place y never races with another thread's reads.
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

constexpr int kThreads = 256;

__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const float* x, const float* w, float eps, float* y, int64_t n, int64_t d) {
  __shared__ float scratch[kWarpSize];
  for (int64_t r = blockIdx.x; r < n; r += gridDim.x) {
    const float* xr = x + r * d;
    float ss = 0.0f;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) ss += xr[j] * xr[j];
    ss = block_sum(ss, scratch);
    const float s = 1.0f / sqrtf(ss / float(d) + eps);
    float* yr = y + r * d;
    for (int64_t j = threadIdx.x; j < d; j += blockDim.x) yr[j] = xr[j] * s * w[j];
  }
}

}  // namespace

Status rms_norm(OpContext& ctx, const Tensor& x, const Tensor& w, float eps, const Tensor& y) {
  KVB_RETURN_IF_ERROR(check_rms_norm(x, w, eps, y));
  const int64_t d = x.cols();
  const int64_t n = x.rows();
  if (n == 0 || d == 0) return Status::Ok();
  const unsigned blocks = unsigned(n < 65536 ? n : 65536);
  rms_norm_kernel<<<blocks, kThreads, 0, ctx.stream>>>(x.as<const float>(), w.as<const float>(), eps, y.as<float>(),
                                                       n, d);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
