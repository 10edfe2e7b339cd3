#include "engine/kv_wire_values.h"

#include <bit>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#include <immintrin.h>
#define KVB_WIRE_X86 1
#else
#define KVB_WIRE_X86 0
#endif

namespace kvb::kv_wire_values {

namespace {

// ============================== scalar definitions ==============================
// Branch-free restatements of kernels/dtype.cpp's fp32_to_fp16 / fp16_to_fp32 / fp32_to_bf16
// (same results for all 2^32 / 2^16 inputs), written as selects so that the loops below vectorize.

inline uint16_t f32_to_f16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  const uint32_t a = x & 0x7fffffffu;
  // Normal range: rebias the exponent (-112 << 23) and round to nearest even at bit 13.
  const uint32_t normal = (a + 0xc8000fffu + ((a >> 13) & 1u)) >> 13;
  // Subnormal range: one float add puts the f16 lsb (2^-24) on float's lsb; the FPU rounds (RNE).
  const uint32_t sub = std::bit_cast<uint32_t>(std::bit_cast<float>(a) + 0.5f) - 0x3f000000u;
  const uint32_t special = 0x7c00u | (a > 0x7f800000u ? 0x200u : 0u);  // inf, or a quiet NaN
  uint32_t r = a < 0x38800000u ? sub : normal;
  r = a >= 0x477ff000u ? 0x7c00u : r;  // rounds to inf
  r = a >= 0x7f800000u ? special : r;
  return uint16_t(sign | r);
}

inline float f16_to_f32(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t o = uint32_t(h & 0x7fffu) << 13;
  const uint32_t exp = o & 0x0f800000u;
  const uint32_t normal = o + 0x38000000u;  // exponent + (127 - 15)
  const uint32_t special = o + 0x70000000u;  // inf/NaN: exponent 255, payload kept (not quieted)
  // Zero and subnormals: (1 + m/1024)·2^-14 - 2^-14 = m·2^-24, exact (Sterbenz).
  const float sub = std::bit_cast<float>(o + 0x38800000u) - 0x1p-14f;
  uint32_t r = exp == 0x0f800000u ? special : normal;
  r = exp == 0 ? std::bit_cast<uint32_t>(sub) : r;
  return std::bit_cast<float>(sign | r);
}

inline uint16_t f32_to_bf16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint32_t rounded = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
  const uint32_t quiet_nan = (x >> 16) | 0x40u;
  return uint16_t((x & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded);
}

inline float bf16_to_f32(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

// Round to nearest even for |t| <= 2^22, in the current rounding mode (as std::lrint): adding
// 1.5·2^23 leaves no fraction bits, so the FPU rounds, and the subtraction is exact.
inline float round_even(float t) { return (t + 0x1.8p23f) - 0x1.8p23f; }

inline float clamp_q(float t) {
  if (!(t >= -127.0f)) t = -127.0f;  // also NaN
  if (t > 127.0f) t = 127.0f;
  return t;
}

// ============================== generic loops ==============================
// Plain loops over the definitions above; always_inline so that the AVX2 functions below get
// their own (wider) vectorization of the parts they do not hand-write.

[[gnu::always_inline]] inline void f16_encode_loop(const float* x, int64_t n, uint16_t* d) {
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_f16(x[i]);
}
[[gnu::always_inline]] inline void f16_decode_loop(const uint16_t* s, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = f16_to_f32(s[i]);
}
[[gnu::always_inline]] inline void bf16_encode_loop(const float* x, int64_t n, uint16_t* d) {
  for (int64_t i = 0; i < n; ++i) d[i] = f32_to_bf16(x[i]);
}
[[gnu::always_inline]] inline void bf16_decode_loop(const uint16_t* s, int64_t n, float* y) {
  for (int64_t i = 0; i < n; ++i) y[i] = bf16_to_f32(s[i]);
}
[[gnu::always_inline]] inline float amax_loop(const float* v, int64_t n) {
  float amax = 0.0f;
  for (int64_t d = 0; d < n; ++d) {
    const float a = std::fabs(v[d]);
    amax = a > amax ? a : amax;  // NaN never enters
  }
  return amax;
}
[[gnu::always_inline]] inline void quantize_loop(const float* v, int64_t n, float inv, int8_t* q) {
  for (int64_t d = 0; d < n; ++d) q[d] = int8_t(int32_t(round_even(clamp_q(v[d] * inv))));
}
[[gnu::always_inline]] inline void dequantize_loop(const int8_t* q, int64_t n, float scale, float* y) {
  for (int64_t d = 0; d < n; ++d) y[d] = scale * float(q[d]);
}

float row_scale(float amax, float* inv) {
  *inv = amax > 0.0f ? 127.0f / amax : 0.0f;
  return amax / 127.0f;
}

// The payload layouts, over one instruction set's loops (a struct of static functions: Generic
// below, Avx2 further down). Always inlined into a function compiled for that instruction set.
// int8: f32 scales [n_rows], then int8 values [n_rows][head_dim].
template <class Isa>
[[gnu::always_inline]] inline void encode_rows(WireDType dtype, const float* x, int64_t n_rows, int64_t head_dim,
                                               char* dst) {
  const int64_t n = n_rows * head_dim;
  switch (dtype) {
    case WireDType::kF32: std::memcpy(dst, x, size_t(n) * 4); return;
    case WireDType::kF16: return Isa::f16_encode(x, n, reinterpret_cast<uint16_t*>(dst));
    case WireDType::kBF16: return Isa::bf16_encode(x, n, reinterpret_cast<uint16_t*>(dst));
    case WireDType::kInt8: {
      auto* q = reinterpret_cast<int8_t*>(dst + size_t(n_rows) * 4);
      for (int64_t r = 0; r < n_rows; ++r) {
        float inv;
        const float scale = row_scale(Isa::amax(x + r * head_dim, head_dim), &inv);
        std::memcpy(dst + r * 4, &scale, 4);
        Isa::quantize(x + r * head_dim, head_dim, inv, q + r * head_dim);
      }
      return;
    }
  }
}

template <class Isa>
[[gnu::always_inline]] inline void decode_rows(WireDType dtype, const char* src, int64_t n_rows, int64_t head_dim,
                                               float* y) {
  const int64_t n = n_rows * head_dim;
  switch (dtype) {
    case WireDType::kF32: std::memcpy(y, src, size_t(n) * 4); return;
    case WireDType::kF16: return Isa::f16_decode(reinterpret_cast<const uint16_t*>(src), n, y);
    case WireDType::kBF16: return Isa::bf16_decode(reinterpret_cast<const uint16_t*>(src), n, y);
    case WireDType::kInt8: {
      const auto* q = reinterpret_cast<const int8_t*>(src + size_t(n_rows) * 4);
      for (int64_t r = 0; r < n_rows; ++r) {
        float scale;
        std::memcpy(&scale, src + r * 4, 4);
        Isa::dequantize(q + r * head_dim, head_dim, scale, y + r * head_dim);
      }
      return;
    }
  }
}

struct Generic {
  static void f16_encode(const float* x, int64_t n, uint16_t* d) { f16_encode_loop(x, n, d); }
  static void f16_decode(const uint16_t* s, int64_t n, float* y) { f16_decode_loop(s, n, y); }
  static void bf16_encode(const float* x, int64_t n, uint16_t* d) { bf16_encode_loop(x, n, d); }
  static void bf16_decode(const uint16_t* s, int64_t n, float* y) { bf16_decode_loop(s, n, y); }
  static float amax(const float* v, int64_t n) { return amax_loop(v, n); }
  static void quantize(const float* v, int64_t n, float inv, int8_t* q) { quantize_loop(v, n, inv, q); }
  static void dequantize(const int8_t* q, int64_t n, float scale, float* y) { dequantize_loop(q, n, scale, y); }
};

void encode_generic_impl(WireDType dtype, const float* x, int64_t n_rows, int64_t head_dim, char* dst) {
  encode_rows<Generic>(dtype, x, n_rows, head_dim, dst);
}

void decode_generic_impl(WireDType dtype, const char* src, int64_t n_rows, int64_t head_dim, float* y) {
  decode_rows<Generic>(dtype, src, n_rows, head_dim, y);
}

// ============================== AVX2 + F16C ==============================
#if KVB_WIRE_X86
#define KVB_AVX2 [[gnu::target("avx2,f16c")]]  // no FMA: a fused multiply-add would round differently

// f16: the hardware conversions are IEEE RNE and exact for subnormals; they differ from the scalar
// definition only for NaN (payload and quieting), so blocks holding a NaN take the scalar path.
KVB_AVX2 void f16_encode_avx2(const float* x, int64_t n, uint16_t* d) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q)) != 0) {
      f16_encode_loop(x + i, 8, d + i);
      continue;
    }
    _mm_storeu_si128(reinterpret_cast<__m128i*>(d + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  f16_encode_loop(x + i, n - i, d + i);
}

KVB_AVX2 void f16_decode_avx2(const uint16_t* s, int64_t n, float* y) {
  const __m128i abs_mask = _mm_set1_epi16(0x7fff), inf = _mm_set1_epi16(0x7c00);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i));
    if (_mm_movemask_epi8(_mm_cmpgt_epi16(_mm_and_si128(h, abs_mask), inf)) != 0) {
      f16_decode_loop(s + i, 8, y + i);
      continue;
    }
    _mm256_storeu_ps(y + i, _mm256_cvtph_ps(h));
  }
  f16_decode_loop(s + i, n - i, y + i);
}

