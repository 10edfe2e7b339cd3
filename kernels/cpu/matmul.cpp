// matmul: y[n][n_out] (+)= x[n][n_in] · wᵀ for several packed weights sharing x, in one dispatch.
//
// Work is cut along output panels (32 outputs each, see packed_weight.h) of all weights together,
// so Q/K/V or gate/up run as one parallel loop. Two regimes:
//   n <= kMaxGemvRows, or any n with RowMode::kDecode (decode): each panel is streamed once through
//     the ISA's gemv kernel (rows in groups of kMaxGemvRows), which
//     converts the stored dtype in registers; the run is bound by memory bandwidth. For GGUF block
//     weights (quant_panel.h) x is first quantized to int8 per 32 inputs, once for all weights, and
//     the kernels take integer dot products. GGUF block weights take this regime for every n and
//     mode (faster than widening their blocks for the prefill regime, and mode-invariant).
//   larger n (prefill): BLIS-style. x is packed once into row blocks [k][mr]; then, per k block of
//     kKc, each panel's k block is (converted to an f32 tile if needed and) multiplied against every
//     row block by the register-blocked micro-kernel. Rows are grouped so the packed x
//     block in use stays in L2; when there are few panels, row groups also spread work over threads.
//     The next panel's weight block is prefetched while the current one is multiplied.
#include <fmt/format.h>

#include <algorithm>
#include <iterator>
#include <vector>

#include "kernels/cpu/ops.h"
#include "kernels/cpu/packed_weight.h"

