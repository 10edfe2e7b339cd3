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

}  // namespace kvb::cpu
