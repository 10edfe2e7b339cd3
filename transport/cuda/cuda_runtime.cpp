#include "transport/cuda/cuda_runtime.h"

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include "transport/cuda/cuda_status.h"
#include "transport/metadata.h"

namespace kvb::transport {

using cuda_detail::cuda_status;

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();  // reset the runtime's last error
    return 0;
  }
  return n;
}

std::string cuda_unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    return fmt::format("no usable CUDA device: {} ({})", cudaGetErrorString(e), cudaGetErrorName(e));
  }
  return n == 0 ? "no CUDA device" : "";
}

Result<std::string> cuda_device_uuid(int device) {
  if (device < 0 || device >= cuda_device_count()) {
    return failed_precondition(fmt::format("no CUDA device {} ({} present)", device, cuda_device_count()));
  }
  cudaDeviceProp prop{};
  KVB_CUDA_RETURN_IF_ERROR(cudaGetDeviceProperties(&prop, device), fmt::format("cudaGetDeviceProperties({})", device));
  const auto* u = reinterpret_cast<const unsigned char*>(prop.uuid.bytes);
  return fmt::format("GPU-{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
                     u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11], u[12], u[13], u[14],
                     u[15]);
}

bool cuda_peer_access(int device, int peer) {
  int can = 0;
  if (cudaDeviceCanAccessPeer(&can, device, peer) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return can != 0;
}

Result<EndpointInfo> cuda_endpoint_info(int device) {
  EndpointInfo info;
  info.host_id = local_host_id();
  KVB_ASSIGN_OR_RETURN(info.gpu_uuid, cuda_device_uuid(device));
  int ipc = 0;
  if (cudaDeviceGetAttribute(&ipc, cudaDevAttrIpcEventSupport, device) != cudaSuccess) {
    (void)cudaGetLastError();
    ipc = 0;
  }
  info.cuda_ipc = ipc != 0;
  return info;
}

}  // namespace kvb::transport
