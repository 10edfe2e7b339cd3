// The element codecs of the KV wire format: f32 cache values ↔ chunk payload bytes.
//
// Internal to engine/kv_wire.cpp (and its tests): the payload layouts are documented in
// engine/kv_wire.h. Every conversion is bit-exact with the scalar reference in kernels/dtype.h
// (fp32_to_fp16 / fp16_to_fp32 with round-to-nearest-even and NaN handling included,
// fp32_to_bf16 / bf16_to_fp32), and int8 rounds like std::lrint in the default rounding mode, so
// the output never depends on which instruction set ran it. On x86-64 the hot loops run with
// AVX2 + F16C when the CPU has them (chosen once, at first use); elsewhere plain loops the compiler
// vectorizes. No allocation, thread-safe, `src` and `dst` must not overlap.
#pragma once

#include <cstdint>

#include "engine/kv_wire.h"

namespace kvb::kv_wire_values {

// Encodes n_rows rows of head_dim f32 values (one row = one KV head of one cell) into `dst`, which
// holds exactly wire_payload_bytes(dtype, n_head_kv, head_dim, n_cells) bytes for
// n_rows = n_cells * n_head_kv. int8: scale = max|x| / 127 over the row (f32 scales first, then
// the int8 values), q = lrint(clamp(x * 127 / max|x|, -127, 127)), NaN → -127.
void encode(WireDType dtype, const float* x, int64_t n_rows, int64_t head_dim, char* dst);

// The inverse: reads exactly that many payload bytes and writes n_rows * head_dim f32 values.
void decode(WireDType dtype, const char* src, int64_t n_rows, int64_t head_dim, float* y);

// Which implementation encode/decode use on this CPU: "avx2+f16c" or "generic".
const char* implementation();

// For differential tests: the generic loops, whatever the CPU.
void encode_generic(WireDType dtype, const float* x, int64_t n_rows, int64_t head_dim, char* dst);
void decode_generic(WireDType dtype, const char* src, int64_t n_rows, int64_t head_dim, float* y);

}  // namespace kvb::kv_wire_values
