// Internal to transport/cuda/: CUDA runtime errors as Status (the one place they are converted).
#pragma once

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <string_view>

#include "kernels/status.h"

namespace kvb::transport::cuda_detail {

inline Status cuda_status(cudaError_t e, std::string_view what) {
  if (e == cudaSuccess) return Status::Ok();
  const StatusCode code = e == cudaErrorInvalidValue || e == cudaErrorInvalidDevicePointer ? StatusCode::kInvalidArgument
                          : e == cudaErrorMemoryAllocation                                  ? StatusCode::kResourceExhausted
                          : e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver      ? StatusCode::kFailedPrecondition
                                                                                             : StatusCode::kInternal;
  return Status(code, fmt::format("{}: {} ({})", what, cudaGetErrorString(e), cudaGetErrorName(e)));
}

// Makes `device` current on this thread for a scope and restores the caller's device afterwards
// (transport calls run on the caller's threads too: they must not move them to another device).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    if (cudaGetDevice(&prev_) != cudaSuccess) prev_ = -1;
    if (prev_ != device) (void)cudaSetDevice(device);
  }
  ~DeviceGuard() {
    int now = -1;
    if (prev_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != prev_) (void)cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = -1;
};

}  // namespace kvb::transport::cuda_detail

#define KVB_CUDA_RETURN_IF_ERROR(call, what) KVB_RETURN_IF_ERROR(::kvb::transport::cuda_detail::cuda_status((call), (what)))
