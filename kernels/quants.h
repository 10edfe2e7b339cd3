// GGUF's block-quantized weight formats (besides Q8_0, in dtype.h): the legacy 32-element blocks
// Q4_0, Q4_1, Q5_0, Q5_1 and the 256-element "K-quant" super-blocks Q2_K ... Q6_K that llama.cpp's
// Q*_K_S / Q*_K_M files mix. Layouts are bit-identical to ggml's (little-endian, f16 scales stored
// as IEEE binary16 bits); sizes are checked below.
//
// Every one of these formats is affine per sub-block: element i of a block is  s * q_i + m  with an
// unsigned integer q_i, one scale s and one offset m per 16 elements (the legacy formats repeat
// theirs over both halves of a block). `decode_affine` exposes that form; the CPU backend packs
// weights from it (kernels/cpu/quant_panel.h). `dequantize_row` follows the ggml/gguf-py formulas
// operation for operation, so its f32 results are bit-identical to gguf.quants.dequantize.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/dtype.h"

namespace kvb {

inline constexpr int kQK = 32;    // elements per legacy block
inline constexpr int kQKK = 256;  // elements per K-quant super-block
inline constexpr int kAffineSub = 16;  // elements per affine sub-block (decode_affine)

// x = d * (q - 8), q = 4-bit; element j in the low nibble of qs[j], element j + 16 in its high nibble.
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQK / 2];
};
// x = d * q + m.
struct BlockQ4_1 {
  uint16_t d, m;
  uint8_t qs[kQK / 2];
};
// x = d * (q - 16), q = 5-bit: low 4 bits as Q4_0, bit 4 of element j is bit j of qh (LE uint32).
struct BlockQ5_0 {
  uint16_t d;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
// x = d * q + m, q as Q5_0.
struct BlockQ5_1 {
  uint16_t d, m;
  uint8_t qh[4];
  uint8_t qs[kQK / 2];
};
// 16 sub-blocks of 16: x = d * (sc & 15) * q - dmin * (sc >> 4), q = 2-bit.
struct BlockQ2_K {
  uint8_t scales[kQKK / 16];
  uint8_t qs[kQKK / 4];
  uint16_t d, dmin;
};
// 16 sub-blocks of 16: x = d * (sc - 32) * (q - 4 * !hbit), q = 2 low bits + a high bit in hmask;
// the 6-bit scales are packed into 12 bytes.
struct BlockQ3_K {
  uint8_t hmask[kQKK / 8];
  uint8_t qs[kQKK / 4];
  uint8_t scales[12];
  uint16_t d;
};
// 8 sub-blocks of 32: x = d * sc * q - dmin * mn, q = 4-bit, 6-bit sc and mn packed into 12 bytes.
struct BlockQ4_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qs[kQKK / 2];
};
// As Q4_K with a fifth bit per element in qh.
struct BlockQ5_K {
  uint16_t d, dmin;
  uint8_t scales[12];
  uint8_t qh[kQKK / 8];
  uint8_t qs[kQKK / 2];
};
// 16 sub-blocks of 16: x = d * sc * (q - 32), q = 6-bit (4 low bits in ql, 2 high in qh), int8 sc.
struct BlockQ6_K {
  uint8_t ql[kQKK / 2];
  uint8_t qh[kQKK / 4];
  int8_t scales[kQKK / 16];
  uint16_t d;
};
static_assert(sizeof(BlockQ4_0) == 18 && sizeof(BlockQ4_1) == 20 && sizeof(BlockQ5_0) == 22 &&
              sizeof(BlockQ5_1) == 24);
static_assert(sizeof(BlockQ2_K) == 84 && sizeof(BlockQ3_K) == 110 && sizeof(BlockQ4_K) == 144 &&
              sizeof(BlockQ5_K) == 176 && sizeof(BlockQ6_K) == 210);

// True for the formats of this header (not Q8_0).
bool is_gguf_quant(DType t);
// Bits of the unsigned q of decode_affine: 4 for Q4_*, 5 for Q5_*, 2/3/6 for Q2_K/Q3_K/Q6_K.
int affine_bits(DType t);

// One block (dtype_block_size(t) elements) of type t in affine form: q[i] (unsigned, < 2^affine_bits)
// and, per sub-block j of kAffineSub elements, s[j] and m[j] with element i = s[i/16] * q[i] + m[i/16]
// (exact in f32 for every finite block). t must satisfy is_gguf_quant.
void decode_affine(DType t, const void* block, uint8_t* q, float* s, float* m);

// f32 values of n elements (n a multiple of the block size) of type t ∈ is_gguf_quant, bit-identical
// to gguf.quants.dequantize.
void dequantize_row(DType t, const void* src, float* dst, int64_t n);

// True for the types quantize_row can write: Q4_0, Q4_1, Q5_0, Q5_1 (and Q8_0, in dtype.cpp).
bool can_quantize(DType t);
// Quantizes n f32 values (a multiple of 32) into Q4_0/Q4_1/Q5_0/Q5_1 with ggml's reference rounding,
// byte-identical to gguf.quants.quantize for finite inputs.
void quantize_row(DType t, const float* src, void* dst, int64_t n);

}  // namespace kvb
