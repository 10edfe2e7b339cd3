// attention: causal grouped-query attention of n new queries over one sequence's KV cache.
//   q   [n][n_head][hd] f32, k/v [n_kv][n_head_kv][hd] f32 or f16 (each on its own), out
//   [n][n_head][hd] f32. Query row i sees cells 0 .. n_kv - n + i; query head h reads kv head
//   h / (n_head / n_head_kv). scale multiplies q·k. All math is f32. CPU twin: cpu/attention.cpp.
//
// One tiled kernel serves prefill and decode (flash-attention style: online softmax, nothing of
// size n_kv is ever materialized), plus a combine kernel for split-K:
//
//   CTA = (a block of query rows, one kv head and up to kRows of its query heads, one kv split).
//     The CTA's "rows" are its (query row, query head) pairs, stacked r = g·n_i + i: with GQA, the
//     query heads of a group share every K/V tile the CTA loads. kRows = 16 rows per CTA, so a
//     CTA takes 16 / heads query rows (decode: 1 row and the whole group).
//   4 warps; warp w owns rows w, w + 4, w + 8, w + 12, and keeps their running max m, sum l and
//     output o in registers (lane owns o[d] for d = lane + 32c, c < kDpl, hd <= 32·kDpl).
//   Per tile of kTile = 32 cells: the 128 threads load K and V (f16 converted to f32) into shared
//     memory; then each warp, for each of its rows, scores the 32 cells with one lane per cell
//     (s_j = q_r·k_j, q pre-scaled, from shared memory), masks j > n_kv - n + i, and updates
//       m' = max(m, max_j s_j);  p_j = e^(s_j - m');  l = l·e^(m - m') + Σ_j p_j;
//       o[d] = o[d]·e^(m - m') + Σ_j p_j·v_j[d]     (p_j broadcast from lane j by shuffle)
//     Tiles past the CTA's last visible cell are never loaded.
//   Without split-K the CTA writes out = o / l. Every row sees cell 0, so l > 0.
//
//   Split-K (decode, short prefills): when the CTAs above cannot fill the GPU (fewer than 2 per
//     SM) and the cache is long, cells are cut into n_split ranges of cells_per_split (a multiple
//     of kTile, >= kMinCellsPerSplit); each CTA handles one range and writes its unnormalized o and
//     (m, l) to scratch (a row that sees no cell of a range writes m = -inf, l = 0, o = 0). Then
//     attention_combine_kernel, one block per (query row, head): M = max_s m_s and
//       out = Σ_s e^(m_s - M)·o_s / Σ_s e^(m_s - M)·l_s.
//
// Shared memory: q [kRows][hd] + K [kTile][hd + 1] (padded: lane j reads row j, so rows must not
// share banks) + V [kTile][hd] floats: 40.5 KiB at hd = 128, 82 KiB at hd = 256 (opt-in above
// 48 KiB). Instantiations: kDpl ∈ {1, 2, 4, 8} (hd ≤ 32, 64, 128, 256); hd > 256 is UNIMPLEMENTED.
// Everything is enqueued on ctx.stream.
#include <algorithm>
#include <climits>
#include <cmath>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * kWarpSize;
constexpr int kRows = 16;  // (query row, query head) pairs per CTA
constexpr int kRowsPerWarp = kRows / kWarps;
constexpr int kTile = 32;  // cells per K/V tile: one per lane when scoring
constexpr int kMaxHeadDim = 256;
constexpr int kMinCellsPerSplit = 256;
constexpr int kMaxSplits = 64;
constexpr int kMaxCells = 1 << 30;  // n_kv bound: cell arithmetic stays in int

struct Params {
  const float* q;
  const void* k;
  const void* v;
  float* out;
  bool k_f16, v_f16;
  int n, n_head, n_head_kv, hd, n_kv, group;
  int heads_per_cta;  // query heads of one group per CTA
  int rows_per_cta;   // query rows per CTA; heads_per_cta * rows_per_cta <= kRows
  int head_chunks;    // CTAs per kv head along the group: ceil(group / heads_per_cta)
  int cells_per_split;
  int n_split;
  float scale;
  float* part_o;    // [n_split][n][n_head][hd] unnormalized outputs (n_split > 1)
  float2* part_ml;  // [n_split][n][n_head] (running max, sum)   (n_split > 1)
};

