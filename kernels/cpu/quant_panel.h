// The CPU backend's packed layouts of GGUF block weights (Q4_0 ... Q6_K), the 8-bit activations their
// integer kernels read, and the per-ISA kernel table (QuantKernels).
//
// Every GGUF block type is affine per 16-element sub-block (kernels/quants.h: w = s * q + m with an
// unsigned q). Two panel formats hold that form exactly (s and m as f32), both cut like the other
// packed weights (packed_weight.h) into panels of kPanel = 32 output rows, each panel a sequence of
// K/32 groups, group g covering inputs [32g, 32g + 32):
//   U4 — Q4_0, Q4_1, Q4_K (4-bit q, one s and m per 32 inputs), kU4GroupBytes = 768 (6 bits/weight):
//          float s[32], m[32]                  [row]
//          uint8 q[4][32][4]                   [octet o][row r][byte b]: the low nibble is q at
//                                              k = 8o + b, the high nibble q at k = 8o + 4 + b
//   U8 — Q5_0, Q5_1, Q2_K, Q3_K, Q5_K, Q6_K (q < 64, one s and m per 16 inputs), kU8GroupBytes = 1536:
//          float s[2][32], m[2][32]            [half h: inputs 32g + 16h ..][row]
//          uint8 q[8][32][4]                   [quad j][row r][byte b]: q at k = 4j + b
// So 4 consecutive inputs of the 32 rows are 128 contiguous bytes, one 32-bit lane per row: an
// unsigned-by-signed byte dot product instruction (VPDPBUSD, or PMADDUBSW + PMADDWD) multiplies
// them with 4 activation bytes broadcast to every lane, with no horizontal sums.
//
// Decode (gemv) quantizes x per 32 inputs to int8 (QuantizedRows) and accumulates exact integer
// dots per (sub-)block:  sum_k w_k x_k ~= s * dx * sum q_k xq_k + m * dx * sum xq_k.
// Every row takes this path, prompt rows too (matmul.cpp): measured faster than widening the blocks
// to f32 tiles for the f32 micro-kernel, and a row's bits then never depend on the mode.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/cpu_backend.h"  // Isa
#include "kernels/cpu/gemm.h"

namespace kvb::cpu {

inline constexpr int kNumQuantFormats = 2;  // U4, U8
inline constexpr size_t kU4GroupBytes = 2 * kPanel * sizeof(float) + kPanel * 16;      // 768
inline constexpr size_t kU8GroupBytes = 2 * 2 * kPanel * sizeof(float) + kPanel * 32;  // 1536

// 0 (U4) or 1 (U8) for a GGUF block type; -1 for any other dtype.
int quant_format(DType t);
inline size_t quant_group_bytes(int format) { return format == 0 ? kU4GroupBytes : kU8GroupBytes; }

// Packs rows [32p, 32p + 32) of a [n_out][n_in] matrix of GGUF blocks (type t, quant_format(t) >= 0,
// n_in a multiple of the block size) into panel p's n_in / 32 groups; rows past n_out are zero.
void pack_quant_panel(DType t, const uint8_t* w, int64_t n_out, int64_t n_in, int64_t p, uint8_t* panel);

// n <= kMaxGemvRows rows of x, quantized per 32 inputs as llama.cpp's Q8_1 activations: row i's int8
// values are q[i * k ...] = round-to-nearest-even(x * 127 / amax), its scales d[i * k / 32 ...] =
// f16(amax / 127) (x ~= d * q; the f16 rounding matches llama.cpp, whose logits the engine is held
// to), and sum16[i * k / 16 + j] = d * sum of the int8 values of inputs [16j, 16j + 16) (the m term
// of the dot). Storage is owned by the caller.
struct QuantizedRows {
  const int8_t* q = nullptr;
  const float* d = nullptr;
  const float* sum16 = nullptr;
  int64_t k = 0;
};
// Bytes of storage quantize_rows needs for n rows of k inputs.
size_t quantized_rows_bytes(int n, int64_t k);
// The writable arrays of QuantizedRows carved out of `storage` (quantized_rows_bytes(n, k) bytes).
struct QuantizedRowsStorage {
  int8_t* q;
  float* d;
  float* sum16;
};
QuantizedRowsStorage quantized_rows_storage(int n, int64_t k, void* storage);
// The scalar part of quantizing one 32-input group whose largest |x| is amax: the factor that maps
// x to q (1 / (amax / 127) in f32, or 0 for an all-zero group) and the f16-rounded scale d. Every ISA's
// quantize calls it, so they all compute the same bits.
struct GroupScale {
  float inv;  // q = round-to-nearest-even(x * inv)
  float d;    // f16(amax / 127) as f32
};
GroupScale group_scale(float amax);
// Quantizes x [n][k] (rows ldx apart; k a multiple of 32) into `storage` (quantized_rows_bytes,
// 64-byte aligned) and returns the view. The portable reference of QuantKernels::quantize.
QuantizedRows quantize_rows(const float* x, int64_t ldx, int n, int64_t k, void* storage);

struct QuantKernels {
  // y[r][c] (+)= sum_k x[r][k] * W[c][k] for r < n (<= kMaxGemvRows), c < nc (<= 32) over one whole
  // panel of k inputs, with x quantized; only the nc valid columns of y rows (ldy apart) are touched.
  using GemvFn = void (*)(const uint8_t* panel, int64_t k, const QuantizedRows& x, int n, float* y, int64_t ldy,
                          int nc, bool accumulate);
  // quantize_rows, vectorized: the same bits.
  using QuantizeFn = QuantizedRows (*)(const float* x, int64_t ldx, int n, int64_t k, void* storage);
  const char* name = "";
  GemvFn gemv[kNumQuantFormats] = {};
  QuantizeFn quantize = nullptr;
};

const QuantKernels& quant_kernels_generic();
#if KVB_CPU_X86
const QuantKernels& quant_kernels_avx2();        // AVX2: PMADDUBSW + PMADDWD
const QuantKernels& quant_kernels_avx512vnni();  // AVX-512 F/BW/VL + VNNI: VPDPBUSD
#endif
// The table a backend pinned to `isa` uses (AVX-512 without VNNI gets the AVX2 kernels).
const QuantKernels& quant_kernels_for(Isa isa);

}  // namespace kvb::cpu
