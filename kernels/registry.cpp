#include "kernels/registry.h"

#include <fmt/format.h>

#include "kernels/cpu/cpu_backend.h"

namespace kvb {

const Device& cpu_device() { return cpu::device(); }

std::vector<const Device*> available_devices() {
  std::vector<const Device*> out{&cpu_device()};
  return out;
}

Result<const Device*> find_device(std::string_view name) {
  if (name == "cpu") return &cpu_device();
  if (name.starts_with("cuda")) {
#if KVBRIDGE_CUDA
    return not_found(fmt::format("device '{}': no CUDA device is usable on this machine", name));
#else
    return unavailable(fmt::format("device '{}': kvbridge was built without CUDA (-DKVBRIDGE_CUDA=ON)", name));
#endif
  }
  std::string names;
  for (const Device* d : available_devices()) names += (names.empty() ? "" : ", ") + d->name();
  return not_found(fmt::format("unknown device '{}' (available: {})", name, names));
}

}  // namespace kvb
