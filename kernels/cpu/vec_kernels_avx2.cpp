// VecKernels for AVX2 + FMA + F16C (compiled with -mavx2 -mfma -mf16c).

// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized in their own _mm512_undefined_* helpers
// (GCC PR105593); the warnings are silenced for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "kernels/cpu/avx2_reduce.h"
#include "kernels/cpu/vec_kernels_impl.h"

namespace kvb::cpu {
namespace {

struct SimdAvx2 {
  using V = __m256;
  static constexpr int kGemmRows = 2;
  static constexpr int kW = 8;
  static constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

  static __m256i mask(int n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V zero() { return _mm256_setzero_ps(); }
  static V set1(float f) { return _mm256_set1_ps(f); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V load_n(const float* p, int n, float fill) {
    const __m256i m = mask(n);
    return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static void store_n(float* p, V v, int n) { _mm256_maskstore_ps(p, mask(n), v); }
  static V load_h(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
  static V load_h_n(const uint16_t* p, int n) {
    alignas(16) uint16_t tmp[8] = {};
    for (int i = 0; i < n; ++i) tmp[i] = p[i];
    return load_h(tmp);
  }
  static void store_h(uint16_t* p, V v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, kRound)); }
  static void store_h_n(uint16_t* p, V v, int n) {
    alignas(16) uint16_t tmp[8];
    store_h(tmp, v);
    for (int i = 0; i < n; ++i) p[i] = tmp[i];
  }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  static V sub(V a, V b) { return _mm256_sub_ps(a, b); }
  static V mul(V a, V b) { return _mm256_mul_ps(a, b); }
  static V div(V a, V b) { return _mm256_div_ps(a, b); }
  static V max(V a, V b) { return _mm256_max_ps(a, b); }
  static V min(V a, V b) { return _mm256_min_ps(a, b); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V fnma(V a, V b, V c) { return _mm256_fnmadd_ps(a, b, c); }
  static float hsum(V v) { return avx2::hsum(v); }
  static float hmax(V v) { return avx2::hmax(v); }
  static V round(V v) { return _mm256_round_ps(v, kRound); }
  static V ldexp(V p, V n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  }
  static V blend_lt(V x, V y, V a, V b) { return _mm256_blendv_ps(b, a, _mm256_cmp_ps(x, y, _CMP_LT_OQ)); }
  static V zero_below(V v, V x, float c) { return _mm256_and_ps(v, _mm256_cmp_ps(x, set1(c), _CMP_GE_OQ)); }
};

}  // namespace

const VecKernels& vec_kernels_avx2() {
  static const VecKernels k = vec_impl::make_vec_kernels<SimdAvx2>("avx2");
  return k;
}

}  // namespace kvb::cpu
