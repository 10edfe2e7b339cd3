// gate_add: out[t][h·D + d] = receiver[t][h·D + d] + sigmoid(logits[t][h]) · projected[t][h·D + d],
// the gated residual of C2C fusion; out may alias receiver or projected. CPU twin: cpu/gate.cpp.
// Grid-stride loop over the n·H·D outputs; element i belongs to gate i / D (= t·H + h).
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

__global__ void gate_add_kernel(const float* receiver, const float* logits, const float* projected, float* out,
                                int64_t n, int64_t d) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    // 1 / (1 + e^-x): exp overflows to inf for x < -88 and the weight is then exactly 0.
    const float w = 1.0f / (1.0f + expf(-logits[i / d]));
    out[i] = receiver[i] + w * projected[i];
  }
}

}  // namespace

Status gate_add(OpContext& ctx, const Tensor& receiver, const Tensor& logits, const Tensor& projected,
                const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_tensor(receiver, DType::kF32, "gate_add", "receiver"));
  KVB_RETURN_IF_ERROR(check_tensor(logits, DType::kF32, "gate_add", "logits"));
  KVB_RETURN_IF_ERROR(check_tensor(projected, DType::kF32, "gate_add", "projected"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "gate_add", "out"));
  const int64_t n = receiver.shape[0];
  const int64_t h = logits.cols();
  const int64_t row = n > 0 ? receiver.numel() / n : 0;
  const auto same_rows = [&](const Tensor& t) { return t.shape[0] == n && t.numel() == receiver.numel(); };
  if (logits.n_dims != 2 || logits.shape[0] != n || !same_rows(projected) || !same_rows(out) || h <= 0 ||
      (n > 0 && row % h != 0)) {
    return invalid_argument(cat("gate_add: receiver ", receiver.describe(), ", logits ", logits.describe(),
                                ", projected ", projected.describe(), ", out ", out.describe(), " do not match"));
  }
  if ((out.data != receiver.data && tensors_overlap(out, receiver)) ||
      (out.data != projected.data && tensors_overlap(out, projected)) || tensors_overlap(out, logits)) {
    return invalid_argument("gate_add: out partially overlaps an input");
  }
  if (n == 0 || row == 0) return Status::Ok();
  const int64_t total = n * row;
  gate_add_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, ctx.stream>>>(
      receiver.as<const float>(), logits.as<const float>(), projected.as<const float>(), out.as<float>(), total,
      row / h);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
