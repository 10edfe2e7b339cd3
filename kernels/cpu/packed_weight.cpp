#include "kernels/cpu/packed_weight.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/quant_panel.h"
#include "kernels/cpu/thread_pool.h"

namespace kvb::cpu {
namespace {

// Transposes 32 rows x [k0, k1) of a plain (2- or 4-byte) matrix into panel[k][r]; pad rows are 0.
template <class T>
void pack_plain_panel(const T* w, int64_t n_out, int64_t n_in, int64_t p, T* panel) {
  constexpr int64_t kKBlock = 64;  // keeps the 32 source row segments in L1 while transposing
  for (int64_t k0 = 0; k0 < n_in; k0 += kKBlock) {
    const int64_t k1 = std::min(n_in, k0 + kKBlock);
    for (int r = 0; r < kPanel; ++r) {
      const int64_t row = p * kPanel + r;
      if (row < n_out) {
        const T* src = w + row * n_in;
        for (int64_t k = k0; k < k1; ++k) panel[k * kPanel + r] = src[k];
      } else {
        for (int64_t k = k0; k < k1; ++k) panel[k * kPanel + r] = T(0);
      }
    }
  }
}

void pack_q8_panel(const BlockQ8_0* w, int64_t n_out, int64_t n_in, int64_t p, uint8_t* panel) {
  const int64_t n_groups = n_in / kQ8BlockSize;
  for (int64_t g = 0; g < n_groups; ++g) {
    uint8_t* group = panel + size_t(g) * kQ8GroupBytes;
    auto* d = reinterpret_cast<uint16_t*>(group);
    auto* q = reinterpret_cast<int8_t*>(group + kPanel * 2);
    for (int r = 0; r < kPanel; ++r) {
      const int64_t row = p * kPanel + r;
      if (row < n_out) {
        const BlockQ8_0& b = w[row * n_groups + g];
        d[r] = b.d;
        for (int kk = 0; kk < kQ8BlockSize; ++kk) q[kk * kPanel + r] = b.qs[kk];
      } else {
        d[r] = 0;
        for (int kk = 0; kk < kQ8BlockSize; ++kk) q[kk * kPanel + r] = 0;
      }
    }
  }
}

}  // namespace

size_t packed_panel_bytes(DType t, int64_t n_in) {
  if (t == DType::kQ8_0) return size_t(n_in / kQ8BlockSize) * kQ8GroupBytes;
  if (const int f = quant_format(t); f >= 0) return size_t(n_in / 32) * quant_group_bytes(f);
  return size_t(n_in) * kPanel * dtype_block_bytes(t);
}

PackedWeight::PackedWeight(DType t, int64_t n_out, int64_t n_in)
    : dtype_(t),
      n_out_(n_out),
      n_in_(n_in),
      n_panels_((n_out + kPanel - 1) / kPanel),
      panel_bytes_(packed_panel_bytes(t, n_in)) {}

Result<std::unique_ptr<PackedWeight>> PackedWeight::pack(const Tensor& host, ThreadPool* pool) {
  const DType t = host.dtype;
  if (t != DType::kF32 && t != DType::kF16 && t != DType::kBF16 && t != DType::kQ8_0 && quant_format(t) < 0) {
    return unimplemented(fmt::format("upload_weight: dtype {} is not supported by the CPU backend", dtype_name(t)));
  }
  if (host.n_dims != 2 || host.shape[0] <= 0 || host.shape[1] <= 0) {
    return invalid_argument(fmt::format("upload_weight: expected a [n_out][n_in] matrix, got {}", host.describe()));
  }
  if (host.data == nullptr) return invalid_argument("upload_weight: null data");
  const int64_t n_out = host.shape[0];
  const int64_t n_in = host.shape[1];
  if (n_in % dtype_block_size(t) != 0) {
    return invalid_argument(fmt::format("upload_weight: {} n_in = {} is not a multiple of {}", dtype_name(t), n_in,
                                        dtype_block_size(t)));
  }
  if (n_in > (int64_t(1) << 40) / kPanel || n_out > (int64_t(1) << 40)) {
    return invalid_argument(fmt::format("upload_weight: matrix {} is too large", host.describe()));
  }

  std::unique_ptr<PackedWeight> w(new PackedWeight(t, n_out, n_in));
  if (!w->data_.allocate(w->nbytes())) {
    return resource_exhausted(fmt::format("upload_weight: cannot allocate {} bytes", w->nbytes()));
  }
  PackedWeight* pw = w.get();
  auto pack_range = [&](int64_t begin, int64_t end, int) {
    for (int64_t p = begin; p < end; ++p) {
      uint8_t* panel = pw->data_.as<uint8_t>() + size_t(p) * pw->panel_bytes_;
      switch (t) {
        case DType::kF32:
          pack_plain_panel(host.as<const uint32_t>(), n_out, n_in, p, reinterpret_cast<uint32_t*>(panel));
          break;
        case DType::kF16:
        case DType::kBF16:
          pack_plain_panel(host.as<const uint16_t>(), n_out, n_in, p, reinterpret_cast<uint16_t*>(panel));
          break;
        case DType::kQ8_0:
          pack_q8_panel(host.as<const BlockQ8_0>(), n_out, n_in, p, panel);
          break;
        default:
          pack_quant_panel(t, host.as<const uint8_t>(), n_out, n_in, p, panel);
          break;
      }
    }
  };
  if (pool != nullptr) {
    pool->parallel_for(w->n_panels_, 4, pack_range);
  } else {
    pack_range(0, w->n_panels_, 0);
  }
  return w;
}

// Every kernel runs an output as one multiply-add chain in k order from y (or 0), except Q8_0's:
// its gemv scales each 32-block's integer-valued sum, its GEMM multiplies widened f32 tiles.
bool PackedWeight::mode_invariant() const { return dtype_ != DType::kQ8_0; }

}  // namespace kvb::cpu
