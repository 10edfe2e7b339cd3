// Synthetic fusers: a fuser directory with seeded random weights, for tests and benchmarks.
//
// Weights follow torch's default init so activations stay O(1): a Linear [out][in] and its bias are
// U(-1/sqrt(in), 1/sqrt(in)); RMSNorm weights are 1 + U(-0.1, 0.1); gate logits are +1 (on) or -1
// (off) by GatePattern. The same (cfg, seed) always gives the same bytes; each tensor's values
// depend only on the seed and its name.
#pragma once

#include <cstdint>
#include <string>

#include "fuser/fuser_config.h"
#include "kernels/status.h"

namespace kvb::fuser {

enum class GatePattern {
  kAllOn,
  kAllOff,
  // By receiver layer t % 4: 0 both on, 1 K only, 2 V only, 3 both off.
  kAlternate,
};

// Whether branch (layer, is_v) is gated on under `gates`.
bool synthetic_gate_on(GatePattern gates, int32_t layer, bool is_v);

// Writes dir/config.json (cfg; an empty layer_map is filled in for "last_aligned") and
// dir/<cfg.weights_file> in cfg.dtype, creating dir if needed. Tensors are generated and written in
// pieces of 4 MiB, so a Qwen-sized fuser (~0.5 G parameters) needs little memory.
// INVALID_ARGUMENT for a bad cfg; UNAVAILABLE on an I/O error.
Status write_synthetic_fuser(const std::string& dir, const FuserConfig& cfg, uint64_t seed, GatePattern gates);

}  // namespace kvb::fuser