namespace kvb::cpu {
namespace {

// Blocking, measured on the 2-core Xeon (48 KiB L1d, 2 MiB L2 per core) with n = 512 and the 110M
// shapes: a large k block matters most, because every k block reloads and re-stores the C tiles;
// the B block [kKc][32] (128 KiB f32) and the active A micro-panel stream from L2, which has the
// bandwidth for both at full FMA rate.
constexpr int64_t kKc = 1024;
// Row group: as many rows as keep their packed x block [rows][kc] within kMcBytes of L2, and at
// least kMcMinRows. Each group re-converts every F16/BF16/Q8_0 weight block, so fewer, larger
// groups convert less: at n = 512, k = 768 one group instead of two took F16 from 303 to 308
// GFLOP/s on 2 threads (F32, read in place, is unchanged).
constexpr size_t kMcBytes = size_t(7) << 18;  // 1.75 MiB of the 2 MiB L2
constexpr int64_t kMcMinRows = 256;

struct OutPanels {
  const PackedWeight* w;
  int type;  // weight_type_index, or kNumWeightTypes + quant_format for GGUF block weights
  float* y;
  int64_t ldy;
  bool accumulate;
  int64_t first_panel;  // index of this output's first panel in the global panel list
};

inline const OutPanels& find_out(const std::vector<OutPanels>& outs, int64_t g) {
  size_t i = 0;
  while (i + 1 < outs.size() && outs[i + 1].first_panel <= g) ++i;
  return outs[i];
}

// The bytes of panel p's k block [k0, k0 + kc) in its stored dtype.
inline const uint8_t* panel_k_block(const OutPanels& o, int64_t p, int64_t k0, int64_t kc, size_t& bytes) {
  if (o.type == 3) {
    bytes = size_t(kc / kQ8BlockSize) * kQ8GroupBytes;
    return o.w->panel(p) + size_t(k0 / kQ8BlockSize) * kQ8GroupBytes;
  }
  const size_t elem = o.type == 0 ? 4 : 2;
  bytes = size_t(kc) * kPanel * elem;
  return o.w->panel(p) + size_t(k0) * kPanel * elem;
}

// The portable GemmKernels::pack_x. Blocked along k so the strided stores of one block stay in L1
// (done naively, this transposition costs ~4% of a prefill matmul).
void pack_x_portable(const float* x, int64_t n, int64_t k, int mr, int64_t rb, float* dst) {
  constexpr int64_t kKPack = 64;
  float* d = dst + rb * mr * k;
  for (int64_t k0 = 0; k0 < k; k0 += kKPack) {
    const int64_t k1 = std::min(k, k0 + kKPack);
    for (int i = 0; i < mr; ++i) {
      const int64_t row = rb * mr + i;
      for (int64_t kk = k0; kk < k1; ++kk) d[kk * mr + i] = row < n ? x[row * k + kk] : 0.0f;
    }
  }
}

// Numbers the panels of `outs` from 0 in order (OutPanels::first_panel); returns their count.
int64_t renumber(std::vector<OutPanels>& outs) {
  int64_t first = 0;
  for (OutPanels& o : outs) {
    o.first_panel = first;
    first += o.w->n_panels();
  }
  return first;
}

Status validate(const Tensor& x, std::span<const MatmulOut> outs, std::vector<OutPanels>& panels) {
  KVB_RETURN_IF_ERROR(check_matmul_shapes(x, outs));
  KVB_RETURN_IF_ERROR(check_tensor(x, DType::kF32, "matmul", "x"));
  int64_t first = 0;
  for (size_t i = 0; i < outs.size(); ++i) {
    const MatmulOut& o = outs[i];
    const auto* w = dynamic_cast<const PackedWeight*>(o.w);
    if (w == nullptr) return invalid_argument("matmul: weight was not uploaded by a CPU backend");
    KVB_RETURN_IF_ERROR(check_tensor(o.y, DType::kF32, "matmul", "y"));
    if (tensors_overlap(o.y, x)) return invalid_argument(fmt::format("matmul: y[{}] overlaps x", i));
    for (size_t j = 0; j < i; ++j) {
      if (tensors_overlap(o.y, outs[j].y)) return invalid_argument(fmt::format("matmul: y[{}] overlaps y[{}]", i, j));
    }
    const int qf = quant_format(w->dtype());
    const int type = qf >= 0 ? kNumWeightTypes + qf : weight_type_index(w->dtype());
    panels.push_back({w, type, o.y.as<float>(), w->n_out(), o.accumulate, first});
    first += w->n_panels();
  }
  return Status::Ok();
}

// Any number of rows: each panel is read from memory once and multiplied against groups of up to
// kMaxGemvRows rows (the panel stays in L1/L2 between groups). Every gemv kernel keeps one
// accumulator chain per output whatever its row count, so a row's bits are those of the row alone
// (RowMode::kDecode batches sequences' decode tokens this way).
Status run_gemv(OpContext& ctx, const float* x, int64_t n, int64_t k, const std::vector<OutPanels>& outs,
                int64_t n_panels) {
  const GemmKernels& kern = *ctx.gemm;
  const QuantKernels& qkern = *ctx.quant;
  QuantizedRows xq;
  if (std::any_of(outs.begin(), outs.end(), [](const OutPanels& o) { return o.type >= kNumWeightTypes; })) {
    KVB_RETURN_IF_ERROR(ctx.scratch->reserve_shared(quantized_rows_bytes(int(n), k)));
    xq = qkern.quantize(x, k, int(n), k, ctx.scratch->shared());
  }
  // Several chunks per thread: a descheduled worker then holds back only a small part of the op.
  const int64_t chunk = std::max<int64_t>(1, n_panels / (int64_t(ctx.pool->n_threads()) * 8));
  ctx.pool->parallel_for(n_panels, chunk, [&](int64_t begin, int64_t end, int) {
    for (int64_t g = begin; g < end; ++g) {
      const OutPanels& o = find_out(outs, g);
      const int64_t p = g - o.first_panel;
      const int nc = int(std::min<int64_t>(kPanel, o.w->n_out() - p * kPanel));
      for (int64_t r = 0; r < n; r += kMaxGemvRows) {
        const int nr = int(std::min<int64_t>(kMaxGemvRows, n - r));
        float* y = o.y + r * o.ldy + p * kPanel;
        if (o.type >= kNumWeightTypes) {
          const QuantizedRows rows{xq.q + r * k, xq.d + r * (k / 32), xq.sum16 + r * (k / 16), k};
          qkern.gemv[o.type - kNumWeightTypes](o.w->panel(p), k, rows, nr, y, o.ldy, nc, o.accumulate);
        } else {
          kern.gemv[o.type](o.w->panel(p), k, x + r * k, k, nr, y, o.ldy, nc, o.accumulate);
        }
      }
    }
  });
  return Status::Ok();
}

Status run_gemm(OpContext& ctx, const float* x, int64_t n, int64_t k, const std::vector<OutPanels>& outs,
                int64_t n_panels) {
  const GemmKernels& kern = *ctx.gemm;
  ThreadPool& pool = *ctx.pool;
  const int n_threads = pool.n_threads();
  const int mr = kern.mr;
  const int64_t n_row_blocks = (n + mr - 1) / mr;

  KVB_RETURN_IF_ERROR(ctx.scratch->reserve_shared(size_t(n_row_blocks) * size_t(mr) * size_t(k) * sizeof(float)));
  KVB_RETURN_IF_ERROR(ctx.scratch->reserve_per_thread(n_threads, size_t(kKc) * kPanel * sizeof(float)));
  float* xp = ctx.scratch->shared();
  pool.parallel_for(n_row_blocks, std::max<int64_t>(1, n_row_blocks / (n_threads * 4)),
                    [&](int64_t begin, int64_t end, int) {
                      for (int64_t rb = begin; rb < end; ++rb) {
                        if (kern.pack_x != nullptr) {
                          kern.pack_x(x, n, k, rb, xp);
                        } else {
                          pack_x_portable(x, n, k, mr, rb, xp);
                        }
                      }
                    });

  // Row groups: whole multiples of mr rows, at most mc_rows each, of equal size (with 448 rows of
  // budget, 512 rows at mr 14 are 37 row blocks: two groups of 19 and 18 blocks rather than 32 + 5,
  // whose second group would reload or re-convert every weight block for five row blocks), and
  // enough groups to feed every thread when the weights have few panels.
  const int64_t mc_rows = std::max<int64_t>(kMcMinRows, int64_t(kMcBytes / (size_t(std::min(k, kKc)) * sizeof(float))));
  int64_t blocks_per_group = std::max<int64_t>(1, mc_rows / mr);
  int64_t n_groups = (n_row_blocks + blocks_per_group - 1) / blocks_per_group;
  if (n_groups * n_panels < 2 * n_threads) {
    n_groups = std::min(n_row_blocks, (2 * n_threads + n_panels - 1) / n_panels);
  }
  blocks_per_group = (n_row_blocks + n_groups - 1) / n_groups;
  n_groups = (n_row_blocks + blocks_per_group - 1) / blocks_per_group;
  const int64_t rows_per_group = blocks_per_group * mr;
  const int64_t n_items = n_groups * n_panels;
  // Small chunks (~16 per thread, at most 4 items): items are equally heavy (a 512-row item is
  // ~0.1-0.2 ms), so the op ends with at most one chunk of imbalance between threads; the next
  // panel's prefetch only crosses items within a chunk.
  const int64_t chunk = std::clamp<int64_t>(n_items / (int64_t(n_threads) * 16), 1, 4);

  pool.parallel_for(n_items, chunk, [&](int64_t begin, int64_t end, int tid) {
    float* tile = ctx.scratch->thread(tid);
    for (int64_t k0 = 0; k0 < k; k0 += kKc) {
      const int64_t kc = std::min(kKc, k - k0);
      for (int64_t item = begin; item < end; ++item) {
        const int64_t group = item / n_panels;
        const int64_t g = item % n_panels;
        const OutPanels& o = find_out(outs, g);
        const int64_t p = g - o.first_panel;
        const int nc = int(std::min<int64_t>(kPanel, o.w->n_out() - p * kPanel));
        const float* b;
        if (o.type == 0) {
          b = reinterpret_cast<const float*>(o.w->panel(p)) + k0 * kPanel;
        } else {
          kern.unpack[o.type](o.w->panel(p), k0, kc, tile);
          b = tile;
        }
        // While this panel is multiplied, pull the next item's weight block in (to L1: measured
        // faster than L2 here), a slice per row block, spread by the micro-kernel over its k loop,
        // so the next item's first micro-kernel (or unpack) does not wait on DRAM.
        const uint8_t* next = nullptr;
        size_t next_bytes = 0;
        if (item + 1 < end) {
          const int64_t gn = (item + 1) % n_panels;
          const OutPanels& on = find_out(outs, gn);
          next = panel_k_block(on, gn - on.first_panel, k0, kc, next_bytes);
        }
        const bool load_c = k0 > 0 || o.accumulate;
        const int64_t r0 = group * rows_per_group;
        const int64_t r1 = std::min(n, r0 + rows_per_group);
        const size_t slice = (next_bytes / size_t((r1 - r0 + mr - 1) / mr) + 63) / 64 * 64;
        for (int64_t r = r0; r < r1; r += mr) {
          const float* a = xp + r * k + k0 * mr;  // row block r / mr, k offset k0
          const size_t off = std::min(next_bytes, size_t((r - r0) / mr) * slice);
          const size_t pf_bytes = std::min(next_bytes - off, slice);
          kern.micro(kc, a, b, o.y + r * o.ldy + p * kPanel, o.ldy, int(std::min<int64_t>(mr, r1 - r)), nc, load_c,
                     pf_bytes > 0 ? next + off : nullptr, pf_bytes);
        }
      }
    }
  });
  return Status::Ok();
}

}  // namespace

Status matmul(OpContext& ctx, const Tensor& x, std::span<const MatmulOut> outs, RowMode mode) {
  std::vector<OutPanels> panels;
  panels.reserve(outs.size());
  KVB_RETURN_IF_ERROR(validate(x, outs, panels));
  const int64_t n = x.shape[0];
  const int64_t k = x.shape[1];
  if (n == 0 || panels.empty()) return Status::Ok();
  int64_t n_panels = panels.back().first_panel + panels.back().w->n_panels();
  // Block-quantized weights (4/5/6/3/2-bit panels) run every row through the integer kernels, in
  // any mode: int8 activations and byte dot products beat widening each block to f32 for a prompt
  // too (bench/gemm_bench quant: 1.07-1.22x at 512 rows, 1.3-1.7x at 32), and a row then computes
  // the same bits whatever mode or neighbours (PackedWeight::mode_invariant).
  const auto is_int = [](const OutPanels& o) { return o.type >= kNumWeightTypes; };
  const auto n_int = std::count_if(panels.begin(), panels.end(), is_int);
  if (size_t(n_int) == panels.size()) return run_gemv(ctx, x.as<const float>(), n, k, panels, n_panels);
  if (n_int > 0) {  // a mixed call: those outputs first, then the rest by mode
    std::vector<OutPanels> ints;
    std::copy_if(panels.begin(), panels.end(), std::back_inserter(ints), is_int);
    KVB_RETURN_IF_ERROR(run_gemv(ctx, x.as<const float>(), n, k, ints, renumber(ints)));
    std::erase_if(panels, is_int);
    n_panels = renumber(panels);
  }
  switch (mode) {
    case RowMode::kAuto:
      if (n <= kMaxGemvRows) return run_gemv(ctx, x.as<const float>(), n, k, panels, n_panels);
      break;
    case RowMode::kDecode:
      return run_gemv(ctx, x.as<const float>(), n, k, panels, n_panels);
    case RowMode::kPrefill:
      break;
  }
  return run_gemm(ctx, x.as<const float>(), n, k, panels, n_panels);
}

}  // namespace kvb::cpu
