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

}  // namespace kvb
