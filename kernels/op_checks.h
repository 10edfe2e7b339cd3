// Argument checks of the backend ops, shared by every backend (kernels/cpu, kernels/cuda) so that
// all of them reject the same inputs with the same INVALID_ARGUMENT messages. Pure functions.
#pragma once

#include <cstdint>

#include "kernels/backend.h"
#include "kernels/status.h"
#include "kernels/tensor.h"

namespace kvb {

// OK iff t is `dtype` with n_dims in [1, 4], non-negative dims (no overflowing element count),
// whole blocks per row and non-null data when non-empty.
Status check_tensor(const Tensor& t, DType dtype, const char* op, const char* name);
// The element types the backend interface defines for each op: weight types (F32/F16/BF16/Q8_0)
// for matmul, embedding and convert; F32/F16 caches for attention; F32 for the rest. Both backends
// implement exactly these (Device::supports_op).
bool op_supports_dtype(OpKind op, DType t);
// True when the byte ranges of two tensors overlap.
bool tensors_overlap(const Tensor& a, const Tensor& b);

// Backend::add's arguments: a, out f32 of the same shape; b f32 of a's shape, or one row of a's
// cols (returns true: broadcast over a's rows); out may alias a (or b when not broadcast) but
// overlap nothing else.
Result<bool> check_add(const Tensor& a, const Tensor& b, const Tensor& out);

// Backend::rope's optional frequency factors: null data (none, OK), else f32 with n_rot/2 elements.
Status check_rope_freq_factors(const Tensor& factors, int n_rot);
// Backend::rope's arguments: x f32 [n][n_heads][head_dim], pos i32 with n values, n_rot even in
// (0, head_dim], finite theta_base > 0 and freq_scale, the frequency factors above, x and pos apart.
Status check_rope(const Tensor& x, const Tensor& pos, const RopeParams& p);

// Backend::rms_norm's arguments: x, y f32 with the same element count and cols, w f32 [cols],
// finite eps >= 0; y may be x itself but overlap neither w nor part of x.
Status check_rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y);

// Backend::embedding's arguments: table [vocab][d] of a weight dtype (F32/F16/BF16/Q8_0), tokens
// i32, out f32 [tokens.numel()][d] overlapping neither input. The token ids are the backend's to
// check (they may be in device memory).
Status check_embedding(const Tensor& table, const Tensor& tokens, const Tensor& out);

// Backend::attention's arguments (backend.h): q, out [n][n_head][hd] f32; k, v [n_kv][n_head_kv][hd]
// f32 or f16; n_head a multiple of n_head_kv; n_kv >= n; finite scale; out overlapping no input.
struct AttentionShapes {
  int64_t n = 0, n_head = 0, hd = 0, n_kv = 0, n_head_kv = 0;
  int64_t group = 0;  // query heads per kv head
};
Result<AttentionShapes> check_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                        float scale);
// check_attention over k/v, then every prefix segment (same dtype and head shape as k, v shaped as
// k); n_kv counts the segments' rows too.
Result<AttentionShapes> check_attention_seq(const AttentionSeq& a, float scale);

// Backend::gate_add's arguments: receiver, projected, out f32 with the same rows n and n·H·D
// elements; logits [n][H] f32; out may alias receiver or projected but overlap nothing else.
struct GateAddShapes {
  int64_t n = 0;    // rows (tokens)
  int64_t h = 0;    // heads: logits per row
  int64_t row = 0;  // values per row (H·D)
};
Result<GateAddShapes> check_gate_add(const Tensor& receiver, const Tensor& logits, const Tensor& projected,
                                     const Tensor& out);

}  // namespace kvb