__device__ __forceinline__ float load_cache(const void* base, bool f16, int64_t i) {
  return f16 ? f16_bits_to_f32(static_cast<const uint16_t*>(base)[i]) : static_cast<const float*>(base)[i];
}

template <int kDpl>
__global__ void __launch_bounds__(kThreads) attention_kernel(const Params p) {
  extern __shared__ float smem[];
  const int hd = p.hd;
  const int ldk = hd + 1;
  float* s_q = smem;               // [kRows][hd], pre-scaled
  float* s_k = s_q + kRows * hd;   // [kTile][hd + 1]
  float* s_v = s_k + kTile * ldk;  // [kTile][hd]

  const int lane = int(threadIdx.x) % kWarpSize, warp = int(threadIdx.x) / kWarpSize;
  const int kvh = int(blockIdx.y) / p.head_chunks;
  const int g0 = (int(blockIdx.y) % p.head_chunks) * p.heads_per_cta;  // first query head of the group
  const int n_g = min(p.heads_per_cta, p.group - g0);
  const int i0 = int(blockIdx.x) * p.rows_per_cta;
  const int n_i = min(p.rows_per_cta, p.n - i0);
  const int n_rows = n_g * n_i;  // row r: query head kvh·group + g0 + r / n_i, query row i0 + r % n_i
  const int past = p.n_kv - p.n;  // query row i sees cells 0 .. past + i
  const int c0 = int(blockIdx.z) * p.cells_per_split;
  const int c1 = min(c0 + p.cells_per_split, past + i0 + n_i);  // end of this CTA's cells

  for (int e = int(threadIdx.x); e < n_rows * hd; e += kThreads) {
    const int r = e / hd, d = e % hd;
    const int head = kvh * p.group + g0 + r / n_i, i = i0 + r % n_i;
    s_q[e] = p.q[(int64_t(i) * p.n_head + head) * hd + d] * p.scale;
  }

  float m[kRowsPerWarp], l[kRowsPerWarp], o[kRowsPerWarp][kDpl];
#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    m[rr] = -INFINITY;
    l[rr] = 0.0f;
#pragma unroll
    for (int c = 0; c < kDpl; ++c) o[rr][c] = 0.0f;
  }

  const int64_t ld_cache = int64_t(p.n_head_kv) * hd;  // elements between cells
  for (int t0 = c0; t0 < c1; t0 += kTile) {
    const int nt = min(kTile, c1 - t0);
    __syncthreads();  // the previous tile has been consumed (and s_q written, on the first pass)
    for (int e = int(threadIdx.x); e < kTile * hd; e += kThreads) {
      const int j = e / hd, d = e % hd;
      float kx = 0.0f, vx = 0.0f;  // cells past the end: zeros, so that 0·v stays finite
      if (j < nt) {
        const int64_t idx = int64_t(t0 + j) * ld_cache + int64_t(kvh) * hd + d;
        kx = load_cache(p.k, p.k_f16, idx);
        vx = load_cache(p.v, p.v_f16, idx);
      }
      s_k[j * ldk + d] = kx;
      s_v[j * hd + d] = vx;
    }
    __syncthreads();

#pragma unroll
    for (int rr = 0; rr < kRowsPerWarp; ++rr) {
      const int r = warp + rr * kWarps;
      if (r >= n_rows) continue;  // warp-uniform: the shuffles below see full warps
      const int last = past + i0 + r % n_i;  // the row's last visible cell
      float s = -INFINITY;
      if (lane < nt && t0 + lane <= last) {
        const float* qr = s_q + r * hd;
        const float* kr = s_k + lane * ldk;
        float acc = 0.0f;
        for (int d = 0; d < hd; ++d) acc = fmaf(qr[d], kr[d], acc);
        s = acc;
      }
      const float m_new = fmaxf(m[rr], warp_max(s));
      // Masked cells (s = -inf) weigh 0; so does an empty history (m = -inf: l and o are still 0).
      const float pj = s == -INFINITY ? 0.0f : expf(s - m_new);
      const float alpha = m[rr] == -INFINITY ? 0.0f : expf(m[rr] - m_new);
      l[rr] = l[rr] * alpha + warp_sum(pj);
      m[rr] = m_new;
#pragma unroll
      for (int c = 0; c < kDpl; ++c) o[rr][c] *= alpha;
      for (int j = 0; j < nt; ++j) {
        const float pb = __shfl_sync(kFullMask, pj, j);
        const float* vr = s_v + j * hd;
#pragma unroll
        for (int c = 0; c < kDpl; ++c) {
          const int d = lane + c * kWarpSize;
          if (d < hd) o[rr][c] = fmaf(pb, vr[d], o[rr][c]);
        }
      }
    }
  }