KVB_AVX2 float amax_avx2(const float* v, int64_t n) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 acc = _mm256_setzero_ps();
  int64_t d = 0;
  // max_ps(a, acc) = a > acc ? a : acc: a NaN never enters, as in amax_loop; max is exact and
  // order-free on the rest, so the lanes combine to the same value.
  for (; d + 8 <= n; d += 8) acc = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(v + d), abs_mask), acc);
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, acc);
  float amax = amax_loop(v + d, n - d);
  for (float l : lanes) amax = l > amax ? l : amax;
  return amax;
}

// Rounds with cvtps_epi32 (the current rounding mode, as lrint) after the same clamp as clamp_q.
KVB_AVX2 __m256i quantize8_avx2(const float* v, __m256 inv) {
  const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
  __m256 t = _mm256_mul_ps(_mm256_loadu_ps(v), inv);
  t = _mm256_blendv_ps(lo, t, _mm256_cmp_ps(t, lo, _CMP_GE_OQ));  // !(t >= -127) → -127, NaN included
  t = _mm256_min_ps(t, hi);
  return _mm256_cvtps_epi32(t);
}

KVB_AVX2 void quantize_avx2(const float* v, int64_t n, float inv_s, int8_t* q) {
  const __m256 inv = _mm256_set1_ps(inv_s);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t d = 0;
  for (; d + 32 <= n; d += 32) {
    const __m256i a = quantize8_avx2(v + d, inv), b = quantize8_avx2(v + d + 8, inv);
    const __m256i c = quantize8_avx2(v + d + 16, inv), e = quantize8_avx2(v + d + 24, inv);
    // packs work per 128-bit lane: the bytes come out as 4-byte groups [a0 b0 c0 e0 a1 b1 c1 e1];
    // the permute puts them back in order.
    const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(c, e));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + d), _mm256_permutevar8x32_epi32(p, order));
  }
  quantize_loop(v + d, n - d, inv_s, q + d);
}

