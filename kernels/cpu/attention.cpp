// attention: causal grouped-query attention of n new queries over one sequence's KV cache.
//   q   [n][n_head][hd] f32, k/v [n_kv][n_head_kv][hd] f32 or f16, out [n][n_head][hd] f32.
//   Query row i sees cells 0 .. n_kv - n + i; query head h reads kv head h / (n_head / n_head_kv).
// All sums are f32.
//
// Two paths:
//   decode (n < kTiledMinRows): one work item per (query row, kv head): for each query head of the
//     group, scores = scale * q·k_j over every visible cell (dot products straight off the cache, f16
//     converted in registers) and a max-subtracted softmax; then out = P·V for the whole group in one
//     small gemm, so V is read once per group. Parallel over rows x kv heads.
//   prefill: flash-attention style tiling with an online softmax. A work item is one kv head and a
//     block of query rows, with the rows of all query heads of that group stacked (R = group x bq rows),
//     so each K/V tile is read once for the whole group and copied (f32) or converted (f16) into a
//     contiguous buffer: cache rows are n_head_kv * hd apart, a stride that maps a whole tile onto a
//     few L1 sets. Everything is kept transposed (one column per stacked row: Qᵀ, Sᵀ, Oᵀ), so the
//     softmax statistics, the causal mask and the rescaling of O are plain vector ops along rows of
//     R columns; per tile of kBk cells, VecKernels::flash_step does
//       Sᵀ[j][r] = k_j · (scale q_r), masked past the diagonal
//       m_r' = max(m_r, max_j Sᵀ[j][r]);  l_r = l_r e^(m_r - m_r') + sum_j e^(Sᵀ[j][r] - m_r')
//       Oᵀ[d][r] = Oᵀ[d][r] e^(m_r - m_r') + sum_j v_j[d] e^(Sᵀ[j][r] - m_r')
//     and out = O / l at the end. Tiles past the diagonal are never visited. Items are handed out
//     largest (latest query block) first.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {
namespace {

constexpr int64_t kTiledMinRows = 4;  // fewer query rows use the decode path
constexpr int64_t kBk = 64;           // cells per K/V tile
constexpr int64_t kRowsPerItem = 64;  // target stacked query rows per prefill work item
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using Shapes = AttentionShapes;  // kernels/op_checks.h

// Pointer to row (cell j, kv head h) of a cache tensor, as f32 or f16.
inline const void* cache_row(const Tensor& t, const Shapes& s, int64_t j, int64_t h) {
  const size_t elem = t.dtype == DType::kF16 ? 2 : 4;
  return t.as<const uint8_t>() + size_t((j * s.n_head_kv + h) * s.hd) * elem;
}

// tile[j][d] = cache cell t0 + j, kv head h, as contiguous f32 rows (j < bk).
void load_tile(const VecKernels& vk, const Tensor& t, const Shapes& s, int64_t t0, int64_t bk, int64_t h, float* tile) {
  for (int64_t j = 0; j < bk; ++j) {
    const void* src = cache_row(t, s, t0 + j, h);
    if (t.dtype == DType::kF16) {
      vk.f16_to_f32(static_cast<const uint16_t*>(src), tile + j * s.hd, s.hd);
    } else {
      std::memcpy(tile + j * s.hd, src, size_t(s.hd) * sizeof(float));
    }
  }
}

Status run_decode(OpContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                  const Shapes& s) {
  const VecKernels& vk = *ctx.vec;
  const int n_threads = ctx.pool->n_threads();
  // Per thread: scores [group][n_kv], O [group][hd], softmax sums [group].
  const int64_t per_thread = s.group * (s.n_kv + s.hd + 1);
  KVB_RETURN_IF_ERROR(ctx.scratch->reserve_per_thread(n_threads, size_t(per_thread) * sizeof(float)));
  const bool k16 = k.dtype == DType::kF16, v16 = v.dtype == DType::kF16;
  const int64_t ld_cache = s.n_head_kv * s.hd;  // elements between cells
  auto items = [&](int64_t begin, int64_t end, int tid) {
    float* scores = ctx.scratch->thread(tid);
    float* o = scores + s.group * s.n_kv;
    float* sums = o + s.group * s.hd;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / s.n_head_kv, kvh = item % s.n_head_kv;
      const int64_t len = s.n_kv - s.n + i + 1;
      // The group's query heads are adjacent rows of q.
      const float* qr = q.as<const float>() + (i * s.n_head + kvh * s.group) * s.hd;
      if (k16) {
        vk.dots_f16(qr, s.hd, s.group, static_cast<const uint16_t*>(cache_row(k, s, 0, kvh)), ld_cache, len, s.hd,
                    scale, scores, s.n_kv);
      } else {
        vk.dots(qr, s.hd, s.group, static_cast<const float*>(cache_row(k, s, 0, kvh)), ld_cache, len, s.hd, scale,
                scores, s.n_kv);
      }
      for (int64_t g = 0; g < s.group; ++g) {
        float* sc = scores + g * s.n_kv;
        sums[g] = vk.exp_sum(sc, vk.max(sc, len), len);
      }
      if (v16) {
        vk.gemm_f16b(s.group, s.hd, len, scores, s.n_kv, 1, static_cast<const uint16_t*>(cache_row(v, s, 0, kvh)),
                     ld_cache, o, s.hd, false);
      } else {
        vk.gemm(s.group, s.hd, len, scores, s.n_kv, 1, static_cast<const float*>(cache_row(v, s, 0, kvh)), ld_cache, o,
                s.hd, false);
      }
      for (int64_t g = 0; g < s.group; ++g) {
        float* dst = out.as<float>() + (i * s.n_head + kvh * s.group + g) * s.hd;
        const float inv = 1.0f / sums[g];
        for (int64_t d = 0; d < s.hd; ++d) dst[d] = o[g * s.hd + d] * inv;
      }
    }
  };
  const int64_t n_items = s.n * s.n_head_kv;
  if (n_items * s.group * s.n_kv * s.hd < kMinParallelElements) {
    items(0, n_items, 0);
  } else {
    ctx.pool->parallel_for(n_items, 1, items);
  }
  return Status::Ok();
}

