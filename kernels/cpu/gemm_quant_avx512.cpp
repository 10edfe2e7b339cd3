// AVX-512 VNNI kernels over U4 / U8 quant panels (quant_panel.h), compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni; cpu_backend.cpp selects them only on a CPU with AVX-512 VNNI.
//
// A 4-input slice of a panel's 32 rows is two zmm of unsigned bytes (one 32-bit lane per row);
// VPDPBUSD multiplies each lane's 4 bytes with the 4 int8 activations broadcast to every lane and
// adds the sum to the lane's int32: 64 multiply-adds per instruction, no horizontal sums. Each
// (sub-)block's int32 dot is then scaled in f32 (see quant_panel.h for the algebra).

// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized in their own helpers (GCC PR105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include <cstring>

#include "kernels/cpu/quant_panel.h"

namespace kvb::cpu {
namespace {

// Software prefetch distance of the weight stream (as the f32-path gemv kernels).
constexpr int64_t kPrefetchBytes = 2048;

inline __mmask16 lo_mask(int nc) { return nc >= 16 ? __mmask16(0xffff) : __mmask16((1u << nc) - 1); }
inline __mmask16 hi_mask(int nc) {
  return nc >= 32 ? __mmask16(0xffff) : nc <= 16 ? __mmask16(0) : __mmask16((1u << (nc - 16)) - 1);
}

inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

inline void prefetch_group(const uint8_t* group, size_t bytes) {
  for (size_t line = 0; line < bytes; line += 64) _mm_prefetch(reinterpret_cast<const char*>(group + kPrefetchBytes + line), _MM_HINT_T0);
}

template <int N>
inline void store_rows(const __m512 (&acc)[N][2], float* y, int64_t ldy, int nc, bool accumulate) {
  const __mmask16 m0 = lo_mask(nc), m1 = hi_mask(nc);
  for (int i = 0; i < N; ++i) {
    float* yr = y + i * ldy;
    __m512 a0 = acc[i][0], a1 = acc[i][1];
    if (accumulate) {
      a0 = _mm512_add_ps(a0, _mm512_maskz_loadu_ps(m0, yr));
      a1 = _mm512_add_ps(a1, _mm512_maskz_loadu_ps(m1, yr + 16));
    }
    _mm512_mask_storeu_ps(yr, m0, a0);
    _mm512_mask_storeu_ps(yr + 16, m1, a1);
  }
}

// acc[i][h] += (s_h * dx) * float(dot_h) + m_h * sx, for the two row halves h of the panel.
template <int N>
inline void scale_add(__m512 (&acc)[N][2], const __m512i (&dot)[N][2], const float* s, const float* m,
                      const float* dx, const float* sx) {
  const __m512 s0 = _mm512_load_ps(s), s1 = _mm512_load_ps(s + 16);
  const __m512 m0 = _mm512_load_ps(m), m1 = _mm512_load_ps(m + 16);
  for (int i = 0; i < N; ++i) {
    const __m512 d = _mm512_set1_ps(dx[i]), sm = _mm512_set1_ps(sx[i]);
    acc[i][0] = _mm512_fmadd_ps(_mm512_mul_ps(s0, d), _mm512_cvtepi32_ps(dot[i][0]), _mm512_fmadd_ps(m0, sm, acc[i][0]));
    acc[i][1] = _mm512_fmadd_ps(_mm512_mul_ps(s1, d), _mm512_cvtepi32_ps(dot[i][1]), _mm512_fmadd_ps(m1, sm, acc[i][1]));
  }
}

template <int N>
void gemv_u4_rows(const uint8_t* panel, int64_t k, const QuantizedRows& x, float* y, int64_t ldy, int nc,
                  bool accumulate) {
  const int64_t groups = k / 32;
  const __m512i low = _mm512_set1_epi8(0x0F);
  __m512 acc[N][2];
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* group = panel + g * int64_t(kU4GroupBytes);
    prefetch_group(group, kU4GroupBytes);
    const auto* qv = reinterpret_cast<const __m512i*>(group + 2 * kPanel * sizeof(float));
    // Low and high nibbles accumulate separately: twice the independent VPDPBUSD chains.
    __m512i lo[N][2], hi[N][2];
    for (int i = 0; i < N; ++i) lo[i][0] = lo[i][1] = hi[i][0] = hi[i][1] = _mm512_setzero_si512();
    for (int o = 0; o < 4; ++o) {
      const __m512i w0 = _mm512_load_si512(qv + 2 * o), w1 = _mm512_load_si512(qv + 2 * o + 1);
      const __m512i l0 = _mm512_and_si512(w0, low), l1 = _mm512_and_si512(w1, low);
      const __m512i h0 = _mm512_and_si512(_mm512_srli_epi16(w0, 4), low);
      const __m512i h1 = _mm512_and_si512(_mm512_srli_epi16(w1, 4), low);
      for (int i = 0; i < N; ++i) {
        const int8_t* xq = x.q + i * k + g * 32 + 8 * o;
        const __m512i xa = broadcast4(xq), xb = broadcast4(xq + 4);
        lo[i][0] = _mm512_dpbusd_epi32(lo[i][0], l0, xa);
        lo[i][1] = _mm512_dpbusd_epi32(lo[i][1], l1, xa);
        hi[i][0] = _mm512_dpbusd_epi32(hi[i][0], h0, xb);
        hi[i][1] = _mm512_dpbusd_epi32(hi[i][1], h1, xb);
      }
    }
    __m512i dot[N][2];
    float dx[N], sx[N];
    for (int i = 0; i < N; ++i) {
      dot[i][0] = _mm512_add_epi32(lo[i][0], hi[i][0]);
      dot[i][1] = _mm512_add_epi32(lo[i][1], hi[i][1]);
      dx[i] = x.d[i * groups + g];
      sx[i] = x.sum16[i * 2 * groups + 2 * g] + x.sum16[i * 2 * groups + 2 * g + 1];
    }
    const auto* f = reinterpret_cast<const float*>(group);
    scale_add<N>(acc, dot, f, f + kPanel, dx, sx);
  }
  store_rows<N>(acc, y, ldy, nc, accumulate);
}

template <int N>
void gemv_u8_rows(const uint8_t* panel, int64_t k, const QuantizedRows& x, float* y, int64_t ldy, int nc,
                  bool accumulate) {
  const int64_t groups = k / 32;
  __m512 acc[N][2];
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < groups; ++g) {
    const uint8_t* group = panel + g * int64_t(kU8GroupBytes);
    prefetch_group(group, kU8GroupBytes);
    const auto* f = reinterpret_cast<const float*>(group);
    const auto* qv = reinterpret_cast<const __m512i*>(group + 4 * kPanel * sizeof(float));
    for (int h = 0; h < 2; ++h) {  // the two 16-input sub-blocks, each with its own s and m
      __m512i dot[N][2];
      for (int i = 0; i < N; ++i) dot[i][0] = dot[i][1] = _mm512_setzero_si512();
      for (int j = 4 * h; j < 4 * h + 4; ++j) {
        const __m512i w0 = _mm512_load_si512(qv + 2 * j), w1 = _mm512_load_si512(qv + 2 * j + 1);
        for (int i = 0; i < N; ++i) {
          const __m512i xa = broadcast4(x.q + i * k + g * 32 + 4 * j);
          dot[i][0] = _mm512_dpbusd_epi32(dot[i][0], w0, xa);
          dot[i][1] = _mm512_dpbusd_epi32(dot[i][1], w1, xa);
        }
      }
      float dx[N], sx[N];
      for (int i = 0; i < N; ++i) {
        dx[i] = x.d[i * groups + g];
        sx[i] = x.sum16[i * 2 * groups + 2 * g + h];
      }
      scale_add<N>(acc, dot, f + h * kPanel, f + 2 * kPanel + h * kPanel, dx, sx);
    }
  }
  store_rows<N>(acc, y, ldy, nc, accumulate);
}