KVB_AVX2 void dequantize_avx2(const int8_t* q, int64_t n, float scale_s, float* y) {
  const __m256 scale = _mm256_set1_ps(scale_s);
  int64_t d = 0;
  for (; d + 8 <= n; d += 8) {
    const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + d));
    _mm256_storeu_ps(y + d, _mm256_mul_ps(scale, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b))));
  }
  dequantize_loop(q + d, n - d, scale_s, y + d);
}

struct Avx2 {
  KVB_AVX2 static void f16_encode(const float* x, int64_t n, uint16_t* d) { f16_encode_avx2(x, n, d); }
  KVB_AVX2 static void f16_decode(const uint16_t* s, int64_t n, float* y) { f16_decode_avx2(s, n, y); }
  KVB_AVX2 static void bf16_encode(const float* x, int64_t n, uint16_t* d) { bf16_encode_loop(x, n, d); }
  KVB_AVX2 static void bf16_decode(const uint16_t* s, int64_t n, float* y) { bf16_decode_loop(s, n, y); }
  KVB_AVX2 static float amax(const float* v, int64_t n) { return amax_avx2(v, n); }
  KVB_AVX2 static void quantize(const float* v, int64_t n, float inv, int8_t* q) { quantize_avx2(v, n, inv, q); }
  KVB_AVX2 static void dequantize(const int8_t* q, int64_t n, float scale, float* y) {
    dequantize_avx2(q, n, scale, y);
  }
};

KVB_AVX2 void encode_avx2(WireDType dtype, const float* x, int64_t n_rows, int64_t head_dim, char* dst) {
  encode_rows<Avx2>(dtype, x, n_rows, head_dim, dst);
}

KVB_AVX2 void decode_avx2(WireDType dtype, const char* src, int64_t n_rows, int64_t head_dim, float* y) {
  decode_rows<Avx2>(dtype, src, n_rows, head_dim, y);
}

// F16C is read from CPUID leaf 1 (ECX bit 29): clang 14's __builtin_cpu_supports has no "f16c".
bool have_avx2() {
  static const bool ok = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    const bool f16c = __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & (1u << 29)) != 0;
    return f16c && __builtin_cpu_supports("avx2");
  }();
  return ok;
}
#undef KVB_AVX2
#endif  // KVB_WIRE_X86

}  // namespace

void encode(WireDType dtype, const float* x, int64_t n_rows, int64_t head_dim, char* dst) {
#if KVB_WIRE_X86
  if (have_avx2()) return encode_avx2(dtype, x, n_rows, head_dim, dst);
#endif
  encode_generic_impl(dtype, x, n_rows, head_dim, dst);
}

void decode(WireDType dtype, const char* src, int64_t n_rows, int64_t head_dim, float* y) {
#if KVB_WIRE_X86
  if (have_avx2()) return decode_avx2(dtype, src, n_rows, head_dim, y);
#endif
  decode_generic_impl(dtype, src, n_rows, head_dim, y);
}

const char* implementation() {
#if KVB_WIRE_X86
  if (have_avx2()) return "avx2+f16c";
#endif
  return "generic";
}

void encode_generic(WireDType dtype, const float* x, int64_t n_rows, int64_t head_dim, char* dst) {
  encode_generic_impl(dtype, x, n_rows, head_dim, dst);
}

void decode_generic(WireDType dtype, const char* src, int64_t n_rows, int64_t head_dim, float* y) {
  decode_generic_impl(dtype, src, n_rows, head_dim, y);
}

}  // namespace kvb::kv_wire_values
