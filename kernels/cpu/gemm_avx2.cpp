// AVX2 + FMA + F16C matmul kernels (compiled with -mavx2 -mfma -mf16c).
//
// A panel row (32 outputs at one k) is four ymm registers; with only 16 registers the kernels work on
// half a panel (16 columns) at a time where the accumulators would not fit. As in gemm_avx512.cpp,
// everything is in an anonymous namespace and uses no out-of-line library templates.

// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized in their own _mm512_undefined_* helpers
// (GCC PR105593); the warnings are silenced for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "kernels/cpu/gemm.h"

namespace kvb::cpu {
namespace {

constexpr int kMr = 6;  // 6 x 16 accumulators = 12 ymm, + 2 for b and 1 for the a broadcast
// Software prefetch distance of the gemv streams (see gemm_avx512.cpp).
constexpr int64_t kPrefetchBytes = 2048;

inline int clamp_cols(int n) { return n < 0 ? 0 : n > 8 ? 8 : n; }

// ---- panel loaders: columns [8c, 8c + 8) of row k as f32 ----
struct LoadF32 {
  static constexpr int64_t kRowBytes = kPanel * 4;
  static inline __m256 vec(const uint8_t* panel, int64_t k, int c) {
    return _mm256_load_ps(reinterpret_cast<const float*>(panel) + k * kPanel + 8 * c);
  }
};
struct LoadF16 {
  static constexpr int64_t kRowBytes = kPanel * 2;
  static inline __m256 vec(const uint8_t* panel, int64_t k, int c) {
    return _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(panel + (k * kPanel + 8 * c) * 2)));
  }
};
struct LoadBF16 {
  static constexpr int64_t kRowBytes = kPanel * 2;
  static inline __m256 vec(const uint8_t* panel, int64_t k, int c) {
    const __m128i h = _mm_load_si128(reinterpret_cast<const __m128i*>(panel + (k * kPanel + 8 * c) * 2));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
};
inline __m256 q8_to_f32(const int8_t* q) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(q))));
}

// Writes acc (columns [8*c0, 8*(c0 + NC)) of N rows) to y, touching only columns < nc.
template <int N, int NC>
inline void store_cols(__m256 (&acc)[N][NC], int c0, float* y, int64_t ldy, int nc, bool accumulate) {
  for (int r = 0; r < N; ++r) {
    for (int c = 0; c < NC; ++c) {
      float* yc = y + r * ldy + 8 * (c0 + c);
      const int valid = clamp_cols(nc - 8 * (c0 + c));
      if (valid == 8) {
        _mm256_storeu_ps(yc, accumulate ? _mm256_add_ps(acc[r][c], _mm256_loadu_ps(yc)) : acc[r][c]);
      } else if (valid > 0) {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, acc[r][c]);
        for (int j = 0; j < valid; ++j) yc[j] = accumulate ? yc[j] + tmp[j] : tmp[j];
      }
    }
  }
}

// Reads columns [8*c0, 8*(c0 + NC)) of N rows of y into acc (0 past column nc): store_cols' inverse.
template <int N, int NC>
inline void load_cols(__m256 (&acc)[N][NC], int c0, const float* y, int64_t ldy, int nc) {
  for (int r = 0; r < N; ++r) {
    for (int c = 0; c < NC; ++c) {
      const float* yc = y + r * ldy + 8 * (c0 + c);
      const int valid = clamp_cols(nc - 8 * (c0 + c));
      alignas(32) float tmp[8] = {};
      if (valid == 8) {
        acc[r][c] = _mm256_loadu_ps(yc);
        continue;
      }
      for (int j = 0; j < valid; ++j) tmp[j] = yc[j];
      acc[r][c] = _mm256_load_ps(tmp);
    }
  }
}

// ---- gemv: N rows of x against vector columns [c0, c0 + NC) of one panel ----
template <int N, int NC, class L>
void gemv_cols(const uint8_t* panel, int64_t k, int c0, const float* x, int64_t ldx, float* y, int64_t ldy, int nc,
               bool accumulate) {
  // One accumulator chain per output whatever N, starting from y when accumulating, as the GEMM
  // micro-kernel's does: a row's bits depend neither on the rows beside it nor on the RowMode
  // (PackedWeight::mode_invariant). Decode is memory-bound: NC >= 2 independent chains per row
  // already stream faster than DRAM delivers.
  __m256 acc[N][NC];
  if (accumulate) {
    load_cols<N, NC>(acc, c0, y, ldy, nc);
  } else {
    for (int r = 0; r < N; ++r)
      for (int c = 0; c < NC; ++c) acc[r][c] = _mm256_setzero_ps();
  }
#pragma GCC unroll 2
  for (int64_t kk = 0; kk < k; ++kk) {
    const uint8_t* pf = panel + kk * L::kRowBytes + kPrefetchBytes;
    _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
    if constexpr (L::kRowBytes > 64) _mm_prefetch(reinterpret_cast<const char*>(pf + 64), _MM_HINT_T0);
#pragma GCC unroll 4
    for (int c = 0; c < NC; ++c) {
      const __m256 w = L::vec(panel, kk, c0 + c);
#pragma GCC unroll 4
      for (int r = 0; r < N; ++r) acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(x[r * ldx + kk]), w, acc[r][c]);
    }
  }
  store_cols<N, NC>(acc, c0, y, ldy, nc, false);
}