#pragma unroll
  for (int rr = 0; rr < kRowsPerWarp; ++rr) {
    const int r = warp + rr * kWarps;
    if (r >= n_rows) continue;
    const int head = kvh * p.group + g0 + r / n_i, i = i0 + r % n_i;
    const int64_t row = int64_t(i) * p.n_head + head;
    if (p.n_split == 1) {
      const float inv = 1.0f / l[rr];
#pragma unroll
      for (int c = 0; c < kDpl; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < hd) p.out[row * hd + d] = o[rr][c] * inv;
      }
    } else {
      const int64_t prow = int64_t(blockIdx.z) * p.n * p.n_head + row;
#pragma unroll
      for (int c = 0; c < kDpl; ++c) {
        const int d = lane + c * kWarpSize;
        if (d < hd) p.part_o[prow * hd + d] = o[rr][c];
      }
      if (lane == 0) p.part_ml[prow] = make_float2(m[rr], l[rr]);
    }
  }
}

// One block per (query row, head) row of out (grid-stride), threads over d.
__global__ void attention_combine_kernel(const float* part_o, const float2* part_ml, float* out, int n_split,
                                         int64_t n_rows, int hd) {
  for (int64_t row = blockIdx.x; row < n_rows; row += gridDim.x) {
    float mx = -INFINITY;
    for (int s = 0; s < n_split; ++s) mx = fmaxf(mx, part_ml[s * n_rows + row].x);  // finite: split 0 sees cell 0
    for (int d = int(threadIdx.x); d < hd; d += int(blockDim.x)) {
      float l = 0.0f, acc = 0.0f;
      for (int s = 0; s < n_split; ++s) {
        const float2 ml = part_ml[s * n_rows + row];
        const float w = ml.x == -INFINITY ? 0.0f : expf(ml.x - mx);
        l += w * ml.y;
        acc += w * part_o[(s * n_rows + row) * hd + d];
      }
      out[row * hd + d] = acc / l;
    }
  }
}

using Shapes = AttentionShapes;  // kernels/op_checks.h

