// rope: rotary position embedding, in place on x[n][n_heads][head_dim] (f32) with positions
// pos[n] (i32, device). CPU twin: cpu/rope.cpp.
//
// Pair i (i < n_rot/2) of every head of row t is rotated by theta = pos[t] · freq_scale ·
// theta_base^(-2i/n_rot) / freq_factors[i] (factor 1 without a table): adjacent pairs (x[2i], x[2i+1]) for kNormal, (x[i], x[i + n_rot/2]) for
// kNeox; dims >= n_rot are left as they are. As on the CPU, the angle and its cos/sin are computed
// in double (positions reach 1e5+, where a float angle is already off by ~1e-2 rad) and rounded to
// float once. One thread per (row, pair), grid-stride; it rotates that pair in every head, so the
// double-precision sincos is paid once per row and pair.
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

__global__ void rope_kernel(float* x, const int32_t* pos, const float* factors, int64_t n, int64_t n_heads,
                            int64_t head_dim, int n_rot, double theta_base, double freq_scale, bool neox) {
  const int half = n_rot / 2;
  const int64_t total = n * half;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = idx / half;
    const int i = int(idx % half);
    double inv_freq = freq_scale * pow(theta_base, -2.0 * i / double(n_rot));
    if (factors) inv_freq /= double(factors[i]);
    double sd, cd;
    sincos(double(pos[t]) * inv_freq, &sd, &cd);
    const float s = float(sd), c = float(cd);
    const int64_t a = neox ? i : 2 * i;          // the pair's two elements within a head
    const int64_t b = neox ? i + half : 2 * i + 1;
    for (int64_t h = 0; h < n_heads; ++h) {
      float* v = x + (t * n_heads + h) * head_dim;
      const float x0 = v[a], x1 = v[b];
      v[a] = x0 * c - x1 * s;
      v[b] = x0 * s + x1 * c;
    }
  }
}

}  // namespace

Status rope(OpContext& ctx, const Tensor& x, const Tensor& pos, const RopeParams& p) {
  KVB_RETURN_IF_ERROR(check_rope(x, pos, p));
  const int64_t n = x.shape[0], n_heads = x.shape[1], head_dim = x.shape[2];
  if (n == 0 || n_heads == 0) return Status::Ok();
  const int64_t total = n * (p.n_rot / 2);
  rope_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, ctx.stream>>>(
      x.as<float>(), pos.as<const int32_t>(), p.freq_factors.as<const float>(), n, n_heads, head_dim, p.n_rot,
      double(p.theta_base), double(p.freq_scale), p.type == RopeType::kNeox);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