template <int N>
void gemv_rows(bool u4, const uint8_t* panel, int64_t k, const QuantizedRows& x, float* y, int64_t ldy, int nc,
               bool accumulate) {
  if (u4) {
    gemv_u4_rows<N>(panel, k, x, y, ldy, nc, accumulate);
  } else {
    gemv_u8_rows<N>(panel, k, x, y, ldy, nc, accumulate);
  }
}

template <bool kU4>
void gemv(const uint8_t* panel, int64_t k, const QuantizedRows& x, int n, float* y, int64_t ldy, int nc,
          bool accumulate) {
  switch (n) {
    case 1: return gemv_rows<1>(kU4, panel, k, x, y, ldy, nc, accumulate);
    case 2: return gemv_rows<2>(kU4, panel, k, x, y, ldy, nc, accumulate);
    case 3: return gemv_rows<3>(kU4, panel, k, x, y, ldy, nc, accumulate);
    default: return gemv_rows<4>(kU4, panel, k, x, y, ldy, nc, accumulate);
  }
}

// quantize_rows with one 32-input group in two zmm: the same bits (the product rounds once to f32,
// and VCVTPS2DQ rounds to nearest even in the default MXCSR mode as the scalar code does).
QuantizedRows quantize(const float* x, int64_t ldx, int n, int64_t k, void* storage) {
  const QuantizedRowsStorage out = quantized_rows_storage(n, k, storage);
  for (int i = 0; i < n; ++i) {
    for (int64_t g = 0; g < k / 32; ++g) {
      const float* xs = x + i * ldx + g * 32;
      const __m512 a = _mm512_loadu_ps(xs), b = _mm512_loadu_ps(xs + 16);
      const GroupScale gs = group_scale(_mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b))));
      const __m512 inv = _mm512_set1_ps(gs.inv);
      const __m512i qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inv)), qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inv));
      int8_t* qs = out.q + i * k + g * 32;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qs), _mm512_cvtsepi32_epi8(qa));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + 16), _mm512_cvtsepi32_epi8(qb));
      out.d[i * (k / 32) + g] = gs.d;
      out.sum16[i * (k / 16) + 2 * g] = gs.d * float(_mm512_reduce_add_epi32(qa));
      out.sum16[i * (k / 16) + 2 * g + 1] = gs.d * float(_mm512_reduce_add_epi32(qb));
    }
  }
  return QuantizedRows{out.q, out.d, out.sum16, k};
}

}  // namespace

const QuantKernels& quant_kernels_avx512vnni() {
  static const QuantKernels k{"avx512-vnni", {gemv<true>, gemv<false>}, quantize};
  return k;
}

}  // namespace kvb::cpu
