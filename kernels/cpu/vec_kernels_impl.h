// The VecKernels algorithms, written once against a SIMD trait S and included by
// vec_kernels_{generic,avx2,avx512}.cpp, each of which defines its S in an anonymous namespace (so
// every instantiation has internal linkage and no ISA-specific code can be shared across TUs).
//
// S provides, for a vector V of S::kW floats:
//   zero() set1(f) load(p) store(p, v) load_n(p, n, fill) store_n(p, v, n)   (n < kW lanes)
//   load_h(p) load_h_n(p, n) store_h(p, v) store_h_n(p, v, n)                  (IEEE half memory)
//   add sub mul div max min fma(a, b, c) = a*b + c, fnma(a, b, c) = c - a*b
//   hsum(v) hmax(v) round(v) (to nearest) ldexp(p, n) = p * 2^n (n integral, |n| <= 127)
//   zero_below(v, x, c) = x < c ? 0 : v (lane-wise)
//   blend_lt(x, y, a, b) = x < y ? a : b (lane-wise)
//   kGemmRows: rows of c per gemm register block (4 where there are 32 vector registers, else 2)
// Only include this from a vec_kernels_*.cpp file.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

#include "kernels/cpu/vec_kernels.h"

namespace kvb::cpu::vec_impl {

inline constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// ---- exp: Cody-Waite reduction x = n ln2 + r, |r| <= ln2/2, then a degree-7 Taylor polynomial
// (truncation < 6e-9 relative, below f32 rounding) scaled by 2^n. ----
template <class S>
inline typename S::V exp_v(typename S::V x) {
  constexpr float kMinArg = -87.33654f;  // exp(kMinArg) = 2^-126, the smallest normal
  constexpr float kMaxArg = 88.0f;       // keeps n <= 127
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;  // 16 significant bits: n * kLn2Hi is exact
  constexpr float kLn2Lo = 1.42860682030941723212e-6f;
  const auto xc = S::min(S::max(x, S::set1(kMinArg)), S::set1(kMaxArg));
  const auto n = S::round(S::mul(xc, S::set1(kLog2e)));
  auto r = S::fnma(n, S::set1(kLn2Hi), xc);
  r = S::fnma(n, S::set1(kLn2Lo), r);
  auto p = S::set1(1.0f / 5040.0f);
  p = S::fma(p, r, S::set1(1.0f / 720.0f));
  p = S::fma(p, r, S::set1(1.0f / 120.0f));
  p = S::fma(p, r, S::set1(1.0f / 24.0f));
  p = S::fma(p, r, S::set1(1.0f / 6.0f));
  p = S::fma(p, r, S::set1(0.5f));
  p = S::fma(p, r, S::set1(1.0f));
  p = S::fma(p, r, S::set1(1.0f));
  return S::zero_below(S::ldexp(p, n), x, kMinArg);
}

// Row loads of f32 or IEEE-half memory as f32 vectors.
template <class S>
inline typename S::V load_row(const float* p) {
  return S::load(p);
}
template <class S>
inline typename S::V load_row(const uint16_t* p) {
  return S::load_h(p);
}
template <class S>
inline typename S::V load_row_n(const float* p, int n) {
  return S::load_n(p, n, 0.0f);
}
template <class S>
inline typename S::V load_row_n(const uint16_t* p, int n) {
  return S::load_h_n(p, n);
}

template <class S, class T>
inline float dot(const float* a, const T* b, int64_t n) {
  constexpr int kW = S::kW;
  auto s0 = S::zero(), s1 = S::zero(), s2 = S::zero(), s3 = S::zero();
  int64_t i = 0;
  for (; i + 4 * kW <= n; i += 4 * kW) {
    s0 = S::fma(S::load(a + i), load_row<S>(b + i), s0);
    s1 = S::fma(S::load(a + i + kW), load_row<S>(b + i + kW), s1);
    s2 = S::fma(S::load(a + i + 2 * kW), load_row<S>(b + i + 2 * kW), s2);
    s3 = S::fma(S::load(a + i + 3 * kW), load_row<S>(b + i + 3 * kW), s3);
  }
  for (; i + kW <= n; i += kW) s0 = S::fma(S::load(a + i), load_row<S>(b + i), s0);
  if (i < n) s1 = S::fma(S::load_n(a + i, int(n - i), 0.0f), load_row_n<S>(b + i, int(n - i)), s1);
  return S::hsum(S::add(S::add(s0, s1), S::add(s2, s3)));
}

// Cache rows are usually far apart (n_head_kv * hd elements), a stride the hardware prefetchers do
// not follow across pages: the row kPrefetchRows ahead is prefetched by hand.
inline constexpr int64_t kPrefetchRows = 8;

template <class T>
inline void prefetch_row(const T* row, int64_t n) {
  const auto* p = reinterpret_cast<const char*>(row);
  for (int64_t off = 0; off < n * int64_t(sizeof(T)); off += 64) __builtin_prefetch(p + off);
}

template <class S, class T>
void dots(const float* q, int64_t ldq, int64_t nq, const T* k, int64_t ldk, int64_t n, int64_t hd, float scale,
          float* out, int64_t ldo) {
  for (int64_t j = 0; j < n; ++j) {
    if (j + kPrefetchRows < n) prefetch_row(k + (j + kPrefetchRows) * ldk, hd);
    // Every query of the group against this cell while its row is in L1.
    for (int64_t r = 0; r < nq; ++r) out[r * ldo + j] = scale * dot<S>(q + r * ldq, k + j * ldk, hd);
  }
}

template <class S>
void scale(float* x, float s, int64_t n) {
  constexpr int kW = S::kW;
  const auto sv = S::set1(s);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) S::store(x + i, S::mul(S::load(x + i), sv));
  if (i < n) S::store_n(x + i, S::mul(S::load_n(x + i, int(n - i), 0.0f), sv), int(n - i));
}

