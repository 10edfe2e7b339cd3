// embedding: out[n][d] (f32) = table[tokens[i]] for a table [vocab][d] of any weight dtype.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status embedding(OpContext& ctx, const Tensor& table, const Tensor& tokens, const Tensor& out) {
  const DType t = table.dtype;
  if (weight_type_index(t) < 0) {
    return invalid_argument(fmt::format("embedding: table dtype {} is not a weight type", dtype_name(t)));
  }
  KVB_RETURN_IF_ERROR(check_tensor(table, t, "embedding", "table"));
  KVB_RETURN_IF_ERROR(check_tensor(tokens, DType::kI32, "embedding", "tokens"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "embedding", "out"));
  if (table.n_dims != 2)
    return invalid_argument(fmt::format("embedding: table must be [vocab][d], got {}", table.describe()));
  const int64_t vocab = table.shape[0], d = table.shape[1];
  const int64_t n = tokens.numel();
  if (out.n_dims != 2 || out.shape[0] != n || out.shape[1] != d) {
    return invalid_argument(fmt::format("embedding: out {} must be f32[{}][{}]", out.describe(), n, d));
  }
  if (tensors_overlap(out, table) || tensors_overlap(out, tokens))
    return invalid_argument("embedding: out overlaps an input");
  const int32_t* ids = tokens.as<const int32_t>();
  for (int64_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || ids[i] >= vocab) {
      return invalid_argument(fmt::format("embedding: token id {} at {} is outside [0, {})", ids[i], i, vocab));
    }
  }
  if (n == 0 || d == 0) return Status::Ok();

  const VecKernels& vk = *ctx.vec;
  const size_t row_bytes_t = table.row_nbytes();
  const auto* base = table.as<const uint8_t>();
  float* o = out.as<float>();
  auto rows = [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      const uint8_t* src = base + size_t(ids[i]) * row_bytes_t;
      if (t == DType::kF32) {
        std::memcpy(o + i * d, src, size_t(d) * sizeof(float));
      } else if (t == DType::kF16) {
        vk.f16_to_f32(reinterpret_cast<const uint16_t*>(src), o + i * d, d);
      } else {
        to_f32(t, src, o + i * d, d);
      }
    }
  };
  if (n * d < kMinParallelElements) {
    rows(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, std::max<int64_t>(1, kMinParallelElements / 4 / d), rows);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
