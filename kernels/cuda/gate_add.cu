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
  KVB_ASSIGN_OR_RETURN(const GateAddShapes g, check_gate_add(receiver, logits, projected, out));
  const int64_t n = g.n, h = g.h, row = g.row;
  if (n == 0 || row == 0) return Status::Ok();
  const int64_t total = n * row;
  gate_add_kernel<<<elementwise_blocks(total), kElementwiseThreads, 0, ctx.stream>>>(
      receiver.as<const float>(), logits.as<const float>(), projected.as<const float>(), out.as<float>(), total,
      row / h);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
