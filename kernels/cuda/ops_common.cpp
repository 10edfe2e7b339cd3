// Scratch and the validation helpers of ops.h (the same rules as kernels/cpu/ops_common.cpp, so
// both backends reject the same inputs).
#include <fmt/format.h>

#include <cstdint>

#include "kernels/cuda/ops.h"

namespace kvb::cuda {

Result<void*> Scratch::get(size_t bytes, cudaStream_t stream) {
  if (bytes <= size_ && mem_ != nullptr) return mem_.get();
  // The old block may still be read or written by queued kernels.
  KVB_CUDA_CHECK(cudaStreamSynchronize(stream));
  mem_.reset();
  size_ = 0;
  constexpr size_t kGranule = size_t(1) << 20;  // round up so that small growth steps coalesce
  const size_t want = (bytes + kGranule - 1) / kGranule * kGranule;
  KVB_ASSIGN_OR_RETURN(mem_, device_alloc(want));
  size_ = want;
  return mem_.get();
}

Status check_tensor(const Tensor& t, DType dtype, const char* op, const char* name) {
  if (t.dtype != dtype) {
    return invalid_argument(fmt::format("{}: {} must be {}, got {}", op, name, dtype_name(dtype), t.describe()));
  }
  if (t.n_dims < 1 || t.n_dims > 4) return invalid_argument(fmt::format("{}: {} has {} dims", op, name, t.n_dims));
  constexpr int64_t kMaxDim = int64_t(1) << 40;
  int64_t numel = 1;
  for (int i = 0; i < t.n_dims; ++i) {
    const int64_t d = t.shape[size_t(i)];
    if (d < 0 || d > kMaxDim || (d > 0 && numel > kMaxDim / d)) {
      return invalid_argument(fmt::format("{}: {} has a bad shape {}", op, name, t.describe()));
    }
    numel *= d;
  }
  if (t.cols() % dtype_block_size(dtype) != 0) {
    return invalid_argument(
        fmt::format("{}: {} rows of {} are not whole {} blocks", op, name, t.describe(), dtype_name(dtype)));
  }
  if (numel > 0 && t.data == nullptr) return invalid_argument(fmt::format("{}: {} has null data", op, name));
  return Status::Ok();
}

bool tensors_overlap(const Tensor& a, const Tensor& b) {
  const auto a0 = reinterpret_cast<uintptr_t>(a.data);
  const auto b0 = reinterpret_cast<uintptr_t>(b.data);
  const size_t an = a.nbytes(), bn = b.nbytes();
  if (an == 0 || bn == 0) return false;
  return a0 < b0 + bn && b0 < a0 + an;
}

}  // namespace kvb::cuda
