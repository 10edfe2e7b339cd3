// Element types of tensors, weights, KV caches and the wire, with exact scalar conversions.
//
// Block-quantized types (Q8_0 here; Q4_0 ... Q6_K in quants.h) store a row of n elements as
// n / block_size blocks; a row length must be a multiple of the block size. All layouts are
// little-endian and bit-identical to GGUF/ggml.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace kvb {

enum class DType : uint8_t {
  kF32,
  kF16,
  kBF16,
  kQ8_0,  // blocks of 32: f16 scale d, then 32 int8 q; x = d * q
  kI8,
  kI32,
  // GGUF weight formats (layouts in quants.h): 32-element blocks, then 256-element super-blocks.
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ2_K,
  kQ3_K,
  kQ4_K,
  kQ5_K,
  kQ6_K,
};

inline constexpr int kQ8BlockSize = 32;
struct BlockQ8_0 {
  uint16_t d;              // f16 scale
  int8_t qs[kQ8BlockSize];
};
static_assert(sizeof(BlockQ8_0) == 34);

std::string_view dtype_name(DType t);  // "f32", "f16", "bf16", "q8_0", "i8", "i32", "q4_0", ..., "q6_k"
std::optional<DType> dtype_from_name(std::string_view name);
int dtype_block_size(DType t);       // elements per block (32 for Q8_0 and Q4_0..Q5_1, 256 for *_K, else 1)
size_t dtype_block_bytes(DType t);   // bytes per block
bool dtype_is_quantized(DType t);    // Q8_0 and the quants.h types
// Bytes of a row of n elements. n must be a multiple of the block size (asserted).
size_t row_bytes(DType t, int64_t n);

// ---- scalar conversions (IEEE binary16 with round-to-nearest-even; bf16 with RNE, NaN kept) ----
float fp16_to_fp32(uint16_t h);
uint16_t fp32_to_fp16(float f);
inline float bf16_to_fp32(uint16_t h) {
  uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint16_t fp32_to_bf16(float f);

// Converts n elements of `src` (type t) to f32. For block types, n is a multiple of the block size.
// Thread-safe, no allocation. `src` and `dst` must not overlap.
void to_f32(DType t, const void* src, float* dst, int64_t n);
// Converts n f32 values into type t: F32, F16, BF16, I8, I32, and the block types with a quantizer
// (Q8_0 with ggml's rounding, d = amax/127; Q4_0/Q4_1/Q5_0/Q5_1, see quants.h). Asserts for K-quants.
void from_f32(DType t, const float* src, void* dst, int64_t n);

}  // namespace kvb
