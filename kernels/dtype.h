// Element types of tensors, weights, KV caches and the wire, with exact scalar conversions.
//
// Block-quantized types (Q8_0) store a row of n elements as n / block_size blocks; a row length must
// be a multiple of the block size. All layouts are little-endian and bit-identical to GGUF/ggml.
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
};

inline constexpr int kQ8BlockSize = 32;
struct BlockQ8_0 {
  uint16_t d;              // f16 scale
  int8_t qs[kQ8BlockSize];
};
static_assert(sizeof(BlockQ8_0) == 34);

std::string_view dtype_name(DType t);                  // "f32", "f16", "bf16", "q8_0", "i8", "i32"
std::optional<DType> dtype_from_name(std::string_view name);
int dtype_block_size(DType t);                         // elements per block (32 for Q8_0, else 1)
size_t dtype_block_bytes(DType t);                     // bytes per block
bool dtype_is_quantized(DType t);                      // Q8_0
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

// Converts n elements of `src` (type t) to f32. For Q8_0, n is a multiple of 32.
// Thread-safe, no allocation. `src` and `dst` must not overlap.
void to_f32(DType t, const void* src, float* dst, int64_t n);
// Converts n f32 values into type t (F32, F16, BF16, Q8_0 with ggml's rounding: d = amax/127).
void from_f32(DType t, const float* src, void* dst, int64_t n);

}  // namespace kvb
