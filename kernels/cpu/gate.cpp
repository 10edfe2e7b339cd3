// gate_add: out[t][h·D + d] = receiver[t][h·D + d] + sigmoid(logits[t][h]) · projected[t][h·D + d],
// the gated residual that writes a C2C projector's output into the receiver's K or V. out may alias
// receiver or projected. Rows (tokens) are independent and split over the pool.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status gate_add(OpContext& ctx, const Tensor& receiver, const Tensor& logits, const Tensor& projected,
                const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_tensor(receiver, DType::kF32, "gate_add", "receiver"));
  KVB_RETURN_IF_ERROR(check_tensor(logits, DType::kF32, "gate_add", "logits"));
  KVB_RETURN_IF_ERROR(check_tensor(projected, DType::kF32, "gate_add", "projected"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "gate_add", "out"));
  // Rows are the outermost dimension; the rest of a row is H·D values (2-D [n][H·D] or 3-D [n][H][D]).
  const int64_t n = receiver.shape[0];
  const int64_t h = logits.cols();
  const int64_t row = n > 0 ? receiver.numel() / n : 0;
  const auto same_rows = [&](const Tensor& t) { return t.shape[0] == n && t.numel() == receiver.numel(); };
  if (logits.n_dims != 2 || logits.shape[0] != n || !same_rows(projected) || !same_rows(out) || h <= 0 ||
      (n > 0 && row % h != 0)) {
    return invalid_argument(fmt::format("gate_add: receiver {}, logits {}, projected {}, out {} do not match",
                                        receiver.describe(), logits.describe(), projected.describe(), out.describe()));
  }
  if ((out.data != receiver.data && tensors_overlap(out, receiver)) ||
      (out.data != projected.data && tensors_overlap(out, projected)) || tensors_overlap(out, logits)) {
    return invalid_argument("gate_add: out partially overlaps an input");
  }
  if (n == 0 || row == 0) return Status::Ok();
  const int64_t d = row / h;
  const float* r = receiver.as<const float>();
  const float* l = logits.as<const float>();
  const float* p = projected.as<const float>();
  float* o = out.as<float>();
  auto rows = [&](int64_t begin, int64_t end, int) {
    for (int64_t t = begin; t < end; ++t) {
      for (int64_t k = 0; k < h; ++k) {
        // 1 / (1 + e^-x): exp overflows to inf for x < -88 and the weight is then exactly 0.
        const float w = 1.0f / (1.0f + std::exp(-l[t * h + k]));
        const int64_t base = t * row + k * d;
        for (int64_t j = 0; j < d; ++j) o[base + j] = r[base + j] + w * p[base + j];
      }
    }
  };
  if (n * row < kMinParallelElements) {
    rows(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, std::max<int64_t>(1, kMinParallelElements / 4 / row), rows);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
