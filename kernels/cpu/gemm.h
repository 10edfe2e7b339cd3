// Per-ISA matmul kernels over the packed weight layout (packed_weight.h). matmul.cpp owns the
// blocking, x packing and threading; these are the single-threaded inner loops.
//
// Two regimes:
//   gemv   — n <= kMaxGemvRows rows of x (decode): reads one panel in its stored dtype, converts in
//            registers, and streams it exactly once; memory-bound.
//   micro  — BLIS-style register-blocked micro-kernel on f32 operands (prefill): x is packed into
//            row blocks [k][mr]; F16/BF16/Q8_0 panels are first expanded into an f32 tile [kc][32]
//            (unpack) that stays in L1 and is reused for every row block.
//
// Both regimes compute an F32/F16/BF16 output y[r][c] as one multiply-add chain in k order that
// starts from y[r][c] when accumulating (else from 0), whatever the rows beside r or the k blocking,
// so that gemv and GEMM give the same bits (PackedWeight::mode_invariant; Q8_0 is the exception).
//
// The ISA files are compiled with their own -m flags; nothing here may be called unless the CPU
// supports that ISA (cpu_backend.cpp checks once).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace kvb::cpu {

// The packed layout (described in packed_weight.h): panels of kPanel output rows; Q8_0 panels are
// groups of 32 k's of kQ8GroupBytes (32 f16 scales, then int8 q[32 k][32 rows]).
inline constexpr int kPanel = 32;
inline constexpr size_t kQ8GroupBytes = kPanel * 2 + kPanel * kQ8BlockSize;  // 1088

inline constexpr int kMaxGemvRows = 4;     // rows of x handled by gemv; more go through micro
inline constexpr int kNumWeightTypes = 4;  // F32, F16, BF16, Q8_0

// Index of a weight dtype in the kernel tables; -1 for a dtype weights cannot have.
inline int weight_type_index(DType t) {
  switch (t) {
    case DType::kF32:
      return 0;
    case DType::kF16:
      return 1;
    case DType::kBF16:
      return 2;
    case DType::kQ8_0:
      return 3;
    default:
      return -1;
  }
}

struct GemmKernels {
  // y[r][c] (+)= sum_k x[r][k] * W[c][k] for r < n (1 <= n <= kMaxGemvRows), c < nc (<= 32),
  // over one whole panel (k = n_in inputs). x rows are ldx apart, y rows ldy apart; only the nc
  // valid columns of y are touched.
  using GemvFn = void (*)(const uint8_t* panel, int64_t k, const float* x, int64_t ldx, int n, float* y, int64_t ldy,
                          int nc, bool accumulate);
  // tile[kk][c] = W[c][k0 + kk] as f32, kk < kc, all 32 columns (pad rows read as 0). For Q8_0,
  // k0 and kc are multiples of 32. Entry 0 (F32) is unused: F32 panels are read in place.
  using UnpackFn = void (*)(const uint8_t* panel, int64_t k0, int64_t kc, float* tile);
  // c[i][j] (+)= sum_kk a[kk][i] * b[kk][j] for i < m (<= mr), j < nc (<= 32). a is a packed row
  // block (rows mr apart: a[kk * mr + i]), b has rows of 32 floats, c rows ldc apart.
  // load_c: add to c's current contents, else overwrite. Meanwhile the pf_bytes at pf (the next
  // weight block's slice; pf may be null when pf_bytes is 0) are prefetched toward L1, spread over
  // the k loop where the ISA kernel can (a burst of prefetches that miss to DRAM stalls on fill
  // buffers).
  using MicroFn = void (*)(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int m, int nc,
                           bool load_c, const uint8_t* pf, size_t pf_bytes);

  // dst[kk * mr + i] = x[rb * mr + i][kk] for the mr rows of row block rb of x [n][k] (rows past n
  // read as 0), i.e. the packed layout `micro` reads. dst is the start of the whole packed x.
  // Optional: null means matmul.cpp's portable packing.
  using PackFn = void (*)(const float* x, int64_t n, int64_t k, int64_t rb, float* dst);

  const char* name = "";
  int mr = 1;  // rows per micro-kernel call and the row-block stride of packed x
  GemvFn gemv[kNumWeightTypes] = {};
  UnpackFn unpack[kNumWeightTypes] = {};
  MicroFn micro = nullptr;
  PackFn pack_x = nullptr;
};

const GemmKernels& gemm_kernels_generic();
#if KVB_CPU_X86
const GemmKernels& gemm_kernels_avx2();    // AVX2 + FMA + F16C
const GemmKernels& gemm_kernels_avx512();  // AVX-512 F/BW/VL/DQ
#endif

}  // namespace kvb::cpu
