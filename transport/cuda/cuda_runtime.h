// The few CUDA runtime facts the transports and the agents' negotiation need (cudart only; never
// the driver API, never libcuda at link time). Part of kvbridge::transport_cuda.
//
// Without a driver or a GPU every query answers "none" (0 devices, errors naming the cause); none
// aborts. Thread-safe.
#pragma once

#include <string>

#include "kernels/status.h"
#include "transport/select.h"

namespace kvb::transport {

// Usable CUDA devices: 0 when there is no driver, no GPU, or only a stub library.
int cuda_device_count();
// One line on why there is no device (the runtime's error), for logs and test skips; empty when
// cuda_device_count() > 0.
std::string cuda_unavailable_reason();
// The device's UUID as nvidia-smi prints it ("GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx").
// FAILED_PRECONDITION for a device that does not exist.
Result<std::string> cuda_device_uuid(int device);
// cudaDeviceCanAccessPeer(device, peer); false on any error.
bool cuda_peer_access(int device, int peer);
// This agent's EndpointInfo for caches on `device`: host id, GPU UUID, cuda_ipc (the device
// supports IPC). `nccl` is left false: the caller sets it when transport_nccl is linked and
// NcclTransport::available().
Result<EndpointInfo> cuda_endpoint_info(int device);

}  // namespace kvb::transport