template <class S>
float max(const float* x, int64_t n) {
  constexpr int kW = S::kW;
  auto m0 = S::set1(kNegInf), m1 = S::set1(kNegInf);
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    m0 = S::max(m0, S::load(x + i));
    m1 = S::max(m1, S::load(x + i + kW));
  }
  for (; i + kW <= n; i += kW) m0 = S::max(m0, S::load(x + i));
  if (i < n) m1 = S::max(m1, S::load_n(x + i, int(n - i), kNegInf));
  return S::hmax(S::max(m0, m1));
}

template <class S>
float exp_sum(float* x, float sub, int64_t n) {
  constexpr int kW = S::kW;
  const auto sv = S::set1(sub);
  auto s0 = S::zero(), s1 = S::zero();
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    const auto e0 = exp_v<S>(S::sub(S::load(x + i), sv));
    const auto e1 = exp_v<S>(S::sub(S::load(x + i + kW), sv));
    S::store(x + i, e0);
    S::store(x + i + kW, e1);
    s0 = S::add(s0, e0);
    s1 = S::add(s1, e1);
  }
  for (; i + kW <= n; i += kW) {
    const auto e = exp_v<S>(S::sub(S::load(x + i), sv));
    S::store(x + i, e);
    s0 = S::add(s0, e);
  }
  if (i < n) {
    const auto e = exp_v<S>(S::sub(S::load_n(x + i, int(n - i), kNegInf), sv));  // pad lanes: exp = 0
    S::store_n(x + i, e, int(n - i));
    s1 = S::add(s1, e);
  }
  return S::hsum(S::add(s0, s1));
}

template <class S>
void max_into(float* acc, const float* x, int64_t n) {
  constexpr int kW = S::kW;
  int64_t i = 0;
  for (; i + kW <= n; i += kW) S::store(acc + i, S::max(S::load(acc + i), S::load(x + i)));
  if (i < n) {
    const int t = int(n - i);
    S::store_n(acc + i, S::max(S::load_n(acc + i, t, 0.0f), S::load_n(x + i, t, 0.0f)), t);
  }
}

