// VecKernels in portable C++: a 4-lane "vector" of plain floats, which compilers map to the
// baseline SIMD of the target.
#include <cmath>

#include "kernels/cpu/vec_kernels_impl.h"
#include "kernels/dtype.h"

namespace kvb::cpu {
namespace {

struct SimdGeneric {
  struct V {
    float v[4];
  };
  static constexpr int kGemmRows = 2;
  static constexpr int kW = 4;

  template <class F>
  static V map(F f) {
    V r;
    for (int i = 0; i < kW; ++i) r.v[i] = f(i);
    return r;
  }
  static V zero() { return set1(0.0f); }
  static V set1(float f) {
    return map([&](int) { return f; });
  }
  static V load(const float* p) {
    return map([&](int i) { return p[i]; });
  }
  static void store(float* p, V v) {
    for (int i = 0; i < kW; ++i) p[i] = v.v[i];
  }
  static V load_n(const float* p, int n, float fill) {
    return map([&](int i) { return i < n ? p[i] : fill; });
  }
  static void store_n(float* p, V v, int n) {
    for (int i = 0; i < n; ++i) p[i] = v.v[i];
  }
  static V load_h(const uint16_t* p) {
    return map([&](int i) { return fp16_to_fp32(p[i]); });
  }
  static V load_h_n(const uint16_t* p, int n) {
    return map([&](int i) { return i < n ? fp16_to_fp32(p[i]) : 0.0f; });
  }
  static void store_h(uint16_t* p, V v) { store_h_n(p, v, kW); }
  static void store_h_n(uint16_t* p, V v, int n) {
    for (int i = 0; i < n; ++i) p[i] = fp32_to_fp16(v.v[i]);
  }
  static V add(V a, V b) {
    return map([&](int i) { return a.v[i] + b.v[i]; });
  }
  static V sub(V a, V b) {
    return map([&](int i) { return a.v[i] - b.v[i]; });
  }
  static V mul(V a, V b) {
    return map([&](int i) { return a.v[i] * b.v[i]; });
  }
  static V div(V a, V b) {
    return map([&](int i) { return a.v[i] / b.v[i]; });
  }
  static V max(V a, V b) {
    return map([&](int i) { return a.v[i] > b.v[i] ? a.v[i] : b.v[i]; });
  }
  static V min(V a, V b) {
    return map([&](int i) { return a.v[i] < b.v[i] ? a.v[i] : b.v[i]; });
  }
  static V fma(V a, V b, V c) {
    return map([&](int i) { return a.v[i] * b.v[i] + c.v[i]; });
  }
  static V fnma(V a, V b, V c) {
    return map([&](int i) { return c.v[i] - a.v[i] * b.v[i]; });
  }
  static float hsum(V v) { return (v.v[0] + v.v[1]) + (v.v[2] + v.v[3]); }
  static float hmax(V v) {
    const float a = v.v[0] > v.v[1] ? v.v[0] : v.v[1];
    const float b = v.v[2] > v.v[3] ? v.v[2] : v.v[3];
    return a > b ? a : b;
  }
  static V round(V v) {
    return map([&](int i) { return std::nearbyint(v.v[i]); });
  }
  static V ldexp(V p, V n) {
    return map([&](int i) { return std::ldexp(p.v[i], int(n.v[i])); });
  }
  static V blend_lt(V x, V y, V a, V b) {
    return map([&](int i) { return x.v[i] < y.v[i] ? a.v[i] : b.v[i]; });
  }
  static V zero_below(V v, V x, float c) {
    return map([&](int i) { return x.v[i] >= c ? v.v[i] : 0.0f; });
  }
};

}  // namespace

const VecKernels& vec_kernels_generic() {
  static const VecKernels k = vec_impl::make_vec_kernels<SimdGeneric>("generic");
  return k;
}

}  // namespace kvb::cpu
