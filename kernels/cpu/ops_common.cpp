#include <fmt/format.h>

#include <cstdint>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status Scratch::reserve_shared(size_t bytes) {
  if (!shared_.reserve(bytes)) return resource_exhausted(fmt::format("cpu scratch: cannot allocate {} bytes", bytes));
  return Status::Ok();
}

Status Scratch::reserve_per_thread(int n_threads, size_t bytes) {
  if (per_thread_.size() < size_t(n_threads)) per_thread_.resize(size_t(n_threads));
  for (int t = 0; t < n_threads; ++t) {
    if (!per_thread_[size_t(t)].reserve(bytes)) {
      return resource_exhausted(fmt::format("cpu scratch: cannot allocate {} bytes per thread", bytes));
    }
  }
  return Status::Ok();
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

}  // namespace kvb::cpu
