// Scalar (de)quantization of GGUF's block formats. Compiled with -ffp-contract=off: every product
// and sum is rounded on its own, in the order gguf-py's numpy code uses, so results are bit-exact.
#include "kernels/quants.h"

#include <cmath>
#include <cstring>

#include "kernels/status.h"

namespace kvb {
namespace {

inline float h2f(uint16_t h) { return fp16_to_fp32(h); }

// 4-bit value j (< 32) of a legacy block's qs: low nibbles first, then high nibbles.
inline uint8_t nibble(const uint8_t* qs, int j) { return j < 16 ? qs[j] & 0x0F : qs[j - 16] >> 4; }

inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// Q4_K / Q5_K: the 6-bit scale and min of sub-block j (< 8) from the 12 packed bytes.
inline void scale_min_k4(int j, const uint8_t* q, uint8_t& sc, uint8_t& mn) {
  if (j < 4) {
    sc = q[j] & 63;
    mn = q[j + 4] & 63;
  } else {
    sc = uint8_t((q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4));
    mn = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

// Q3_K: the 16 signed 6-bit scales (already minus 32).
inline void scales_q3k(const uint8_t* s, int8_t* out) {
  for (int i = 0; i < 16; ++i) {
    const int lo = (s[i % 8] >> (4 * (i / 8))) & 0x0F;
    const int hi = (s[8 + i % 4] >> (2 * (i / 4))) & 0x03;
    out[i] = int8_t((lo | (hi << 4)) - 32);
  }
}

// The unsigned q of element i of a K-quant block (affine form; see decode_affine).
inline uint8_t q2k(const BlockQ2_K& b, int i) {
  const int sub = i / 16, l = i % 16;
  return (b.qs[(sub / 8) * 32 + (sub % 2) * 16 + l] >> (2 * ((sub % 8) / 2))) & 3;
}
inline uint8_t q3k(const BlockQ3_K& b, int i) {
  const int sub = i / 16, l = i % 16;
  const int idx = (sub % 2) * 16 + l;
  const int lo = (b.qs[(sub / 8) * 32 + idx] >> (2 * ((sub % 8) / 2))) & 3;
  const int hi = (b.hmask[idx] >> (sub / 2)) & 1;
  return uint8_t(lo | (hi << 2));  // value = q - 4
}
inline uint8_t q4k(const uint8_t* qs, int i) {
  const int sub = i / 32, l = i % 32;
  return (qs[(sub / 2) * 32 + l] >> (4 * (sub % 2))) & 0x0F;
}
inline uint8_t q5k(const BlockQ5_K& b, int i) { return uint8_t(q4k(b.qs, i) | (((b.qh[i % 32] >> (i / 32)) & 1) << 4)); }
inline uint8_t q6k(const BlockQ6_K& b, int i) {
  const int half = i / 128, c = (i % 128) / 32, l = i % 32;
  const int lo = (b.ql[half * 64 + (c % 2) * 32 + l] >> (4 * (c / 2))) & 0x0F;
  const int hi = (b.qh[half * 32 + l] >> (2 * c)) & 0x03;
  return uint8_t(lo | (hi << 4));  // value = q - 32
}

void affine_legacy(DType t, const void* block, uint8_t* q, float* s, float* m) {
  float d = 0, mn = 0;
  switch (t) {
    case DType::kQ4_0: {
      const auto& b = *static_cast<const BlockQ4_0*>(block);
      for (int j = 0; j < kQK; ++j) q[j] = nibble(b.qs, j);
      d = h2f(b.d);
      mn = d * -8.0f;
      break;
    }
    case DType::kQ4_1: {
      const auto& b = *static_cast<const BlockQ4_1*>(block);
      for (int j = 0; j < kQK; ++j) q[j] = nibble(b.qs, j);
      d = h2f(b.d);
      mn = h2f(b.m);
      break;
    }
    case DType::kQ5_0:
    case DType::kQ5_1: {
      const bool q51 = t == DType::kQ5_1;
      const uint8_t* qs = q51 ? static_cast<const BlockQ5_1*>(block)->qs : static_cast<const BlockQ5_0*>(block)->qs;
      const uint32_t qh = load_u32(q51 ? static_cast<const BlockQ5_1*>(block)->qh : static_cast<const BlockQ5_0*>(block)->qh);
      for (int j = 0; j < kQK; ++j) q[j] = uint8_t(nibble(qs, j) | (((qh >> j) & 1) << 4));
      d = h2f(q51 ? static_cast<const BlockQ5_1*>(block)->d : static_cast<const BlockQ5_0*>(block)->d);
      mn = q51 ? h2f(static_cast<const BlockQ5_1*>(block)->m) : d * -16.0f;
      break;
    }
    default:
      KVB_ASSERT(false, "affine_legacy: not a legacy block type");
  }
  s[0] = s[1] = d;
  m[0] = m[1] = mn;
}

void affine_k(DType t, const void* block, uint8_t* q, float* s, float* m) {
  switch (t) {
    case DType::kQ2_K: {
      const auto& b = *static_cast<const BlockQ2_K*>(block);
      const float d = h2f(b.d), dmin = h2f(b.dmin);
      for (int i = 0; i < kQKK; ++i) q[i] = q2k(b, i);
      for (int j = 0; j < 16; ++j) {
        s[j] = d * float(b.scales[j] & 0x0F);
        m[j] = -(dmin * float(b.scales[j] >> 4));
      }
      return;
    }
    case DType::kQ3_K: {
      const auto& b = *static_cast<const BlockQ3_K*>(block);
      int8_t sc[16];
      scales_q3k(b.scales, sc);
      const float d = h2f(b.d);
      for (int i = 0; i < kQKK; ++i) q[i] = q3k(b, i);
      for (int j = 0; j < 16; ++j) {
        s[j] = d * float(sc[j]);
        m[j] = s[j] * -4.0f;
      }
      return;
    }
    case DType::kQ4_K:
    case DType::kQ5_K: {
      const bool q5 = t == DType::kQ5_K;
      const auto* b4 = static_cast<const BlockQ4_K*>(block);
      const auto* b5 = static_cast<const BlockQ5_K*>(block);
      const float d = h2f(q5 ? b5->d : b4->d), dmin = h2f(q5 ? b5->dmin : b4->dmin);
      for (int i = 0; i < kQKK; ++i) q[i] = q5 ? q5k(*b5, i) : q4k(b4->qs, i);
      for (int j = 0; j < 8; ++j) {
        uint8_t sc, mn;
        scale_min_k4(j, q5 ? b5->scales : b4->scales, sc, mn);
        s[2 * j] = s[2 * j + 1] = d * float(sc);
        m[2 * j] = m[2 * j + 1] = -(dmin * float(mn));
      }
      return;
    }
    case DType::kQ6_K: {
      const auto& b = *static_cast<const BlockQ6_K*>(block);
      const float d = h2f(b.d);
      for (int i = 0; i < kQKK; ++i) q[i] = q6k(b, i);
      for (int j = 0; j < 16; ++j) {
        s[j] = d * float(b.scales[j]);
        m[j] = s[j] * -32.0f;
      }
      return;
    }
    default:
      KVB_ASSERT(false, "affine_k: not a K-quant type");
  }
}

// One K-quant block, with gguf-py's operation order: (d * sc) * q - (dmin * mn), or (d * sc) * (q - c).
void dequantize_k(DType t, const void* block, float* y) {
  uint8_t q[kQKK];
  float s[16], m[16];
  affine_k(t, block, q, s, m);
  switch (t) {
    case DType::kQ2_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
      for (int i = 0; i < kQKK; ++i) y[i] = s[i / 16] * float(q[i]) - (-m[i / 16]);
      return;
    case DType::kQ3_K:
      for (int i = 0; i < kQKK; ++i) y[i] = s[i / 16] * float(int(q[i]) - 4);
      return;
    default:  // Q6_K
      for (int i = 0; i < kQKK; ++i) y[i] = s[i / 16] * float(int(q[i]) - 32);
      return;
  }
}

// One legacy block: d * (q - c) for Q4_0 / Q5_0, d * q + m for Q4_1 / Q5_1.
void dequantize_legacy(DType t, const void* block, float* y) {
  uint8_t q[kQK];
  float s[2], m[2];
  affine_legacy(t, block, q, s, m);
  if (t == DType::kQ4_0 || t == DType::kQ5_0) {
    const int c = t == DType::kQ4_0 ? 8 : 16;
    for (int j = 0; j < kQK; ++j) y[j] = s[0] * float(int(q[j]) - c);
  } else {
    for (int j = 0; j < kQK; ++j) y[j] = s[0] * float(q[j]) + m[0];
  }
}

// ggml's reference quantizers (gguf-py's quantize_blocks), one block of 32.
void quantize_block_sym(const float* x, int levels, float& d, uint8_t* q) {  // Q4_0: levels 16, Q5_0: 32
  float amax = 0, max = 0;
  for (int j = 0; j < kQK; ++j) {
    if (amax < std::fabs(x[j])) {
      amax = std::fabs(x[j]);
      max = x[j];
    }
  }
  d = max / float(-levels / 2);
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const float offset = float(levels / 2) + 0.5f;
  for (int j = 0; j < kQK; ++j) {
    float v = x[j] * id;
    v = v + offset;
    const int qi = int(std::trunc(v));
    q[j] = uint8_t(qi < 0 ? 0 : (qi > levels - 1 ? levels - 1 : qi));
  }
}

void quantize_block_asym(const float* x, int levels, float& d, float& mn, uint8_t* q) {  // Q4_1: 16, Q5_1: 32
  float max = x[0], min = x[0];
  for (int j = 1; j < kQK; ++j) {
    max = std::fmax(max, x[j]);
    min = std::fmin(min, x[j]);
  }
  d = (max - min) / float(levels - 1);
  mn = min;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  for (int j = 0; j < kQK; ++j) {
    float v = (x[j] - min) * id;
    v = v + 0.5f;
    const int qi = int(std::trunc(v));
    q[j] = uint8_t(qi < 0 ? 0 : (qi > levels - 1 ? levels - 1 : qi));
  }
}

void pack_nibbles(const uint8_t* q, uint8_t* qs) {
  for (int j = 0; j < kQK / 2; ++j) qs[j] = uint8_t((q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4));
}

void pack_high_bits(const uint8_t* q, uint8_t* qh) {
  uint32_t h = 0;
  for (int j = 0; j < kQK; ++j) h |= uint32_t((q[j] >> 4) & 1) << j;
  std::memcpy(qh, &h, 4);
}

}  // namespace

bool is_gguf_quant(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ2_K:
    case DType::kQ3_K:
    case DType::kQ4_K:
    case DType::kQ5_K:
    case DType::kQ6_K:
      return true;
    default:
      return false;
  }
}

int affine_bits(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ4_1:
    case DType::kQ4_K:
      return 4;
    case DType::kQ5_0:
    case DType::kQ5_1:
    case DType::kQ5_K:
      return 5;
    case DType::kQ2_K: return 2;
    case DType::kQ3_K: return 3;
    case DType::kQ6_K: return 6;
    default: return 0;
  }
}

void decode_affine(DType t, const void* block, uint8_t* q, float* s, float* m) {
  KVB_ASSERT(is_gguf_quant(t), "decode_affine: not a GGUF block type");
  if (dtype_block_size(t) == kQK) {
    affine_legacy(t, block, q, s, m);
  } else {
    affine_k(t, block, q, s, m);
  }
}

void dequantize_row(DType t, const void* src, float* dst, int64_t n) {
  KVB_ASSERT(is_gguf_quant(t), "dequantize_row: not a GGUF block type");
  const int bs = dtype_block_size(t);
  const size_t bb = dtype_block_bytes(t);
  KVB_ASSERT(n % bs == 0, "dequantize_row: row length");
  const auto* p = static_cast<const uint8_t*>(src);
  for (int64_t i = 0; i < n / bs; ++i) {
    if (bs == kQK) {
      dequantize_legacy(t, p + size_t(i) * bb, dst + i * bs);
    } else {
      dequantize_k(t, p + size_t(i) * bb, dst + i * bs);
    }
  }
}

bool can_quantize(DType t) {
  return t == DType::kQ4_0 || t == DType::kQ4_1 || t == DType::kQ5_0 || t == DType::kQ5_1 || t == DType::kQ8_0;
}

void quantize_row(DType t, const float* src, void* dst, int64_t n) {
  KVB_ASSERT(n % kQK == 0, "quantize_row: row length");
  uint8_t q[kQK];
  for (int64_t i = 0; i < n / kQK; ++i) {
    const float* x = src + i * kQK;
    float d = 0, mn = 0;
    switch (t) {
      case DType::kQ4_0: {
        auto& b = static_cast<BlockQ4_0*>(dst)[i];
        quantize_block_sym(x, 16, d, q);
        b.d = fp32_to_fp16(d);
        pack_nibbles(q, b.qs);
        break;
      }
      case DType::kQ4_1: {
        auto& b = static_cast<BlockQ4_1*>(dst)[i];
        quantize_block_asym(x, 16, d, mn, q);
        b.d = fp32_to_fp16(d);
        b.m = fp32_to_fp16(mn);
        pack_nibbles(q, b.qs);
        break;
      }
      case DType::kQ5_0: {
        auto& b = static_cast<BlockQ5_0*>(dst)[i];
        quantize_block_sym(x, 32, d, q);
        b.d = fp32_to_fp16(d);
        pack_high_bits(q, b.qh);
        pack_nibbles(q, b.qs);
        break;
      }
      case DType::kQ5_1: {
        auto& b = static_cast<BlockQ5_1*>(dst)[i];
        quantize_block_asym(x, 32, d, mn, q);
        b.d = fp32_to_fp16(d);
        b.m = fp32_to_fp16(mn);
        pack_high_bits(q, b.qh);
        pack_nibbles(q, b.qs);
        break;
      }
      default:
        KVB_ASSERT(false, "quantize_row: type cannot be quantized");
    }
  }
}

}  // namespace kvb