template <class S>
void exp_sub_into(float* x, const float* sub, float* sum, int64_t n) {
  constexpr int kW = S::kW;
  int64_t i = 0;
  for (; i + kW <= n; i += kW) {
    const auto e = exp_v<S>(S::sub(S::load(x + i), S::load(sub + i)));
    S::store(x + i, e);
    S::store(sum + i, S::add(S::load(sum + i), e));
  }
  if (i < n) {
    const int t = int(n - i);
    const auto e = exp_v<S>(S::sub(S::load_n(x + i, t, 0.0f), S::load_n(sub + i, t, 0.0f)));
    S::store_n(x + i, e, t);
    S::store_n(sum + i, S::add(S::load_n(sum + i, t, 0.0f), e), t);
  }
}

template <class S>
float sum_sq(const float* x, int64_t n) {
  constexpr int kW = S::kW;
  auto s0 = S::zero(), s1 = S::zero();
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    const auto a = S::load(x + i), b = S::load(x + i + kW);
    s0 = S::fma(a, a, s0);
    s1 = S::fma(b, b, s1);
  }
  for (; i + kW <= n; i += kW) {
    const auto a = S::load(x + i);
    s0 = S::fma(a, a, s0);
  }
  if (i < n) {
    const auto a = S::load_n(x + i, int(n - i), 0.0f);
    s1 = S::fma(a, a, s1);
  }
  return S::hsum(S::add(s0, s1));
}

template <class S>
void scale_mul(const float* x, float s, const float* w, float* y, int64_t n) {
  constexpr int kW = S::kW;
  const auto sv = S::set1(s);
  int64_t i = 0;
  for (; i + kW <= n; i += kW) S::store(y + i, S::mul(S::mul(S::load(x + i), sv), S::load(w + i)));
  if (i < n) {
    const int t = int(n - i);
    S::store_n(y + i, S::mul(S::mul(S::load_n(x + i, t, 0.0f), sv), S::load_n(w + i, t, 0.0f)), t);
  }
}

template <class S>
inline typename S::V silu_mul_v(typename S::V g, typename S::V u) {
  const auto e = exp_v<S>(S::sub(S::zero(), g));
  return S::div(S::mul(g, u), S::add(S::set1(1.0f), e));
}

template <class S>
void silu_mul(const float* g, const float* u, float* out, int64_t n) {
  constexpr int kW = S::kW;
  int64_t i = 0;
  for (; i + kW <= n; i += kW) S::store(out + i, silu_mul_v<S>(S::load(g + i), S::load(u + i)));
  if (i < n) {
    const int t = int(n - i);
    S::store_n(out + i, silu_mul_v<S>(S::load_n(g + i, t, 0.0f), S::load_n(u + i, t, 0.0f)), t);
  }
}

template <class S>
void add(const float* a, const float* b, float* out, int64_t n) {
  constexpr int kW = S::kW;
  int64_t i = 0;
  for (; i + kW <= n; i += kW) S::store(out + i, S::add(S::load(a + i), S::load(b + i)));
  if (i < n) {
    const int t = int(n - i);
    S::store_n(out + i, S::add(S::load_n(a + i, t, 0.0f), S::load_n(b + i, t, 0.0f)), t);
  }
}

template <class S>
void f16_to_f32(const uint16_t* x, float* y, int64_t n) {
  constexpr int kW = S::kW;
  int64_t i = 0;
  for (; i + kW <= n; i += kW) S::store(y + i, S::load_h(x + i));
  if (i < n) S::store_n(y + i, S::load_h_n(x + i, int(n - i)), int(n - i));
}

template <class S>
void f32_to_f16(const float* x, uint16_t* y, int64_t n) {
  constexpr int kW = S::kW;
  int64_t i = 0;
  for (; i + kW <= n; i += kW) S::store_h(y + i, S::load(x + i));
  if (i < n) S::store_h_n(y + i, S::load_n(x + i, int(n - i), 0.0f), int(n - i));
}

