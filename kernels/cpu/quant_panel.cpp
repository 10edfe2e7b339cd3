#include "kernels/cpu/quant_panel.h"

#include <cmath>
#include <cstring>

#include "kernels/quants.h"
#include "kernels/status.h"

namespace kvb::cpu {
namespace {

constexpr size_t round_up64(size_t n) { return (n + 63) / 64 * 64; }

// Writes group bytes for row r from one 32-input slice of affine values (q[32], s[2], m[2]).
void put_u4(uint8_t* group, int r, const uint8_t* q, const float* s, const float* m) {
  auto* f = reinterpret_cast<float*>(group);
  f[r] = s[0];
  f[kPanel + r] = m[0];
  uint8_t* qb = group + 2 * kPanel * sizeof(float);
  for (int o = 0; o < 4; ++o) {
    for (int b = 0; b < 4; ++b) qb[(o * kPanel + r) * 4 + b] = uint8_t(q[8 * o + b] | (q[8 * o + 4 + b] << 4));
  }
}

void put_u8(uint8_t* group, int r, const uint8_t* q, const float* s, const float* m) {
  auto* f = reinterpret_cast<float*>(group);
  for (int h = 0; h < 2; ++h) {
    f[h * kPanel + r] = s[h];
    f[2 * kPanel + h * kPanel + r] = m[h];
  }
  uint8_t* qb = group + 4 * kPanel * sizeof(float);
  for (int j = 0; j < 8; ++j) {
    for (int b = 0; b < 4; ++b) qb[(j * kPanel + r) * 4 + b] = q[4 * j + b];
  }
}

}  // namespace

int quant_format(DType t) {
  if (!is_gguf_quant(t)) return -1;
  return affine_bits(t) == 4 ? 0 : 1;
}

void pack_quant_panel(DType t, const uint8_t* w, int64_t n_out, int64_t n_in, int64_t p, uint8_t* panel) {
  const int format = quant_format(t);
  KVB_ASSERT(format >= 0, "pack_quant_panel: not a GGUF block type");
  const size_t group_bytes = quant_group_bytes(format);
  const int bs = dtype_block_size(t);
  const size_t block_bytes = dtype_block_bytes(t);
  const int64_t n_blocks = n_in / bs;
  std::memset(panel, 0, size_t(n_in / 32) * group_bytes);
  uint8_t q[kQKK];
  float s[kQKK / kAffineSub], m[kQKK / kAffineSub];
  for (int r = 0; r < kPanel && p * kPanel + r < n_out; ++r) {
    const uint8_t* row = w + size_t(p * kPanel + r) * size_t(n_blocks) * block_bytes;
    for (int64_t b = 0; b < n_blocks; ++b) {
      decode_affine(t, row + size_t(b) * block_bytes, q, s, m);
      for (int gi = 0; gi < bs / 32; ++gi) {
        uint8_t* group = panel + size_t(b * (bs / 32) + gi) * group_bytes;
        if (format == 0) {
          put_u4(group, r, q + 32 * gi, s + 2 * gi, m + 2 * gi);
        } else {
          put_u8(group, r, q + 32 * gi, s + 2 * gi, m + 2 * gi);
        }
      }
    }
  }
}

size_t quantized_rows_bytes(int n, int64_t k) {
  return round_up64(size_t(n) * size_t(k)) + round_up64(size_t(n) * size_t(k / 32) * sizeof(float)) +
         round_up64(size_t(n) * size_t(k / 16) * sizeof(float));
}

QuantizedRowsStorage quantized_rows_storage(int n, int64_t k, void* storage) {
  auto* base = static_cast<uint8_t*>(storage);
  auto* d = reinterpret_cast<float*>(base + round_up64(size_t(n) * size_t(k)));
  auto* sum16 = reinterpret_cast<float*>(reinterpret_cast<uint8_t*>(d) + round_up64(size_t(n) * size_t(k / 32) * sizeof(float)));
  return {reinterpret_cast<int8_t*>(base), d, sum16};
}

GroupScale group_scale(float amax) {
  const float d32 = amax / 127.0f;
  return {d32 != 0.0f ? 1.0f / d32 : 0.0f, fp16_to_fp32(fp32_to_fp16(d32))};
}

QuantizedRows quantize_rows(const float* x, int64_t ldx, int n, int64_t k, void* storage) {
  const QuantizedRowsStorage out = quantized_rows_storage(n, k, storage);
  for (int i = 0; i < n; ++i) {
    for (int64_t g = 0; g < k / 32; ++g) {
      const float* xs = x + i * ldx + g * 32;
      float amax = 0;
      for (int j = 0; j < 32; ++j) {
        const float a = std::fabs(xs[j]);
        amax = a > amax ? a : amax;  // std::fmax's NaN rules keep it from vectorizing
      }
      const GroupScale gs = group_scale(amax);
      int8_t* qs = out.q + i * k + g * 32;
      int sums[2] = {0, 0};
      for (int j = 0; j < 32; ++j) {
        // Round to nearest even, as std::nearbyint in the default mode but inline: |x * inv| <= 127,
        // so adding 1.5 * 2^23 (where floats are whole numbers) rounds, and subtracting it is exact.
        constexpr float kRound = 12582912.0f;
        qs[j] = int8_t((xs[j] * gs.inv + kRound) - kRound);
        sums[j / 16] += qs[j];
      }
      out.d[i * (k / 32) + g] = gs.d;
      out.sum16[i * (k / 16) + 2 * g] = gs.d * float(sums[0]);
      out.sum16[i * (k / 16) + 2 * g + 1] = gs.d * float(sums[1]);
    }
  }
  return QuantizedRows{out.q, out.d, out.sum16, k};
}

}  // namespace kvb::cpu
