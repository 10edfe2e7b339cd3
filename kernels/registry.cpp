#include "kernels/registry.h"

#include <fmt/format.h>

#include "kernels/cpu/cpu_backend.h"
#if KVBRIDGE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace kvb {

const Device& cpu_device() { return cpu::device(); }

std::vector<const Device*> available_devices() {
  std::vector<const Device*> out{&cpu_device()};
#if KVBRIDGE_CUDA
  const auto& cuda = cuda::discover().devices;
  out.insert(out.end(), cuda.begin(), cuda.end());
#endif
  return out;
}

namespace {

std::string device_names() {
  std::string names;
  for (const Device* d : available_devices()) names += (names.empty() ? "" : ", ") + d->name();
  return names;
}

#if KVBRIDGE_CUDA
// "cuda" → 0, "cuda:N" → N (decimal, at most 6 digits); -1 for anything else.
int cuda_ordinal(std::string_view name) {
  if (name == "cuda") return 0;
  if (!name.starts_with("cuda:")) return -1;
  const std::string_view digits = name.substr(5);
  if (digits.empty() || digits.size() > 6) return -1;
  int n = 0;
  for (char c : digits) {
    if (c < '0' || c > '9') return -1;
    n = n * 10 + (c - '0');
  }
  return n;
}
#endif

}  // namespace

Result<const Device*> find_device(std::string_view name) {
  if (name == "cpu") return &cpu_device();
#if KVBRIDGE_CUDA
  if (const int ordinal = cuda_ordinal(name); ordinal >= 0) {
    const cuda::Discovery& found = cuda::discover();
    const std::string want = fmt::format("cuda:{}", ordinal);
    for (const Device* d : found.devices) {
      if (d->name() == want) return d;
    }
    if (found.devices.empty()) {
      return unavailable(fmt::format("device '{}': no usable CUDA device: {}", name, found.problem));
    }
    return not_found(fmt::format("device '{}' does not exist (available: {}){}{}", name, device_names(),
                                 found.problem.empty() ? "" : "; ", found.problem));
  }
#else
  if (name.starts_with("cuda")) {
    return unavailable(fmt::format("device '{}': kvbridge was built without CUDA (-DKVBRIDGE_CUDA=ON)", name));
  }
#endif
  return not_found(fmt::format("unknown device '{}' (available: {})", name, device_names()));
}

const BufferType& host_staging_buffer_type(const Device& d) {
#if KVBRIDGE_CUDA
  if (const BufferType* pinned = cuda::host_buffer_type(d)) return *pinned;
#endif
  return d.buffer_type().is_host() ? d.buffer_type() : cpu_device().buffer_type();
}

}  // namespace kvb
