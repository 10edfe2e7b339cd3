// The CPU implementation of the backend interface (kernels/backend.h).
//
// Host memory, a persistent worker pool (the calling thread is worker 0), and per-ISA kernels
// chosen once at startup: AVX-512, AVX2+FMA, or portable C++. KVBRIDGE_CPU_ISA=avx512|avx2|generic
// forces a lower level (tests use it to compare ISA paths on one machine).
#pragma once

#include <string_view>

#include "kernels/backend.h"

namespace kvb::cpu {

enum class Isa { kGeneric, kAvx2, kAvx512 };
std::string_view isa_name(Isa isa);
// The best ISA this CPU supports, lowered by KVBRIDGE_CPU_ISA if set.
Isa detected_isa();

// The process-wide CPU device.
const Device& device();

// A CPU backend pinned to one ISA (tests compare ISA paths against each other). `isa` must not be
// above detected_isa() (INVALID_ARGUMENT otherwise).
Result<std::unique_ptr<Backend>> create_backend(Isa isa, int n_threads);

}  // namespace kvb::cpu