// ---- gemm: an R x (NV vectors) block of c; the last vector holds `last` valid lanes ----
// Every loop over r and v is unrolled by pragma: GCC keeps acc in registers only if all of them are
// unrolled before its scalar-replacement pass.
template <class S, class TB, int R, int NV, bool kFull>
void gemm_block(int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const TB* b, int64_t ldb, float* c, int64_t ldc,
                bool accumulate, int last) {
  constexpr int kW = S::kW;
  typename S::V acc[R][NV];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const float* cp = c + r * ldc + v * kW;
      if (!accumulate) {
        acc[r][v] = S::zero();
      } else {
        acc[r][v] = (kFull || v < NV - 1) ? S::load(cp) : S::load_n(cp, last, 0.0f);
      }
    }
  }
  for (int64_t kk = 0; kk < k; ++kk) {
    const TB* bk = b + kk * ldb;
    if (kk + kPrefetchRows < k) prefetch_row(bk + kPrefetchRows * ldb, (NV - 1) * kW + last);
    typename S::V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      bv[v] = (kFull || v < NV - 1) ? load_row<S>(bk + v * kW) : load_row_n<S>(bk + v * kW, last);
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const auto av = S::set1(a[r * a_rs + kk * a_cs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* cp = c + r * ldc + v * kW;
      if (kFull || v < NV - 1) {
        S::store(cp, acc[r][v]);
      } else {
        S::store_n(cp, acc[r][v], last);
      }
    }
  }
}

template <class S, class TB, int R, int NV>
inline void gemm_block_dispatch(int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const TB* b, int64_t ldb,
                                float* c, int64_t ldc, bool accumulate, int last) {
  if (last == S::kW) {
    gemm_block<S, TB, R, NV, true>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, last);
  } else {
    gemm_block<S, TB, R, NV, false>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, last);
  }
}

template <class S, class TB, int R>
inline void gemm_rows(int nv, int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const TB* b, int64_t ldb, float* c,
                      int64_t ldc, bool accumulate, int last) {
  switch (nv) {
    case 1:
      return gemm_block_dispatch<S, TB, R, 1>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, last);
    case 2:
      return gemm_block_dispatch<S, TB, R, 2>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, last);
    case 3:
      return gemm_block_dispatch<S, TB, R, 3>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, last);
    default:
      return gemm_block_dispatch<S, TB, R, 4>(k, a, a_rs, a_cs, b, ldb, c, ldc, accumulate, last);
  }
}

template <class S, class TB>
void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const TB* b, int64_t ldb,
          float* c, int64_t ldc, bool accumulate) {
  constexpr int kW = S::kW;
  for (int64_t j0 = 0; j0 < n; j0 += 4 * kW) {
    const int cols = int(n - j0 < 4 * kW ? n - j0 : 4 * kW);
    const int nv = (cols + kW - 1) / kW;
    const int last = cols - (nv - 1) * kW;
    int64_t i = 0;
    if constexpr (S::kGemmRows == 4) {
      for (; i + 4 <= m; i += 4) {
        gemm_rows<S, TB, 4>(nv, k, a + i * a_rs, a_rs, a_cs, b + j0, ldb, c + i * ldc + j0, ldc, accumulate, last);
      }
    }
    for (; i + 2 <= m; i += 2) {
      gemm_rows<S, TB, 2>(nv, k, a + i * a_rs, a_rs, a_cs, b + j0, ldb, c + i * ldc + j0, ldc, accumulate, last);
    }
    if (i < m)
      gemm_rows<S, TB, 1>(nv, k, a + i * a_rs, a_rs, a_cs, b + j0, ldb, c + i * ldc + j0, ldc, accumulate, last);
  }
}

// ---- flash_step: the prefill attention tile, row-major (one row per stacked query row) ----

