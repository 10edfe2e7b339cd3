// Portable kernels over U4 / U8 quant panels (quant_panel.h): the scalar reference of the integer
// decode dot products that the AVX2 and AVX-512 VNNI files vectorize.
#include "kernels/cpu/quant_panel.h"

namespace kvb::cpu {
namespace {

inline void store(const float (*acc)[kPanel], int n, float* y, int64_t ldy, int nc, bool accumulate) {
  for (int r = 0; r < n; ++r) {
    for (int c = 0; c < nc; ++c) y[r * ldy + c] = accumulate ? y[r * ldy + c] + acc[r][c] : acc[r][c];
  }
}

void gemv_u4(const uint8_t* panel, int64_t k, const QuantizedRows& x, int n, float* y, int64_t ldy, int nc,
             bool accumulate) {
  float acc[kMaxGemvRows][kPanel] = {};
  for (int64_t g = 0; g < k / 32; ++g) {
    const uint8_t* group = panel + size_t(g) * kU4GroupBytes;
    const auto* s = reinterpret_cast<const float*>(group);
    const float* m = s + kPanel;
    const uint8_t* q = group + 2 * kPanel * sizeof(float);
    for (int i = 0; i < n; ++i) {
      const int8_t* xq = x.q + i * k + g * 32;
      const float dx = x.d[i * (k / 32) + g];
      const float sx = x.sum16[i * (k / 16) + 2 * g] + x.sum16[i * (k / 16) + 2 * g + 1];
      for (int c = 0; c < kPanel; ++c) {
        int32_t dot = 0;
        for (int o = 0; o < 4; ++o) {
          for (int b = 0; b < 4; ++b) {
            const uint8_t v = q[(o * kPanel + c) * 4 + b];
            dot += int32_t(v & 0x0F) * xq[8 * o + b] + int32_t(v >> 4) * xq[8 * o + 4 + b];
          }
        }
        acc[i][c] += s[c] * (dx * float(dot)) + m[c] * sx;
      }
    }
  }
  store(acc, n, y, ldy, nc, accumulate);
}

void gemv_u8(const uint8_t* panel, int64_t k, const QuantizedRows& x, int n, float* y, int64_t ldy, int nc,
             bool accumulate) {
  float acc[kMaxGemvRows][kPanel] = {};
  for (int64_t g = 0; g < k / 32; ++g) {
    const uint8_t* group = panel + size_t(g) * kU8GroupBytes;
    const auto* f = reinterpret_cast<const float*>(group);
    const uint8_t* q = group + 4 * kPanel * sizeof(float);
    for (int i = 0; i < n; ++i) {
      const int8_t* xq = x.q + i * k + g * 32;
      const float dx = x.d[i * (k / 32) + g];
      for (int h = 0; h < 2; ++h) {
        const float sx = x.sum16[i * (k / 16) + 2 * g + h];
        for (int c = 0; c < kPanel; ++c) {
          int32_t dot = 0;
          for (int j = 4 * h; j < 4 * h + 4; ++j) {
            for (int b = 0; b < 4; ++b) dot += int32_t(q[(j * kPanel + c) * 4 + b]) * xq[4 * j + b];
          }
          acc[i][c] += f[h * kPanel + c] * (dx * float(dot)) + f[2 * kPanel + h * kPanel + c] * sx;
        }
      }
    }
  }
  store(acc, n, y, ldy, nc, accumulate);
}

}  // namespace

const QuantKernels& quant_kernels_generic() {
  static const QuantKernels k{"generic", {gemv_u4, gemv_u8}, quantize_rows};
  return k;
}

}  // namespace kvb::cpu
