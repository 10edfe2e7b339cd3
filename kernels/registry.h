// Device discovery: the one place that knows which backends were compiled in.
#pragma once

#include <string_view>
#include <vector>

#include "kernels/backend.h"

namespace kvb {

// The host CPU device; always present. The returned device lives for the whole process.
const Device& cpu_device();

// Every usable device, CPU first. CUDA devices appear only when built with KVBRIDGE_CUDA and a
// driver and GPU are present. Thread-safe.
std::vector<const Device*> available_devices();

// "cpu", "cuda" (= "cuda:0") or "cuda:N". NOT_FOUND names the devices that exist;
// UNAVAILABLE when CUDA support was not compiled in.
Result<const Device*> find_device(std::string_view name);

// Host memory to stage `d`'s device memory through: pinned (page-locked) host memory for a CUDA
// device, so that copies to and from it run at full bus speed and copy_from_host/copy_to_host can
// overlap with compute; for a host device (the CPU), its own buffer type. Always is_host(). Lives
// for the whole process. Pinned allocations are slow (milliseconds per hundred MiB): keep buffers
// (e.g. a runtime::BufferPool over this type) rather than allocating one per copy.
const BufferType& host_staging_buffer_type(const Device& d);

}  // namespace kvb
