// Portable C++ matmul kernels (any CPU). Plain loops over the 32 columns of a panel, which compilers
// vectorize with the baseline SIMD of the target (SSE2, NEON).
#include "kernels/cpu/gemm.h"

#include <algorithm>

namespace kvb::cpu {
namespace {

constexpr int kMr = 4;

// Row k of a plain panel as 32 floats.
template <int kType>
inline void load_row(const uint8_t* panel, int64_t k, float* out) {
  if constexpr (kType == 0) {
    const float* p = reinterpret_cast<const float*>(panel) + k * kPanel;
    for (int c = 0; c < kPanel; ++c) out[c] = p[c];
  } else if constexpr (kType == 1) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(panel) + k * kPanel;
    for (int c = 0; c < kPanel; ++c) out[c] = fp16_to_fp32(p[c]);
  } else {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(panel) + k * kPanel;
    for (int c = 0; c < kPanel; ++c) out[c] = bf16_to_fp32(p[c]);
  }
}

inline void store_rows(const float (*acc)[kPanel], int n, float* y, int64_t ldy, int nc, bool accumulate) {
  for (int r = 0; r < n; ++r) {
    float* yr = y + r * ldy;
    if (accumulate) {
      for (int c = 0; c < nc; ++c) yr[c] += acc[r][c];
    } else {
      for (int c = 0; c < nc; ++c) yr[c] = acc[r][c];
    }
  }
}

template <int kType>
void gemv_plain(const uint8_t* panel, int64_t k, const float* x, int64_t ldx, int n, float* y, int64_t ldy, int nc,
                bool accumulate) {
  // One chain per output, starting from y when accumulating, as micro's does (mode_invariant).
  float acc[kMaxGemvRows][kPanel] = {};
  for (int r = 0; r < n && accumulate; ++r) std::copy_n(y + r * ldy, nc, acc[r]);
  float w[kPanel];
  for (int64_t kk = 0; kk < k; ++kk) {
    load_row<kType>(panel, kk, w);
    for (int r = 0; r < n; ++r) {
      const float xv = x[r * ldx + kk];
      for (int c = 0; c < kPanel; ++c) acc[r][c] += xv * w[c];
    }
  }
  store_rows(acc, n, y, ldy, nc, false);
}

void gemv_q8(const uint8_t* panel, int64_t k, const float* x, int64_t ldx, int n, float* y, int64_t ldy, int nc,
             bool accumulate) {
  float acc[kMaxGemvRows][kPanel] = {};
  for (int64_t g = 0; g < k / kQ8BlockSize; ++g) {
    const uint8_t* group = panel + size_t(g) * kQ8GroupBytes;
    const auto* d16 = reinterpret_cast<const uint16_t*>(group);
    const auto* q = reinterpret_cast<const int8_t*>(group + kPanel * 2);
    float d[kPanel];
    for (int c = 0; c < kPanel; ++c) d[c] = fp16_to_fp32(d16[c]);
    for (int r = 0; r < n; ++r) {
      const float* xr = x + r * ldx + g * kQ8BlockSize;
      float blk[kPanel] = {};
      for (int kk = 0; kk < kQ8BlockSize; ++kk) {
        for (int c = 0; c < kPanel; ++c) blk[c] += xr[kk] * float(q[kk * kPanel + c]);
      }
      for (int c = 0; c < kPanel; ++c) acc[r][c] += d[c] * blk[c];
    }
  }
  store_rows(acc, n, y, ldy, nc, accumulate);
}

template <int kType>
void unpack_plain(const uint8_t* panel, int64_t k0, int64_t kc, float* tile) {
  for (int64_t kk = 0; kk < kc; ++kk) load_row<kType>(panel, k0 + kk, tile + kk * kPanel);
}

void unpack_q8(const uint8_t* panel, int64_t k0, int64_t kc, float* tile) {
  for (int64_t g = k0 / kQ8BlockSize; g < (k0 + kc) / kQ8BlockSize; ++g) {
    const uint8_t* group = panel + size_t(g) * kQ8GroupBytes;
    const auto* d16 = reinterpret_cast<const uint16_t*>(group);
    const auto* q = reinterpret_cast<const int8_t*>(group + kPanel * 2);
    float d[kPanel];
    for (int c = 0; c < kPanel; ++c) d[c] = fp16_to_fp32(d16[c]);
    for (int kk = 0; kk < kQ8BlockSize; ++kk) {
      float* t = tile + (g * kQ8BlockSize + kk - k0) * kPanel;
      for (int c = 0; c < kPanel; ++c) t[c] = d[c] * float(q[kk * kPanel + c]);
    }
  }
}

void micro(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int m, int nc, bool load_c,
           const uint8_t* pf, size_t pf_bytes) {
  for (size_t line = 0; line < pf_bytes; line += 64) __builtin_prefetch(pf + line, 0, 3);
  // Each output's chain continues from c (load_c), as gemv_plain's starts from y: the same bits
  // in every RowMode and for any k blocking.
  float acc[kMr][kPanel] = {};
  for (int i = 0; i < m && load_c; ++i) std::copy_n(c + i * ldc, nc, acc[i]);
  for (int64_t kk = 0; kk < kc; ++kk) {
    const float* bk = b + kk * kPanel;
    for (int i = 0; i < kMr; ++i) {
      const float av = a[kk * kMr + i];
      for (int j = 0; j < kPanel; ++j) acc[i][j] += av * bk[j];
    }
  }
  for (int i = 0; i < m; ++i) std::copy_n(acc[i], nc, c + i * ldc);
}

}  // namespace

const GemmKernels& gemm_kernels_generic() {
  // Aggregate initialization: no (shared, inline) constructor of GemmKernels runs in this TU.
  static const GemmKernels k{"generic",
                             kMr,
                             {gemv_plain<0>, gemv_plain<1>, gemv_plain<2>, gemv_q8},
                             {unpack_plain<0>, unpack_plain<1>, unpack_plain<2>, unpack_q8},
                             micro,
                             nullptr};
  return k;
}

}  // namespace kvb::cpu
