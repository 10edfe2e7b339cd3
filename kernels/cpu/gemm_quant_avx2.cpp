// AVX2 kernels over U4 / U8 quant panels (quant_panel.h), compiled with -mavx2 -mfma -mf16c; also the
// kernels of AVX-512 CPUs without VNNI.
//
// A 4-input slice of 8 panel rows is one ymm of unsigned bytes (a 32-bit lane per row). The byte dot
// with 4 broadcast int8 activations is PMADDUBSW (u8 x s8 pairs summed to int16: at most
// 2 * 63 * 127 = 16002, so it never saturates for q < 64) then PMADDWD by 1 (pairs to int32).
// 16 ymm registers hold the accumulators of N x rows for C of the panel's four 8-row column slices,
// N * C <= 4; the kernels walk the slices in passes.
#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/avx2_reduce.h"
#include "kernels/cpu/quant_panel.h"

namespace kvb::cpu {
namespace {

constexpr int64_t kPrefetchBytes = 2048;

inline __m256i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}

inline __m256i dot4(__m256i acc, __m256i w, __m256i x) {
  const __m256i pairs = _mm256_maddubs_epi16(w, x);
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}

template <int N, int C>
inline void store_cols(const __m256 (&acc)[N][C], int c0, float* y, int64_t ldy, int nc, bool accumulate) {
  for (int i = 0; i < N; ++i) {
    for (int c = 0; c < C; ++c) {
      const int col = 8 * (c0 + c);
      if (col >= nc) continue;
      float* yr = y + i * ldy + col;
      if (col + 8 <= nc) {
        const __m256 v = accumulate ? _mm256_add_ps(acc[i][c], _mm256_loadu_ps(yr)) : acc[i][c];
        _mm256_storeu_ps(yr, v);
      } else {
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, acc[i][c]);
        for (int j = 0; j < nc - col; ++j) yr[j] = accumulate ? yr[j] + tmp[j] : tmp[j];
      }
    }
  }
}

// acc[i][c] += (s * dx_i) * float(dot[i][c]) + m * sx_i for column slices c0 .. c0 + C - 1.
template <int N, int C>
inline void scale_add(__m256 (&acc)[N][C], const __m256i (&dot)[N][C], int c0, const float* s, const float* m,
                      const float* dx, const float* sx) {
  for (int c = 0; c < C; ++c) {
    const __m256 sv = _mm256_loadu_ps(s + 8 * (c0 + c)), mv = _mm256_loadu_ps(m + 8 * (c0 + c));
    for (int i = 0; i < N; ++i) {
      acc[i][c] = _mm256_fmadd_ps(_mm256_mul_ps(sv, _mm256_set1_ps(dx[i])), _mm256_cvtepi32_ps(dot[i][c]),
                                  _mm256_fmadd_ps(mv, _mm256_set1_ps(sx[i]), acc[i][c]));
    }
  }
}

template <int N, int C>
void gemv_u4_cols(const uint8_t* panel, int64_t k, int c0, const QuantizedRows& x, float* y, int64_t ldy, int nc,
                  bool accumulate) {
  const int64_t groups = k / 32;
  const __m256i low = _mm256_set1_epi8(0x0F);
  __m256 acc[N][C];
  for (auto& a : acc) for (auto& v : a) v = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* group = panel + g * int64_t(kU4GroupBytes);
    for (size_t line = 0; line < kU4GroupBytes; line += 256) {
      _mm_prefetch(reinterpret_cast<const char*>(group + kPrefetchBytes + line), _MM_HINT_T0);
    }
    const uint8_t* q = group + 2 * kPanel * sizeof(float);
    __m256i dot[N][C];
    for (auto& d : dot) for (auto& v : d) v = _mm256_setzero_si256();
    for (int o = 0; o < 4; ++o) {
      for (int c = 0; c < C; ++c) {
        const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + o * kPanel * 4 + 32 * (c0 + c)));
        const __m256i lo = _mm256_and_si256(w, low), hi = _mm256_and_si256(_mm256_srli_epi16(w, 4), low);
        for (int i = 0; i < N; ++i) {
          const int8_t* xq = x.q + i * k + g * 32 + 8 * o;
          dot[i][c] = dot4(dot4(dot[i][c], lo, broadcast4(xq)), hi, broadcast4(xq + 4));
        }
      }
    }
    float dx[N], sx[N];
    for (int i = 0; i < N; ++i) {
      dx[i] = x.d[i * groups + g];
      sx[i] = x.sum16[i * 2 * groups + 2 * g] + x.sum16[i * 2 * groups + 2 * g + 1];
    }
    const auto* f = reinterpret_cast<const float*>(group);
    scale_add<N, C>(acc, dot, c0, f, f + kPanel, dx, sx);
  }
  store_cols<N, C>(acc, c0, y, ldy, nc, accumulate);
}

