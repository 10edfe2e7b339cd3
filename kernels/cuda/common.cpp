// CUDA/cuBLAS error conversion and the RAII factories of common.cuh.
#include "kernels/cuda/common.cuh"

#include <fmt/format.h>

namespace kvb::cuda {

Status status_from_cuda(cudaError_t e, const char* what, const char* file, int line) {
  std::string msg = fmt::format("{}: {} ({}) at {}:{}", what, cudaGetErrorString(e), cudaGetErrorName(e), file, line);
  switch (e) {
    case cudaErrorMemoryAllocation:
      return resource_exhausted(std::move(msg));
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorStubLibrary:
    case cudaErrorDevicesUnavailable:
    case cudaErrorNoKernelImageForDevice:
      return unavailable(std::move(msg));
    default:
      return internal_error(std::move(msg));
  }
}

Status status_from_cublas(cublasStatus_t e, const char* what, const char* file, int line) {
  std::string msg = fmt::format("{}: {} ({}) at {}:{}", what, cublasGetStatusString(e), cublasGetStatusName(e), file,
                                line);
  if (e == CUBLAS_STATUS_ALLOC_FAILED) return resource_exhausted(std::move(msg));
  if (e == CUBLAS_STATUS_NOT_SUPPORTED || e == CUBLAS_STATUS_ARCH_MISMATCH) return unimplemented(std::move(msg));
  return internal_error(std::move(msg));
}

Result<StreamPtr> make_stream(unsigned flags) {
  cudaStream_t s = nullptr;
  KVB_CUDA_CHECK(cudaStreamCreateWithFlags(&s, flags));
  return StreamPtr(s);
}

Result<EventPtr> make_event() {
  cudaEvent_t e = nullptr;
  KVB_CUDA_CHECK(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
  return EventPtr(e);
}

Result<CublasPtr> make_cublas(cudaStream_t stream) {
  cublasHandle_t h = nullptr;
  KVB_CUBLAS_CHECK(cublasCreate(&h));
  CublasPtr owned(h);
  KVB_CUBLAS_CHECK(cublasSetStream(h, stream));
  // alpha and beta are host floats; the default math mode keeps f32 GEMMs in f32 (no TF32).
  KVB_CUBLAS_CHECK(cublasSetPointerMode(h, CUBLAS_POINTER_MODE_HOST));
  return owned;
}

Result<DevicePtr> device_alloc(size_t bytes) {
  if (bytes == 0) return DevicePtr(nullptr);
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, bytes);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) {
      return resource_exhausted(fmt::format("cuda: cannot allocate {} bytes of device memory", bytes));
    }
    return status_from_cuda(e, "cudaMalloc", __FILE__, __LINE__);
  }
  return DevicePtr(p);
}

Result<PinnedPtr> pinned_alloc(size_t bytes, unsigned flags) {
  if (bytes == 0) return PinnedPtr(nullptr);
  void* p = nullptr;
  const cudaError_t e = cudaHostAlloc(&p, bytes, flags);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) {
      return resource_exhausted(fmt::format("cuda: cannot allocate {} bytes of pinned host memory", bytes));
    }
    return status_from_cuda(e, "cudaHostAlloc", __FILE__, __LINE__);
  }
  return PinnedPtr(p);
}

DeviceGuard::DeviceGuard(int device) {
  cudaError_t e = cudaGetDevice(&prev_);
  if (e == cudaSuccess && prev_ != device) {
    e = cudaSetDevice(device);
    switched_ = e == cudaSuccess;
  }
  if (e != cudaSuccess) status_ = status_from_cuda(e, "selecting the device", __FILE__, __LINE__);
}

DeviceGuard::~DeviceGuard() {
  if (switched_) (void)cudaSetDevice(prev_);
}

}  // namespace kvb::cuda
