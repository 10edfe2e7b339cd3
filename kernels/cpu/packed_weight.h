// PackedWeight: the CPU backend's Weight, a matrix w[n_out][n_in] re-laid out for the GEMM/GEMV
// kernels while keeping its stored element type (F16 stays 2 bytes, Q8_0 stays 34 bytes / 32).
//
// Layout (one for every ISA, so any kernel can read any weight):
//   The n_out rows are cut into panels of kPanel = 32 consecutive output rows; the last panel is
//   zero-padded to 32 rows. Panels are stored one after another, each `panel_bytes()` long and
//   64-byte aligned, and a panel covers the whole k range:
//     F32 / F16 / BF16:  panel[k][r] = w[32p + r][k]          (K rows of 32 elements)
//     Q8_0:              for each group g of 32 k's (K/32 groups, 1088 bytes each):
//                          uint16 d[32]      f16 scale of row r's ggml block g
//                          int8   q[32][32]  q[kk][r] = row r's block g, element kk
//     Q4_0 ... Q6_K:     the U4 / U8 groups of quant_panel.h
//   So the 32 outputs of a panel are contiguous at every k: a kernel broadcasts x[k] and does one
//   multiply-add per 16 (AVX-512) or 8 (AVX2) outputs, with no horizontal sums, and a decode GEMV
//   reads each panel as one sequential stream.
//
// Ownership: the PackedWeight owns its memory; the host matrix may be freed after pack().
// Thread-safety: immutable after construction; any number of threads may read it.
#pragma once

#include <cstdint>
#include <memory>

#include "kernels/backend.h"
#include "kernels/cpu/aligned_buffer.h"
#include "kernels/cpu/gemm.h"  // kPanel, kQ8GroupBytes

namespace kvb::cpu {

class ThreadPool;

class PackedWeight final : public Weight {
 public:
  // Packs host [n_out][n_in] (F32, F16, BF16, Q8_0 or a GGUF block type of quants.h). INVALID_ARGUMENT
  // for a bad shape (n_in not whole blocks),
  // UNIMPLEMENTED for another dtype, RESOURCE_EXHAUSTED when out of memory. `pool` (optional)
  // parallelizes the copy.
  static Result<std::unique_ptr<PackedWeight>> pack(const Tensor& host, ThreadPool* pool);

  int64_t n_out() const override { return n_out_; }
  int64_t n_in() const override { return n_in_; }
  DType dtype() const override { return dtype_; }
  size_t nbytes() const override { return size_t(n_panels_) * panel_bytes_; }
  // True but for Q8_0: GGUF block types take the integer kernels in every mode (matmul.cpp), and
  // F32/F16/BF16's gemv and GEMM run each output as the same multiply-add chain (gemm.h).
  bool mode_invariant() const override;

  int64_t n_panels() const { return n_panels_; }
  size_t panel_bytes() const { return panel_bytes_; }
  const uint8_t* panel(int64_t p) const { return data_.as<const uint8_t>() + size_t(p) * panel_bytes_; }

 private:
  PackedWeight(DType t, int64_t n_out, int64_t n_in);

  DType dtype_;
  int64_t n_out_;
  int64_t n_in_;
  int64_t n_panels_;
  size_t panel_bytes_;
  AlignedBuffer data_;
};

// Bytes of one packed panel covering n_in inputs.
size_t packed_panel_bytes(DType t, int64_t n_in);

}  // namespace kvb::cpu