template <int N, int NC>
void gemv_q8_cols(const uint8_t* panel, int64_t k, int c0, const float* x, int64_t ldx, float* y, int64_t ldy, int nc,
                  bool accumulate) {
  __m256 acc[N][NC];
  for (int r = 0; r < N; ++r)
    for (int c = 0; c < NC; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t g = 0; g < k / kQ8BlockSize; ++g) {
    const uint8_t* group = panel + g * int64_t(kQ8GroupBytes);
    const auto* q = reinterpret_cast<const int8_t*>(group + kPanel * 2);
    const float* xg = x + g * kQ8BlockSize;
    __m256 d[NC];
    for (int c = 0; c < NC; ++c) {
      d[c] = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(group + (8 * (c0 + c)) * 2)));
    }
#pragma GCC unroll 4
    for (int kk = 0; kk < kQ8BlockSize; ++kk) {
      if (kk % 2 == 0) {  // 17 lines per 32 k's: one prefetch every other k
        _mm_prefetch(reinterpret_cast<const char*>(group + kPrefetchBytes + kk * 34), _MM_HINT_T0);
      }
#pragma GCC unroll 4
      for (int c = 0; c < NC; ++c) {
        const __m256 w = _mm256_mul_ps(q8_to_f32(q + kk * kPanel + 8 * (c0 + c)), d[c]);
#pragma GCC unroll 4
        for (int r = 0; r < N; ++r) acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(xg[r * ldx + kk]), w, acc[r][c]);
      }
    }
  }
  store_cols<N, NC>(acc, c0, y, ldy, nc, accumulate);
}

template <class L>
void gemv_plain(const uint8_t* panel, int64_t k, const float* x, int64_t ldx, int n, float* y, int64_t ldy, int nc,
                bool accumulate) {
  switch (n) {
    case 1:
      return gemv_cols<1, 4, L>(panel, k, 0, x, ldx, y, ldy, nc, accumulate);
    case 2:
      return gemv_cols<2, 4, L>(panel, k, 0, x, ldx, y, ldy, nc, accumulate);
    case 3:
      gemv_cols<3, 2, L>(panel, k, 0, x, ldx, y, ldy, nc, accumulate);
      if (nc > 16) gemv_cols<3, 2, L>(panel, k, 2, x, ldx, y, ldy, nc, accumulate);
      return;
    default:
      gemv_cols<4, 2, L>(panel, k, 0, x, ldx, y, ldy, nc, accumulate);
      if (nc > 16) gemv_cols<4, 2, L>(panel, k, 2, x, ldx, y, ldy, nc, accumulate);
      return;
  }
}

void gemv_q8(const uint8_t* panel, int64_t k, const float* x, int64_t ldx, int n, float* y, int64_t ldy, int nc,
             bool accumulate) {
  switch (n) {
    case 1:
      return gemv_q8_cols<1, 4>(panel, k, 0, x, ldx, y, ldy, nc, accumulate);
    case 2:
      gemv_q8_cols<2, 2>(panel, k, 0, x, ldx, y, ldy, nc, accumulate);
      if (nc > 16) gemv_q8_cols<2, 2>(panel, k, 2, x, ldx, y, ldy, nc, accumulate);
      return;
    case 3:
      gemv_q8_cols<3, 2>(panel, k, 0, x, ldx, y, ldy, nc, accumulate);
      if (nc > 16) gemv_q8_cols<3, 2>(panel, k, 2, x, ldx, y, ldy, nc, accumulate);
      return;
    default:
      gemv_q8_cols<4, 2>(panel, k, 0, x, ldx, y, ldy, nc, accumulate);
      if (nc > 16) gemv_q8_cols<4, 2>(panel, k, 2, x, ldx, y, ldy, nc, accumulate);
      return;
  }
}