// c[i][0 .. NV kW) (+)= sum_kk a[i * a_rs + kk * a_cs] * b[kk * ldb + 0 .. NV kW) for i < R; with
// accumulate, c starts from its current contents, row i scaled by c_scale[i] (when not null).
// Operands are L1-resident tiles: no software prefetch.
template <class S, int R, int NV>
inline void tt_block(int64_t kdim, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb, float* c,
                     int64_t ldc, const float* c_scale, bool accumulate) {
  constexpr int kW = S::kW;
  typename S::V acc[R][NV];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      if (!accumulate) {
        acc[r][v] = S::zero();
      } else {
        acc[r][v] = S::load(c + r * ldc + v * kW);
        if (c_scale != nullptr) acc[r][v] = S::mul(acc[r][v], S::set1(c_scale[r]));
      }
    }
  }
  for (int64_t kk = 0; kk < kdim; ++kk) {
    typename S::V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = S::load(b + kk * ldb + v * kW);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const auto av = S::set1(a[r * a_rs + kk * a_cs]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = S::fma(av, bv[v], acc[r][v]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) S::store(c + r * ldc + v * kW, acc[r][v]);
  }
}

template <class S, int R, int CV>
inline void tt_rows(int nv, int64_t kdim, const float* a, int64_t a_rs, int64_t a_cs, const float* b, int64_t ldb,
                    float* c, int64_t ldc, const float* c_scale, bool accumulate) {
  if constexpr (CV > 0) {
    if (nv == CV) return tt_block<S, R, CV>(kdim, a, a_rs, a_cs, b, ldb, c, ldc, c_scale, accumulate);
    tt_rows<S, R, CV - 1>(nv, kdim, a, a_rs, a_cs, b, ldb, c, ldc, c_scale, accumulate);
  }
}

// tt_block for m <= R rows and nv <= CV vectors, both known at run time.
template <class S, int R, int CV>
inline void tt_tail(int m, int nv, int64_t kdim, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                    int64_t ldb, float* c, int64_t ldc, const float* c_scale, bool accumulate) {
  if constexpr (R > 0) {
    if (m == R) return tt_rows<S, R, CV>(nv, kdim, a, a_rs, a_cs, b, ldb, c, ldc, c_scale, accumulate);
    tt_tail<S, R - 1, CV>(m, nv, kdim, a, a_rs, a_cs, b, ldb, c, ldc, c_scale, accumulate);
  }
}

