// The device scratch block of ops.h. (Argument checks are shared with the CPU backend:
// kernels/op_checks.h.)
#include <fmt/format.h>

#include <cstdint>

#include "kernels/cuda/ops.h"

namespace kvb::cuda {

Result<void*> Scratch::get(size_t bytes, cudaStream_t stream) {
  if (bytes <= size_ && mem_ != nullptr) return mem_.get();
  // Growing waits and allocates, which a graph recording cannot contain: the recording fails and
  // its caller runs the ops directly, which grows the scratch for the recordings that follow.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  KVB_CUDA_CHECK(cudaStreamIsCapturing(stream, &capture));
  if (capture != cudaStreamCaptureStatusNone) {
    return unavailable(cat("cuda scratch: needs ", bytes, " bytes (has ", size_, "); it cannot grow in a graph"));
  }
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

}  // namespace kvb::cuda
