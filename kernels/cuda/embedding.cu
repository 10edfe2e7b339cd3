// embedding: out[n][d] (f32) = table[tokens[i]] for a table [vocab][d] of F32, F16, BF16 or Q8_0;
// tokens i32 [n]. CPU twin: cpu/embedding.cpp.
//
// The ids live in device memory, so they are checked by the kernel: the row of an id outside
// [0, vocab) is written as zeros and the id is reported through ctx.error; the backend's next
// synchronize() returns INVALID_ARGUMENT naming it (the host cannot read device ids at enqueue
// time without stalling the stream). Grid-stride loop, one output element per thread per step.
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

__global__ void embedding_kernel(DType t, const void* table, int64_t vocab, const int32_t* ids, float* out,
                                 int64_t n, int64_t d, DeviceErrorReport* error) {
  const int64_t total = n * d;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / d, col = i % d;
    const int32_t id = ids[row];
    if (id < 0 || id >= vocab) {
      out[i] = 0.0f;
      if (col == 0) {  // one report per bad row; any of them will do
        error->limit = vocab;
        __threadfence_system();
        error->code = (1ull << 63) | (static_cast<unsigned long long>(row & 0x7fffffff) << 32) | uint32_t(id);
      }
      continue;
    }
    out[i] = load_as_f32(t, table, int64_t(id) * d + col);
  }
}

}  // namespace

Status embedding(OpContext& ctx, const Tensor& table, const Tensor& tokens, const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_embedding(table, tokens, out));
  const DType t = table.dtype;
  if (t != DType::kF32 && t != DType::kF16 && t != DType::kBF16 && t != DType::kQ8_0) {
    return unimplemented(cat("cuda embedding: table dtype ", dtype_name(t), " is read on the host only (widen it first)"));
  }
  const int64_t vocab = table.shape[0], d = table.shape[1];
  const int64_t n = tokens.numel();
  if (n == 0 || d == 0) return Status::Ok();
  embedding_kernel<<<elementwise_blocks(n * d), kElementwiseThreads, 0, ctx.stream>>>(
      t, table.data, vocab, tokens.as<const int32_t>(), out.as<float>(), n, d, ctx.error);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