template <class S>
void flash_step(int64_t bk, int64_t hd, int64_t nr, const float* q, int64_t ldq, const float* kt, int64_t ldk,
                const float* v, int64_t ldv, const int64_t* lim, float* s, int64_t lds, float* m, float* l, float* o,
                int64_t ldo, float* t) {
  constexpr int kW = S::kW;
  // 32 vector registers: 6 rows x 4 vectors of accumulators; 16: 4 x 2.
  constexpr int kRb = S::kGemmRows == 4 ? 6 : 4;
  constexpr int kCv = S::kGemmRows == 4 ? 4 : 2;
  const int nvt = int((bk + kW - 1) / kW);  // vectors of an s row
  const int nvd = int((hd + kW - 1) / kW);  // vectors of an o row
  // Cells row r sees in this tile: the first visible(r).
  auto visible = [&](int64_t r) -> int64_t {
    if (lim == nullptr) return bk;
    return lim[r] < 0 ? 0 : lim[r] >= bk ? bk : lim[r] + 1;
  };
  // Cells some row of the row block [i, i + rb) sees (rows see prefixes, so this bounds them all).
  auto block_visible = [&](int64_t i, int rb) {
    int64_t n = 0;
    for (int r = 0; r < rb; ++r) n = std::max(n, visible(i + r));
    return n;
  };
  // s = q ktᵀ, per row block only over the vectors of cells the block sees (on the causal diagonal,
  // about half the tile).
  for (int64_t i = 0; i < nr; i += kRb) {
    const int rb = int(nr - i < kRb ? nr - i : kRb);
    const int nvb = int((block_visible(i, rb) + kW - 1) / kW);
    for (int v0 = 0; v0 < nvb; v0 += kCv) {
      tt_tail<S, kRb, kCv>(rb, nvb - v0 < kCv ? nvb - v0 : kCv, hd, q + i * ldq, ldq, 1, kt + v0 * kW, ldk,
                           s + i * lds + v0 * kW, lds, nullptr, false);
    }
  }
  // Online softmax along each row: t[r] = m_old - m_new, then t[nr_pad + r] = the row's sum of p.
  const int64_t nr_pad = (nr + kW - 1) / kW * kW;
  float* rowsum = t + nr_pad;
  for (int64_t r = 0; r < nr; ++r) {
    float* sr = s + r * lds;
    const int64_t nvis = visible(r);
    const int full = int(nvis / kW), rem = int(nvis % kW);
    const int nv_vis = full + (rem > 0 ? 1 : 0);
    float mnew = m[r];
    auto sum = S::zero();
    if (nvis > 0) {
      auto mx = S::set1(m[r]);
      for (int c = 0; c < full; ++c) mx = S::max(mx, S::load(sr + c * kW));
      if (rem > 0) mx = S::max(mx, S::load_n(sr + full * kW, rem, kNegInf));
      mnew = S::hmax(mx);
      const auto mv = S::set1(mnew);
      for (int c = 0; c < full; ++c) {
        const auto e = exp_v<S>(S::sub(S::load(sr + c * kW), mv));
        S::store(sr + c * kW, e);
        sum = S::add(sum, e);
      }
      if (rem > 0) {  // lanes past the last visible cell load as -inf: p = 0
        const auto e = exp_v<S>(S::sub(S::load_n(sr + full * kW, rem, kNegInf), mv));
        S::store(sr + full * kW, e);
        sum = S::add(sum, e);
      }
    }
    for (int c = nv_vis; c < nvt; ++c) S::store(sr + c * kW, S::zero());  // cells the row does not see
    t[r] = nvis > 0 ? m[r] - mnew : 0.0f;  // -inf while m[r] = -inf: alpha = 0
    m[r] = mnew;
    rowsum[r] = S::hsum(sum);
  }
  for (int64_t r = 0; r < nr_pad; r += kW) {
    const int n = int(nr - r < kW ? nr - r : kW);
    S::store_n(t + r, exp_v<S>(S::load_n(t + r, n, 0.0f)), n);  // alpha
  }
  for (int64_t r = 0; r < nr; ++r) l[r] = l[r] * t[r] + rowsum[r];
  // o = alpha o + p v, per row block over the cells it sees (p is 0 past each row's own).
  for (int64_t i = 0; i < nr; i += kRb) {
    const int rb = int(nr - i < kRb ? nr - i : kRb);
    const int64_t kd = block_visible(i, rb);
    if (kd == 0) continue;  // no row of the block sees a cell: alpha = 1 and o stays
    for (int v0 = 0; v0 < nvd; v0 += kCv) {
      tt_tail<S, kRb, kCv>(rb, nvd - v0 < kCv ? nvd - v0 : kCv, kd, s + i * lds, lds, 1, v + v0 * kW, ldv,
                           o + i * ldo + v0 * kW, ldo, t + i, true);
    }
  }
}

// All of the above for one trait, as a table. Aggregate-initialized (no shared inline constructor).
template <class S>
VecKernels make_vec_kernels(const char* name) {
  return VecKernels{name,          dots<S, float>,  dots<S, uint16_t>, scale<S>,         max<S>,      exp_sum<S>,
                    max_into<S>,   exp_sub_into<S>, sum_sq<S>,         scale_mul<S>,     silu_mul<S>, add<S>,
                    f16_to_f32<S>, f32_to_f16<S>,   gemm<S, float>,    gemm<S, uint16_t>, flash_step<S>};
}

}  // namespace kvb::cpu::vec_impl
