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
  // One online-softmax step of flash attention over a tile of bk cells for nr stacked query rows,
  // row-major (row r of q, s, o, m, l is one query row):
  //   s[r][j]  = sum_d q[r * ldq + d] * kt[d * ldk + j]          (j < bk; q holds the scaled queries)
  //   row r sees cells j <= lim[r] only (lim == nullptr: all; lim[r] < 0: none); a block of rows
  //   is computed up to the last cell any of them sees, so the causal diagonal costs half a tile.
  //   mx = max(m[r], max_{seen j} s[r][j]);  a = exp(m[r] - mx);  m[r] = mx
  //   p[r][j]  = exp(s[r][j] - mx) for seen j, else 0;  l[r] = l[r] a + sum_j p[r][j]
  //   o[r * ldo + d] = o[r * ldo + d] a + sum_j p[r][j] v[j * ldv + d]          (d < hd)
  // Vector-width padding is read: kt columns up to round_up(bk, 16) and v and o columns up to
  // round_up(hd, 16) must be addressable (their values only reach the padding of s and o). s is
  // scratch of nr rows of lds >= round_up(bk, 16) floats; t is scratch of 2 round_up(nr, 16) floats.
  // m starts at -inf; a row's first step must see a cell (else a = NaN).
  void (*flash_step)(int64_t bk, int64_t hd, int64_t nr, const float* q, int64_t ldq, const float* kt, int64_t ldk,
                     const float* v, int64_t ldv, const int64_t* lim, float* s, int64_t lds, float* m, float* l,
                     float* o, int64_t ldo, float* t) = nullptr;
};

const VecKernels& vec_kernels_generic();
#if KVB_CPU_X86
const VecKernels& vec_kernels_avx2();
const VecKernels& vec_kernels_avx512();
#endif

}  // namespace kvb::cpu
