// KV wire value codecs on the device: the twins of engine/kv_wire_values.h (same payload layout,
// bit-identical bytes and values), so a GPU cache can be serialized to the wire format and back
// without a host round trip through f32. The one difference is the bit pattern of a NaN that
// arithmetic creates (decoding q = 0 under an inf scale: inf · 0): the GPU's default NaN is
// 0x7fffffff, x86's 0xffc00000. NaNs that are only converted keep their bits on both.
//
// CUDA-only and host-includable (no CUDA types). `b` must be a backend created by a CUDA device
// (INVALID_ARGUMENT otherwise); every pointer is its device memory or pinned host memory. Calls
// enqueue on b's stream and return at once: results are visible after b.synchronize(). Not
// thread-safe (the backend's rule).
//
// Payload of n_rows rows of head_dim values (one row = one KV head of one cell):
//   kF32: f32 [n_rows][head_dim];  kF16 / kBF16: 16-bit [n_rows][head_dim] (RNE, NaN kept quiet);
//   kInt8: f32 scales [n_rows], then int8 [n_rows][head_dim]; scale = max|x| / 127 over the row,
//          q = lrint(clamp(x · 127 / max|x|, -127, 127)) (round half to even; NaN → -127; an
//          all-zero row has scale 0 and q = 0), decoded as scale · q.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/backend.h"

namespace kvb::cuda {

// The element types of the wire, in the order of kvb::WireDType (engine/kv_wire.h).
enum class WireCodec : uint8_t { kF32, kF16, kBF16, kInt8 };

// Payload bytes of n_rows rows of head_dim values (engine/kv_wire.h: wire_payload_bytes).
size_t wire_payload_bytes(WireCodec codec, int64_t n_rows, int64_t head_dim);

// Encodes x (f32 or f16, [..][head_dim] with head_dim = x.cols(), n_rows = x.rows()) into `dst`,
// which holds dst_bytes >= wire_payload_bytes(...) bytes (4-byte aligned for kF32/kInt8, 2 for the
// 16-bit codecs). An f16 x is widened exactly first. x and dst must not overlap.
Status wire_encode(Backend& b, WireCodec codec, const Tensor& x, void* dst, size_t dst_bytes);

// The inverse: reads wire_payload_bytes(codec, y.rows(), y.cols()) bytes of `src` (src_bytes must
// cover them) into y (f32, or f16 rounded RNE from the decoded f32).
Status wire_decode(Backend& b, WireCodec codec, const void* src, size_t src_bytes, const Tensor& y);

}  // namespace kvb::cuda