template <int kDpl>
Status launch(OpContext& ctx, const Params& p, dim3 grid, size_t smem) {
  if (smem > 48 * 1024) {
    KVB_CUDA_CHECK(cudaFuncSetAttribute(attention_kernel<kDpl>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        int(smem)));
  }
  attention_kernel<kDpl><<<grid, kThreads, smem, ctx.stream>>>(p);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace

Status attention(OpContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale) {
  KVB_ASSIGN_OR_RETURN(const Shapes s, check_attention(q, k, v, out, scale));
  if (s.n == 0 || s.n_head == 0) return Status::Ok();
  if (s.hd > kMaxHeadDim) {
    return unimplemented(cat("attention: head_dim ", s.hd, " is above the CUDA kernel's ", kMaxHeadDim));
  }
  if (s.n_kv > kMaxCells || s.n_head > 65535) {
    return unimplemented(cat("attention: ", s.n_kv, " cells or ", s.n_head, " heads are beyond the CUDA kernel"));
  }

  Params p{};
  p.q = q.as<const float>();
  p.k = k.data;
  p.v = v.data;
  p.out = out.as<float>();
  p.k_f16 = k.dtype == DType::kF16;
  p.v_f16 = v.dtype == DType::kF16;
  p.n = int(s.n);
  p.n_head = int(s.n_head);
  p.n_head_kv = int(s.n_head_kv);
  p.hd = int(s.hd);
  p.n_kv = int(s.n_kv);
  p.group = int(s.group);
  p.heads_per_cta = std::min(p.group, kRows);
  p.rows_per_cta = kRows / p.heads_per_cta;
  p.head_chunks = (p.group + p.heads_per_cta - 1) / p.heads_per_cta;
  p.scale = scale;
  const int64_t n_qblocks = (s.n + p.rows_per_cta - 1) / p.rows_per_cta;
  const int64_t grid_y = s.n_head_kv * p.head_chunks;  // = n_head_kv * ceil(group / heads_per_cta) <= n_head

  // Split-K when the CTAs cannot fill the GPU and there are enough cells to share out.
  const int64_t ctas = n_qblocks * grid_y;
  const int64_t target = 2 * int64_t(ctx.n_sm);
  int64_t n_split = 1;
  if (ctas < target && s.n_kv >= 2 * kMinCellsPerSplit) {
    n_split = std::min<int64_t>({(target + ctas - 1) / ctas, s.n_kv / kMinCellsPerSplit, kMaxSplits});
  }
  int64_t cells = (s.n_kv + n_split - 1) / n_split;
  cells = (cells + kTile - 1) / kTile * kTile;
  n_split = (s.n_kv + cells - 1) / cells;  // no range starts past the cache
  p.cells_per_split = int(cells);
  p.n_split = int(n_split);

  if (n_split > 1) {
    const int64_t rows = s.n * s.n_head;
    const size_t ml_bytes = size_t(n_split * rows) * sizeof(float2);
    const size_t o_bytes = size_t(n_split * rows * s.hd) * sizeof(float);
    KVB_ASSIGN_OR_RETURN(void* scratch, ctx.scratch->get(ml_bytes + o_bytes, ctx.stream));
    p.part_ml = static_cast<float2*>(scratch);
    p.part_o = reinterpret_cast<float*>(static_cast<char*>(scratch) + ml_bytes);
  }

  const size_t smem = size_t(kRows * s.hd + kTile * (s.hd + 1) + kTile * s.hd) * sizeof(float);
  if (smem > ctx.max_smem_per_block) {
    return unimplemented(cat("attention: head_dim ", s.hd, " needs ", smem, " bytes of shared memory, the device has ",
                             ctx.max_smem_per_block));
  }
  const dim3 grid{unsigned(n_qblocks), unsigned(grid_y), unsigned(n_split)};
  if (s.hd <= 32) {
    KVB_RETURN_IF_ERROR(launch<1>(ctx, p, grid, smem));
  } else if (s.hd <= 64) {
    KVB_RETURN_IF_ERROR(launch<2>(ctx, p, grid, smem));
  } else if (s.hd <= 128) {
    KVB_RETURN_IF_ERROR(launch<4>(ctx, p, grid, smem));
  } else {
    KVB_RETURN_IF_ERROR(launch<8>(ctx, p, grid, smem));
  }

  if (n_split > 1) {
    const int64_t rows = s.n * s.n_head;
    const int threads = int(std::min<int64_t>(256, (s.hd + kWarpSize - 1) / kWarpSize * kWarpSize));
    attention_combine_kernel<<<unsigned(std::min<int64_t>(rows, 65536)), threads, 0, ctx.stream>>>(
        p.part_o, p.part_ml, p.out, p.n_split, rows, p.hd);
    KVB_CUDA_CHECK_LAUNCH();
  }
  return Status::Ok();
}

}  // namespace kvb::cuda