Status run_tiled(OpContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                 const Shapes& s) {
  const VecKernels& vk = *ctx.vec;
  const int n_threads = ctx.pool->n_threads();
  const int64_t bq = std::max<int64_t>(1, kRowsPerItem / s.group);  // query rows per item
  const int64_t rmax = s.group * bq;                                // stacked rows per item
  const int64_t ld = (rmax + 15) / 16 * 16;                         // columns of the transposed tiles
  const int64_t n_qb = (s.n + bq - 1) / bq;
  const int64_t hd = s.hd;
  // Per-thread layout (floats), columns = stacked rows: Qᵀ [hd][ld], Sᵀ [kBk + 1][ld], Oᵀ [hd][ld],
  // m, l, lim [ld], and contiguous f32 K and V tiles [kBk][hd].
  const int64_t per_thread = hd * ld + (kBk + 1) * ld + hd * ld + 3 * ld + 2 * kBk * hd;
  KVB_RETURN_IF_ERROR(ctx.scratch->reserve_per_thread(n_threads, size_t(per_thread) * sizeof(float)));
  // When several query blocks read the same cells, K and V are first copied (f32) or converted
  // (f16) once into contiguous per-head f32 arrays [n_head_kv][n_kv][hd], and tiles are read from
  // there in place; a single block loads its tiles on the way.
  const bool prepack = n_qb > 1;
  const float* kpk = nullptr;
  const float* vpk = nullptr;
  if (prepack) {
    const size_t per_cache = size_t(s.n_head_kv * s.n_kv * hd);
    KVB_RETURN_IF_ERROR(ctx.scratch->reserve_shared(2 * per_cache * sizeof(float)));
    float* kp = ctx.scratch->shared();
    float* vp = kp + per_cache;
    ctx.pool->parallel_for(s.n_kv, 64, [&](int64_t begin, int64_t end, int) {
      for (int64_t h = 0; h < s.n_head_kv; ++h) {
        load_tile(vk, k, s, begin, end - begin, h, kp + (h * s.n_kv + begin) * hd);
        load_tile(vk, v, s, begin, end - begin, h, vp + (h * s.n_kv + begin) * hd);
      }
    });
    kpk = kp;
    vpk = vp;
  }
  auto items = [&](int64_t begin, int64_t end, int tid) {
    float* qt = ctx.scratch->thread(tid);
    float* st = qt + hd * ld;
    float* ot = st + (kBk + 1) * ld;
    float* m = ot + hd * ld;
    float* l = m + ld;
    float* lim = l + ld;
    float* kf = lim + ld;
    float* vf = kf + kBk * hd;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t qb = n_qb - 1 - item / s.n_head_kv;  // heaviest blocks first
      const int64_t kvh = item % s.n_head_kv;
      const int64_t i0 = qb * bq, nq = std::min(bq, s.n - i0);
      const int64_t rows = s.group * nq;  // column r = g * nq + ri: head kvh * group + g, query i0 + ri
      for (int64_t g = 0; g < s.group; ++g) {
        for (int64_t ri = 0; ri < nq; ++ri) {
          const float* src = q.as<const float>() + ((i0 + ri) * s.n_head + kvh * s.group + g) * hd;
          for (int64_t d = 0; d < hd; ++d) qt[d * ld + g * nq + ri] = src[d] * scale;
        }
      }
      for (int64_t d = 0; d < hd; ++d) std::fill(qt + d * ld + rows, qt + (d + 1) * ld, 0.0f);
      std::fill(ot, ot + hd * ld, 0.0f);
      std::fill(m, m + ld, kNegInf);
      std::fill(l, l + ld, 0.0f);
      const int64_t diag = s.n_kv - s.n + i0;  // cells <= diag are visible to every row
      const int64_t kv_end = diag + nq;        // exclusive: the last row's limit + 1
      // Cell 0 is visible to every row, so every column sees a visible cell on the first tile.
      for (int64_t t0 = 0; t0 < kv_end; t0 += kBk) {
        const int64_t bk = std::min(kBk, kv_end - t0);
        const float* limp = nullptr;
        if (t0 + bk - 1 > diag) {  // the tile crosses the causal diagonal: row ri sees j <= diag - t0 + ri
          for (int64_t g = 0; g < s.group; ++g) {
            for (int64_t ri = 0; ri < nq; ++ri) lim[g * nq + ri] = float(diag - t0 + ri);
          }
          std::fill(lim + rows, lim + ld, float(bk));
          limp = lim;
        }
        const float* kt = kf;
        const float* vt = vf;
        if (prepack) {
          kt = kpk + (kvh * s.n_kv + t0) * hd;
          vt = vpk + (kvh * s.n_kv + t0) * hd;
        } else {
          load_tile(vk, k, s, t0, bk, kvh, kf);
          load_tile(vk, v, s, t0, bk, kvh, vf);
        }
        vk.flash_step(bk, hd, rows, ld, kt, vt, qt, limp, st, m, l, ot);
      }
      for (int64_t g = 0; g < s.group; ++g) {
        for (int64_t ri = 0; ri < nq; ++ri) {
          const int64_t r = g * nq + ri;
          float* dst = out.as<float>() + ((i0 + ri) * s.n_head + kvh * s.group + g) * hd;
          const float inv = 1.0f / l[r];
          for (int64_t d = 0; d < hd; ++d) dst[d] = ot[d * ld + r] * inv;
        }
      }
    }
  };
  ctx.pool->parallel_for(n_qb * s.n_head_kv, 1, items);
  return Status::Ok();
}

}  // namespace

Status attention(OpContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale) {
  KVB_ASSIGN_OR_RETURN(const Shapes s, check_attention(q, k, v, out, scale));
  if (s.n == 0 || s.n_head == 0) return Status::Ok();
  if (s.n < kTiledMinRows) return run_decode(ctx, q, k, v, out, scale, s);
  return run_tiled(ctx, q, k, v, out, scale, s);
}

}  // namespace kvb::cpu
