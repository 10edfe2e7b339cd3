// embedding: out[n][d] (f32) = table[tokens[i]] for a table [vocab][d] of any weight dtype.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status embedding(OpContext& ctx, const Tensor& table, const Tensor& tokens, const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_embedding(table, tokens, out));
  const DType t = table.dtype;
  const int64_t vocab = table.shape[0], d = table.shape[1];
  const int64_t n = tokens.numel();
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
