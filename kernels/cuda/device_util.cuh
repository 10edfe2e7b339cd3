// Device-side helpers shared by the kernels of kernels/cuda/*.cu (nvcc only).
//
// - f16/bf16 conversions that are bit-identical to kernels/dtype.cpp (fp32_to_fp16, fp16_to_fp32,
//   fp32_to_bf16, bf16_to_fp32): the same branch-free integer arithmetic as
//   engine/kv_wire_values.cpp, NaN handling included. They rely on IEEE float adds with denormals
//   (nvcc's default -ftz=false); never build these files with --use_fast_math.
// - warp and block reductions (sum, max) over float.
// - grid sizing for grid-stride loops.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/dtype.h"

namespace kvb::cuda {

inline constexpr int kWarpSize = 32;
inline constexpr unsigned kFullMask = 0xffffffffu;

// ---- scalar conversions (bit-exact twins of kernels/dtype.cpp) ----

__device__ __forceinline__ uint16_t f32_to_f16_bits(float f) {
  const uint32_t x = __float_as_uint(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  // Normal range: rebias the exponent (-112 << 23) and round to nearest even at bit 13.
  const uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;
  // Subnormal range: one float add puts the f16 lsb (2^-24) on float's lsb; the FPU rounds (RNE).
  const uint32_t sub = __float_as_uint(__fadd_rn(__uint_as_float(a), 0.5f)) - 0x3f000000u;
  const uint32_t special = 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u);  // inf, or a quiet NaN
  uint32_t r = a < 0x38800000u ? sub : normal;
  r = a >= 0x477ff000u ? 0x7c00u : r;  // rounds to inf
  r = a >= 0x7f800000u ? special : r;
  return uint16_t(sign | r);
}

__device__ __forceinline__ float f16_bits_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t o = uint32_t(h & 0x7fffu) << 13;
  const uint32_t exp = o & 0x0f800000u;
  const uint32_t normal = o + 0x38000000u;   // exponent + (127 - 15)
  const uint32_t special = o + 0x70000000u;  // inf/NaN: exponent 255, payload kept
  // Zero and subnormals: (1 + m/1024)·2^-14 - 2^-14 = m·2^-24, exact (Sterbenz).
  const float sub = __fsub_rn(__uint_as_float(o + 0x38800000u), 0x1p-14f);
  uint32_t r = exp == 0x0f800000u ? special : normal;
  r = exp == 0 ? __float_as_uint(sub) : r;
  return __uint_as_float(sign | r);
}

__device__ __forceinline__ uint16_t f32_to_bf16_bits(float f) {
  const uint32_t x = __float_as_uint(f);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (x >> 16) | 0x40u;
  return uint16_t((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

__device__ __forceinline__ float bf16_bits_to_f32(uint16_t h) { return __uint_as_float(uint32_t(h) << 16); }

// Element i of a row-major array of type t ∈ {F32, F16, BF16, Q8_0}, as f32. For Q8_0, i counts
// elements: block i / 32 holds the f16 scale d and 32 int8 q (ggml's block_q8_0, 34 bytes).
__device__ __forceinline__ float load_as_f32(DType t, const void* base, int64_t i) {
  switch (t) {
    case DType::kF16:
      return f16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::kBF16:
      return bf16_bits_to_f32(static_cast<const uint16_t*>(base)[i]);
    case DType::kQ8_0: {
      const auto* block = static_cast<const uint8_t*>(base) + (i / kQ8BlockSize) * int64_t(sizeof(BlockQ8_0));
      const float d = f16_bits_to_f32(*reinterpret_cast<const uint16_t*>(block));  // 34-byte blocks: 2-aligned
      const auto q = static_cast<int8_t>(block[2 + i % kQ8BlockSize]);
      return __fmul_rn(d, float(q));
    }
    default:
      return static_cast<const float*>(base)[i];
  }
}

// ---- reductions ----

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(kFullMask, v, o);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, o));
  return v;
}

// Block-wide sum / max for blockDim.x a multiple of 32 (<= 1024); every thread gets the result.
// `scratch` is __shared__ float[32]. Contains __syncthreads: call from all threads of the block.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
  const int lane = int(threadIdx.x) % kWarpSize, warp = int(threadIdx.x) / kWarpSize;
  const int n_warps = int(blockDim.x) / kWarpSize;
  v = warp_sum(v);
  __syncthreads();  // scratch may still be read by a previous reduction
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < n_warps ? scratch[lane] : 0.0f;
  return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
  const int lane = int(threadIdx.x) % kWarpSize, warp = int(threadIdx.x) / kWarpSize;
  const int n_warps = int(blockDim.x) / kWarpSize;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < n_warps ? scratch[lane] : -INFINITY;
  return warp_max(v);
}

// ---- launch geometry ----

inline constexpr int kElementwiseThreads = 256;

// Blocks for a grid-stride loop over n elements: enough to fill the GPU, never more than needed.
inline unsigned elementwise_blocks(int64_t n) {
  const int64_t blocks = (n + kElementwiseThreads - 1) / kElementwiseThreads;
  return unsigned(blocks < 1 ? 1 : (blocks > 65536 ? 65536 : blocks));
}

}  // namespace kvb::cuda