// ---- unpack: stored dtype -> f32 tile[kc][32] ----
template <class L>
void unpack_plain(const uint8_t* panel, int64_t k0, int64_t kc, float* tile) {
  for (int64_t kk = 0; kk < kc; ++kk) {
    for (int c = 0; c < 4; ++c) _mm256_store_ps(tile + kk * kPanel + 8 * c, L::vec(panel, k0 + kk, c));
  }
}

void unpack_q8(const uint8_t* panel, int64_t k0, int64_t kc, float* tile) {
  for (int64_t g = k0 / kQ8BlockSize; g < (k0 + kc) / kQ8BlockSize; ++g) {
    const uint8_t* group = panel + g * int64_t(kQ8GroupBytes);
    const auto* q = reinterpret_cast<const int8_t*>(group + kPanel * 2);
    float* t = tile + (g * kQ8BlockSize - k0) * kPanel;
    for (int c = 0; c < 4; ++c) {
      const __m256 d = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(group + 16 * c)));
      for (int kk = 0; kk < kQ8BlockSize; ++kk) {
        _mm256_store_ps(t + kk * kPanel + 8 * c, _mm256_mul_ps(q8_to_f32(q + kk * kPanel + 8 * c), d));
      }
    }
  }
}

// ---- micro-kernel on half a panel: c[M][16] (+)= a[kc][kMr] (first M rows) * b[kc][16 of 32] ----
template <int M>
void micro_full(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, bool load_c) {
  __m256 c0[M], c1[M];
#pragma GCC unroll 6
  for (int i = 0; i < M; ++i) {
    c0[i] = load_c ? _mm256_loadu_ps(c + i * ldc) : _mm256_setzero_ps();
    c1[i] = load_c ? _mm256_loadu_ps(c + i * ldc + 8) : _mm256_setzero_ps();
  }
  for (int64_t kk = 0; kk < kc; ++kk) {
    const __m256 b0 = _mm256_load_ps(b + kk * kPanel);
    const __m256 b1 = _mm256_load_ps(b + kk * kPanel + 8);
    const float* ak = a + kk * kMr;
#pragma GCC unroll 6
    for (int i = 0; i < M; ++i) {
      const __m256 ai = _mm256_broadcast_ss(ak + i);
      c0[i] = _mm256_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm256_fmadd_ps(ai, b1, c1[i]);
    }
  }
#pragma GCC unroll 6
  for (int i = 0; i < M; ++i) {
    _mm256_storeu_ps(c + i * ldc, c0[i]);
    _mm256_storeu_ps(c + i * ldc + 8, c1[i]);
  }
}

// (The init and store loops are unrolled by pragma as well: GCC keeps the accumulator arrays in
// registers only if every loop indexing them is unrolled before its scalar-replacement pass.)

// Fewer than 16 valid columns (the last panel of an n_out that is not a multiple of 32): run on a
// stack tile and copy the valid part, so the hot kernel above has no masking.
template <int M>
void micro_half(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int nch, bool load_c) {
  if (nch == 16) return micro_full<M>(kc, a, b, c, ldc, load_c);
  alignas(32) float tmp[M * 16];
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < 16; ++j) tmp[i * 16 + j] = load_c && j < nch ? c[i * ldc + j] : 0.0f;
  }
  micro_full<M>(kc, a, b, tmp, 16, true);
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < nch; ++j) c[i * ldc + j] = tmp[i * 16 + j];
  }
}

template <int M>
inline void micro_dispatch(int m, int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int nch,
                           bool load_c) {
  if constexpr (M > 0) {
    if (m == M) return micro_half<M>(kc, a, b, c, ldc, nch, load_c);
    micro_dispatch<M - 1>(m, kc, a, b, c, ldc, nch, load_c);
  }
}

void micro(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int m, int nc, bool load_c,
           const uint8_t* pf, size_t pf_bytes) {
  micro_dispatch<kMr>(m, kc, a, b, c, ldc, nc < 16 ? nc : 16, load_c);
  if (nc > 16) micro_dispatch<kMr>(m, kc, a, b + 16, c + 16, ldc, nc - 16, load_c);
  for (size_t line = 0; line < pf_bytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(pf + line), _MM_HINT_T0);
}

}  // namespace

const GemmKernels& gemm_kernels_avx2() {
  // Aggregate initialization: no (shared, inline) constructor of GemmKernels runs in this TU.
  static const GemmKernels k{"avx2",
                             kMr,
                             {gemv_plain<LoadF32>, gemv_plain<LoadF16>, gemv_plain<LoadBF16>, gemv_q8},
                             {unpack_plain<LoadF32>, unpack_plain<LoadF16>, unpack_plain<LoadBF16>, unpack_q8},
                             micro,
                             nullptr};
  return k;
}

}  // namespace kvb::cpu