template <int N, int C>
void gemv_u8_cols(const uint8_t* panel, int64_t k, int c0, const QuantizedRows& x, float* y, int64_t ldy, int nc,
                  bool accumulate) {
  const int64_t groups = k / 32;
  __m256 acc[N][C];
  for (auto& a : acc) for (auto& v : a) v = _mm256_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* group = panel + g * int64_t(kU8GroupBytes);
    for (size_t line = 0; line < kU8GroupBytes; line += 256) {
      _mm_prefetch(reinterpret_cast<const char*>(group + kPrefetchBytes + line), _MM_HINT_T0);
    }
    const auto* f = reinterpret_cast<const float*>(group);
    const uint8_t* q = group + 4 * kPanel * sizeof(float);
    for (int h = 0; h < 2; ++h) {
      __m256i dot[N][C];
      for (auto& d : dot) for (auto& v : d) v = _mm256_setzero_si256();
      for (int j = 4 * h; j < 4 * h + 4; ++j) {
        for (int c = 0; c < C; ++c) {
          const __m256i w = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + j * kPanel * 4 + 32 * (c0 + c)));
          for (int i = 0; i < N; ++i) dot[i][c] = dot4(dot[i][c], w, broadcast4(x.q + i * k + g * 32 + 4 * j));
        }
      }
      float dx[N], sx[N];
      for (int i = 0; i < N; ++i) {
        dx[i] = x.d[i * groups + g];
        sx[i] = x.sum16[i * 2 * groups + 2 * g + h];
      }
      scale_add<N, C>(acc, dot, c0, f + h * kPanel, f + 2 * kPanel + h * kPanel, dx, sx);
    }
  }
  store_cols<N, C>(acc, c0, y, ldy, nc, accumulate);
}

// Runs the column passes of one panel: C slices per pass, N * C <= 4.
template <int N, int C, bool kU4>
void gemv_passes(const uint8_t* panel, int64_t k, const QuantizedRows& x, float* y, int64_t ldy, int nc,
                 bool accumulate) {
  for (int c0 = 0; c0 < 4 && 8 * c0 < nc; c0 += C) {
    if constexpr (kU4) {
      gemv_u4_cols<N, C>(panel, k, c0, x, y, ldy, nc, accumulate);
    } else {
      gemv_u8_cols<N, C>(panel, k, c0, x, y, ldy, nc, accumulate);
    }
  }
}

template <bool kU4>
void gemv(const uint8_t* panel, int64_t k, const QuantizedRows& x, int n, float* y, int64_t ldy, int nc,
          bool accumulate) {
  switch (n) {
    case 1: return gemv_passes<1, 4, kU4>(panel, k, x, y, ldy, nc, accumulate);
    case 2: return gemv_passes<2, 2, kU4>(panel, k, x, y, ldy, nc, accumulate);
    case 3: return gemv_passes<3, 1, kU4>(panel, k, x, y, ldy, nc, accumulate);
    default: return gemv_passes<4, 1, kU4>(panel, k, x, y, ldy, nc, accumulate);
  }
}

// quantize_rows with one 32-input group in four ymm: the same bits (see the AVX-512 version).
QuantizedRows quantize(const float* x, int64_t ldx, int n, int64_t k, void* storage) {
  const QuantizedRowsStorage out = quantized_rows_storage(n, k, storage);
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int i = 0; i < n; ++i) {
    for (int64_t g = 0; g < k / 32; ++g) {
      const float* xs = x + i * ldx + g * 32;
      __m256 v[4];
      for (int j = 0; j < 4; ++j) v[j] = _mm256_loadu_ps(xs + 8 * j);
      const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
                                     _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])));
      const GroupScale gs = group_scale(avx2::hmax(m));
      const __m256 inv = _mm256_set1_ps(gs.inv);
      __m256i q[4];
      for (int j = 0; j < 4; ++j) q[j] = _mm256_cvtps_epi32(_mm256_mul_ps(v[j], inv));
      // Packing interleaves the 128-bit lanes: [0..3 8..11 4..7 12..15 | ...]; the permute undoes it.
      const __m256i p16 = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
      const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16, p16b),
                                                     _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out.q + i * k + g * 32), p8);
      out.d[i * (k / 32) + g] = gs.d;
      out.sum16[i * (k / 16) + 2 * g] = gs.d * float(avx2::hsum(_mm256_add_epi32(q[0], q[1])));
      out.sum16[i * (k / 16) + 2 * g + 1] = gs.d * float(avx2::hsum(_mm256_add_epi32(q[2], q[3])));
    }
  }
  return QuantizedRows{out.q, out.d, out.sum16, k};
}

}  // namespace

const QuantKernels& quant_kernels_avx2() {
  static const QuantKernels k{"avx2", {gemv<true>, gemv<false>}, quantize};
  return k;
}

}  // namespace kvb::cpu
