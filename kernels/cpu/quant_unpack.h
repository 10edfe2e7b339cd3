// The prefill widening of U4 / U8 quant panels (quant_panel.h) to f32 tiles, written as plain loops
// over the 32 rows so that each ISA's translation unit vectorizes them with its own instructions.
// Internal to the gemm_quant_*.cpp files: everything is in an anonymous namespace, so no copy built
// for one ISA can be linked into another's callers.
#pragma once

#include <cstdint>
#include <cstring>

#include "kernels/cpu/quant_panel.h"

namespace kvb::cpu {
namespace {

// tile[kk][c] = s[c] * q + m[c] for the inputs [k0, k0 + kc) of a U4 panel (k0, kc multiples of 32).
inline void unpack_u4_tiles(const uint8_t* panel, int64_t k0, int64_t kc, float* tile) {
  for (int64_t g = k0 / 32; g < (k0 + kc) / 32; ++g) {
    const uint8_t* group = panel + size_t(g) * kU4GroupBytes;
    const auto* s = reinterpret_cast<const float*>(group);
    const float* m = s + kPanel;
    float* t = tile + (g * 32 - k0) * kPanel;
    for (int o = 0; o < 4; ++o) {
      uint32_t w[kPanel];
      std::memcpy(w, group + 2 * kPanel * sizeof(float) + size_t(o) * kPanel * 4, sizeof(w));
      for (int b = 0; b < 8; ++b) {
        const int shift = 8 * (b % 4) + 4 * (b / 4);
        float* row = t + (8 * o + b) * kPanel;
        for (int c = 0; c < kPanel; ++c) row[c] = s[c] * float((w[c] >> shift) & 0x0F) + m[c];
      }
    }
  }
}

inline void unpack_u8_tiles(const uint8_t* panel, int64_t k0, int64_t kc, float* tile) {
  for (int64_t g = k0 / 32; g < (k0 + kc) / 32; ++g) {
    const uint8_t* group = panel + size_t(g) * kU8GroupBytes;
    const auto* f = reinterpret_cast<const float*>(group);
    float* t = tile + (g * 32 - k0) * kPanel;
    for (int j = 0; j < 8; ++j) {
      const float* s = f + (j / 4) * kPanel;
      const float* m = f + 2 * kPanel + (j / 4) * kPanel;
      uint32_t w[kPanel];
      std::memcpy(w, group + 4 * kPanel * sizeof(float) + size_t(j) * kPanel * 4, sizeof(w));
      for (int b = 0; b < 4; ++b) {
        float* row = t + (4 * j + b) * kPanel;
        for (int c = 0; c < kPanel; ++c) row[c] = s[c] * float((w[c] >> (8 * b)) & 0xFF) + m[c];
      }
    }
  }
}

}  // namespace
}  // namespace kvb::cpu
