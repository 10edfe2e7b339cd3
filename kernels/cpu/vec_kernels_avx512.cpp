// VecKernels for AVX-512 (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c).

// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized in their own _mm512_undefined_* helpers
// (GCC PR105593); the warnings are silenced for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "kernels/cpu/vec_kernels_impl.h"

namespace kvb::cpu {
namespace {

struct SimdAvx512 {
  using V = __m512;
  static constexpr int kGemmRows = 4;
  static constexpr int kW = 16;
  static constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

  static __mmask16 mask(int n) { return __mmask16((1u << n) - 1); }
  static V zero() { return _mm512_setzero_ps(); }
  static V set1(float f) { return _mm512_set1_ps(f); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V load_n(const float* p, int n, float fill) { return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask(n), p); }
  static void store_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, mask(n), v); }
  static V load_h(const uint16_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static V load_h_n(const uint16_t* p, int n) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask(n), p)); }
  static void store_h(uint16_t* p, V v) {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, kRound));
  }
  static void store_h_n(uint16_t* p, V v, int n) { _mm256_mask_storeu_epi16(p, mask(n), _mm512_cvtps_ph(v, kRound)); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  static V sub(V a, V b) { return _mm512_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static V div(V a, V b) { return _mm512_div_ps(a, b); }
  static V max(V a, V b) { return _mm512_max_ps(a, b); }
  static V min(V a, V b) { return _mm512_min_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm512_fnmadd_ps(a, b, c); }
  static float hsum(V v) { return _mm512_reduce_add_ps(v); }
  static float hmax(V v) { return _mm512_reduce_max_ps(v); }
  static V round(V v) { return _mm512_roundscale_ps(v, kRound); }
  static V ldexp(V p, V n) { return _mm512_scalef_ps(p, n); }
  static V blend_lt(V x, V y, V a, V b) { return _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, y, _CMP_LT_OQ), b, a); }
  static V zero_below(V v, V x, float c) { return _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(x, set1(c), _CMP_GE_OQ), v); }
};

}  // namespace

const VecKernels& vec_kernels_avx512() {
  static const VecKernels k = vec_impl::make_vec_kernels<SimdAvx512>("avx512");
  return k;
}

}  // namespace kvb::cpu
