// The CUDA backend's host-side plumbing: CUDA/cuBLAS errors as kvb::Status, RAII owners for every
// CUDA handle, a device guard, and a string builder for error messages.
//
// Host-only (no device code): included by the .cpp files (built by g++) and the .cu files alike.
// Device helpers (conversions, reductions) live in device_util.cuh.
//
// Errors are converted here and nowhere else (STYLE R6): KVB_CUDA_CHECK / KVB_CUBLAS_CHECK return
// the Status from the enclosing function. cudaErrorMemoryAllocation becomes RESOURCE_EXHAUSTED, a
// missing driver or device UNAVAILABLE, everything else INTERNAL, with the failing call, file and
// line in the message.
#pragma once

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <memory>
#include <sstream>
#include <string>

#include "kernels/status.h"

namespace kvb::cuda {

Status status_from_cuda(cudaError_t e, const char* what, const char* file, int line);
Status status_from_cublas(cublasStatus_t e, const char* what, const char* file, int line);

}  // namespace kvb::cuda

#define KVB_CUDA_CHECK(expr)                                                                  \
  do {                                                                                        \
    const cudaError_t kvb_cuda_err_ = (expr);                                                 \
    if (kvb_cuda_err_ != cudaSuccess) {                                                       \
      return ::kvb::cuda::status_from_cuda(kvb_cuda_err_, #expr, __FILE__, __LINE__);         \
    }                                                                                         \
  } while (0)

#define KVB_CUBLAS_CHECK(expr)                                                                \
  do {                                                                                        \
    const cublasStatus_t kvb_cublas_err_ = (expr);                                            \
    if (kvb_cublas_err_ != CUBLAS_STATUS_SUCCESS) {                                           \
      return ::kvb::cuda::status_from_cublas(kvb_cublas_err_, #expr, __FILE__, __LINE__);     \
    }                                                                                         \
  } while (0)

// After a <<<...>>> launch: a bad configuration (grid, shared memory) is reported here; faults
// inside the kernel surface at the next synchronize(). cudaGetLastError also clears non-sticky
// errors, so one failed launch does not poison later checks.
#define KVB_CUDA_CHECK_LAUNCH() KVB_CUDA_CHECK(cudaGetLastError())

namespace kvb::cuda {

// ---- RAII owners (STYLE R8): move-only, the type says who frees what ----
struct StreamDeleter {
  void operator()(cudaStream_t s) const noexcept { cudaStreamDestroy(s); }
};
struct EventDeleter {
  void operator()(cudaEvent_t e) const noexcept { cudaEventDestroy(e); }
};
struct CublasDeleter {
  void operator()(cublasHandle_t h) const noexcept { cublasDestroy(h); }
};
struct DeviceFree {
  void operator()(void* p) const noexcept { cudaFree(p); }
};
struct PinnedFree {
  void operator()(void* p) const noexcept { cudaFreeHost(p); }
};
using StreamPtr = std::unique_ptr<CUstream_st, StreamDeleter>;
using EventPtr = std::unique_ptr<CUevent_st, EventDeleter>;
using CublasPtr = std::unique_ptr<cublasContext, CublasDeleter>;
using DevicePtr = std::unique_ptr<void, DeviceFree>;   // cudaMalloc'd device memory
using PinnedPtr = std::unique_ptr<void, PinnedFree>;   // cudaHostAlloc'd page-locked host memory
struct GraphDeleter {
  void operator()(cudaGraph_t g) const noexcept { cudaGraphDestroy(g); }
};
struct GraphExecDeleter {
  void operator()(cudaGraphExec_t g) const noexcept { cudaGraphExecDestroy(g); }
};
using GraphPtr = std::unique_ptr<CUgraph_st, GraphDeleter>;              // a recorded (captured) graph
using GraphExecPtr = std::unique_ptr<CUgraphExec_st, GraphExecDeleter>;  // its launchable instance

// Each allocates on the current device. RESOURCE_EXHAUSTED when out of memory.
// Default flags: a blocking stream (legacy-stream cudaMemcpy, e.g. Buffer::get, waits for it).
Result<StreamPtr> make_stream(unsigned flags = cudaStreamDefault);
Result<EventPtr> make_event();    // timing disabled
Result<CublasPtr> make_cublas(cudaStream_t stream);
Result<DevicePtr> device_alloc(size_t bytes);                     // bytes may be 0 (null pointer)
Result<PinnedPtr> pinned_alloc(size_t bytes, unsigned flags = 0);  // cudaHostAlloc flags

// Makes `device` current for the guard's lifetime and restores the previous one. CUDA handles are
// bound to the device that was current when they were created; every backend entry point that
// touches one holds a guard. status() is the result of the switch.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;
  const Status& status() const { return status_; }

 private:
  int prev_ = -1;
  bool switched_ = false;
  Status status_;
};

// cat("rope: n_rot ", 7, " is odd") — message building for .cu files, where fmt's compile-time
// format strings do not build under nvcc.
template <class... A>
std::string cat(const A&... a) {
  std::ostringstream os;
  (os << ... << a);
  return os.str();
}

}  // namespace kvb::cuda
