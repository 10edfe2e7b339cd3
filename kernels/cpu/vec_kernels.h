// Per-ISA vector primitives used by the non-matmul ops (norms, softmax, activations, attention,
// conversions). The op files (rms_norm.cpp, attention.cpp, ...) own validation and threading and
// call these single-threaded loops on rows.
//
// One implementation (vec_kernels_impl.h, written against a small SIMD trait) is compiled three
// times: AVX-512, AVX2 and portable C++. All arithmetic is f32; exp is a degree-7 polynomial after
// Cody-Waite range reduction (max relative error ~2 ulp; exp(x) = 0 for x < -87.3, inputs above 88
// are clamped to 88). Arrays may have any length and alignment; outputs may alias inputs where noted.
#pragma once

#include <cstdint>

namespace kvb::cpu {

struct VecKernels {
  const char* name = "";
  // out[r * ldo + j] = scale * sum_d q[r * ldq + d] * k[j * ldk + d], r < nq, j < n, d < hd: nq
  // queries (a GQA group) against n cached keys, f32 or IEEE-half rows ldk elements apart; each key
  // row is read once for all the queries.
  void (*dots)(const float* q, int64_t ldq, int64_t nq, const float* k, int64_t ldk, int64_t n, int64_t hd, float scale,
               float* out, int64_t ldo) = nullptr;
  void (*dots_f16)(const float* q, int64_t ldq, int64_t nq, const uint16_t* k, int64_t ldk, int64_t n, int64_t hd,
                   float scale, float* out, int64_t ldo) = nullptr;
  void (*scale)(float* x, float s, int64_t n) = nullptr;  // x *= s
  float (*max)(const float* x, int64_t n) = nullptr;      // -inf for n == 0
  // x[i] = exp(x[i] - sub); returns the sum of the new x.
  float (*exp_sum)(float* x, float sub, int64_t n) = nullptr;
  // acc[i] = max(acc[i], x[i]).
  void (*max_into)(float* acc, const float* x, int64_t n) = nullptr;
  // x[i] = exp(x[i] - sub[i]); sum[i] += x[i].
  void (*exp_sub_into)(float* x, const float* sub, float* sum, int64_t n) = nullptr;
  float (*sum_sq)(const float* x, int64_t n) = nullptr;
  // y[i] = x[i] * s * w[i]; y may alias x.
  void (*scale_mul)(const float* x, float s, const float* w, float* y, int64_t n) = nullptr;
  // out[i] = g[i] / (1 + exp(-g[i])) * u[i]; out may alias g or u.
  void (*silu_mul)(const float* g, const float* u, float* out, int64_t n) = nullptr;
  // out[i] = a[i] + b[i]; out may alias a or b.
  void (*add)(const float* a, const float* b, float* out, int64_t n) = nullptr;
  // IEEE half <-> f32 with round-to-nearest-even (same results as kvb::fp32_to_fp16 except NaN
  // payloads).
  void (*f16_to_f32)(const uint16_t* x, float* y, int64_t n) = nullptr;
  void (*f32_to_f16)(const float* x, uint16_t* y, int64_t n) = nullptr;
  // c[i][j] (+)= sum_kk a(i, kk) * b[kk][j], i < m, j < n, kk < k, where a(i, kk) = a[i * a_rs + kk * a_cs]
  // (so a may be read transposed), b rows are ldb apart and c rows ldc apart. Vectorized along j.
  // For attention's small tiles (m, n, k <= a few hundred); c must not overlap a or b.
  void (*gemm)(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb,
               float* c, int64_t ldc, bool accumulate) = nullptr;
  // The same with b in IEEE half (a V cache read in place).
  void (*gemm_f16b)(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const uint16_t* b,
                    int64_t ldb, float* c, int64_t ldc, bool accumulate) = nullptr;
  // One online-softmax step of flash attention over a tile of bk cells, in the transposed layout
  // where column r of every [..][ld] matrix is one stacked query row (r < nr; ld is a multiple of 16
  // and >= nr; columns nr .. ld of qt, m, l, ot and lim must hold finite values, e.g. qt = 0):
  //   s[j][r]  = sum_d k[j * hd + d] * qt[d * ld + r]       (j < bk; qt holds the scaled queries)
  //   s[j][r]  = -inf where lim != nullptr and j > lim[r]  (lim: last visible cell of the tile)
  //   mx = max(m[r], max_j s[j][r]);  a = exp(m[r] - mx);  m[r] = mx
  //   p[j][r]  = exp(s[j][r] - mx);    l[r] = l[r] a + sum_j p[j][r]
  //   ot[d * ld + r] = ot[d * ld + r] a + sum_j v[j * hd + d] p[j][r]          (d < hd)
  // k and v are contiguous f32 tiles [bk][hd]; s is scratch of (bk + 1) rows of ld floats. m starts
  // at -inf; after a column's first step it must have seen a visible cell (else a = NaN).
  void (*flash_step)(int64_t bk, int64_t hd, int64_t nr, int64_t ld, const float* k, const float* v, const float* qt,
                     const float* lim, float* s, float* m, float* l, float* ot) = nullptr;
};

const VecKernels& vec_kernels_generic();
#if KVB_CPU_X86
const VecKernels& vec_kernels_avx2();
const VecKernels& vec_kernels_avx512();
#endif

}  // namespace kvb::cpu
