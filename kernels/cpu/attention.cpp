// attention: causal grouped-query attention of n new queries over one sequence's KV cache.
//   q   [n][n_head][hd] f32, k/v [n_kv][n_head_kv][hd] f32 or f16, out [n][n_head][hd] f32.
//   Query row i sees cells 0 .. n_kv - n + i; query head h reads kv head h / (n_head / n_head_kv).
// All sums are f32.
//
// A sequence's cells may come in segments (AttentionSeq::prefix: shared prefix blocks, then the
// sequence's own cells). Cell j is addressed through its segment; every sum runs over the cells in
// the same order as over one contiguous cache (the decode gemm continues its accumulators across
// segments), so the result is the same bits.
//
// Two paths (RowMode picks one; kAuto by n). Each computes a query row the same way whatever rows
// share the call: query blocks and K/V tiles start at fixed cells, and cells a row does not see
// add exact zeros.
//   decode (n < kTiledMinRows): one work item per (query row, kv head): for each query head of the
//     group, scores = scale * q·k_j over every visible cell (dot products straight off the cache, f16
//     converted in registers) and a max-subtracted softmax; then out = P·V for the whole group in one
//     small gemm, so V is read once per group. Parallel over rows x kv heads.
//   prefill: flash-attention style tiling with an online softmax. A work item is one kv head and a
//     block of query rows, with the rows of all query heads of that group stacked (R = group x bq rows),
//     so each K/V tile is read once for the whole group. K is read transposed (Kᵀ [hd][cells]) and
//     V as rows, both contiguous f32: cache rows are n_head_kv * hd apart, a stride that maps a whole
//     tile onto a few L1 sets, and an f16 cache is converted once. Per tile of kBk cells,
//     VecKernels::flash_step does, row-major (one row per stacked query row):
//       S[r][j] = (scale q_r) · k_j, for the cells row r sees (j past the diagonal: p = 0)
//       m_r' = max(m_r, max_j S[r][j]);  l_r = l_r e^(m_r - m_r') + sum_j e^(S[r][j] - m_r')
//       O[r][d] = O[r][d] e^(m_r - m_r') + sum_j e^(S[r][j] - m_r') v_j[d]
//     and out = O / l at the end. Tiles past the diagonal are never visited, and in a tile on the
//     diagonal each block of rows stops at the last cell it sees. Items are handed out largest
//     (latest query block) first.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {
namespace {

constexpr int64_t kTiledMinRows = 4;  // fewer query rows use the decode path
constexpr int64_t kBk = 64;           // cells per K/V tile (a multiple of 16: S rows hold whole vectors)
constexpr int64_t kRowsPerItem = 64;  // target stacked query rows per prefill work item
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

using Shapes = AttentionShapes;  // kernels/op_checks.h

// A sequence's cells: the segments in order, cell j in the one whose range holds it.
class Cells {
 public:
  struct Seg {
    const uint8_t* k;
    const uint8_t* v;
    int64_t first;  // first cell
    int64_t n;      // cells
  };

  Cells(const AttentionSeq& a, const Shapes& s)
      : k16_(a.k.dtype == DType::kF16), v16_(a.v.dtype == DType::kF16),
        k_head_bytes_(size_t(s.hd) * (k16_ ? 2 : 4)), v_head_bytes_(size_t(s.hd) * (v16_ ? 2 : 4)),
        n_head_kv_(size_t(s.n_head_kv)) {
    segs_.reserve(a.prefix.size() + 1);
    int64_t first = 0;
    auto add = [&](const Tensor& k, const Tensor& v) {
      if (k.shape[0] == 0) return;
      segs_.push_back({k.as<const uint8_t>(), v.as<const uint8_t>(), first, k.shape[0]});
      first += k.shape[0];
    };
    for (const KvSegment& seg : a.prefix) add(seg.k, seg.v);
    add(a.k, a.v);
  }
  bool k16() const { return k16_; }
  bool v16() const { return v16_; }
  std::span<const Seg> segments() const { return segs_; }
  // Row (cell j, kv head h) of K or V, as f32 or f16.
  const void* k_row(int64_t j, int64_t h) const { return row(j, h, true); }
  const void* v_row(int64_t j, int64_t h) const { return row(j, h, false); }
  // Row (cell first of seg, kv head h).
  const void* seg_k(const Seg& g, int64_t h) const { return g.k + size_t(h) * k_head_bytes_; }
  const void* seg_v(const Seg& g, int64_t h) const { return g.v + size_t(h) * v_head_bytes_; }

 private:
  const void* row(int64_t j, int64_t h, bool is_k) const {
    const Seg* g = segs_.data();
    if (segs_.size() > 1) {
      g = &*(std::upper_bound(segs_.begin(), segs_.end(), j, [](int64_t x, const Seg& e) { return x < e.first; }) - 1);
    }
    const size_t head = is_k ? k_head_bytes_ : v_head_bytes_;
    return (is_k ? g->k : g->v) + (size_t(j - g->first) * n_head_kv_ + size_t(h)) * head;
  }

  bool k16_, v16_;
  size_t k_head_bytes_, v_head_bytes_, n_head_kv_;
  std::vector<Seg> segs_;
};

inline int64_t round_up16(int64_t x) { return (x + 15) / 16 * 16; }

constexpr int64_t kTransposeCells = 16;  // cells per block of load_k_transposed

// kt[d * ld + j] = K of cell t0 + j, kv head h (j < bk): the transposed tile flash_step reads.
// Blocks of kTransposeCells cells, so the stores of one d fill a cache line (a store per cell down
// a column would touch a line per d, lines ld floats apart: a few L1 sets for a long cache).
// tmp: kTransposeCells * hd floats of scratch (for an f16 cache).
void load_k_transposed(const VecKernels& vk, const Cells& cells, const Shapes& s, int64_t t0, int64_t bk, int64_t h,
                       float* kt, int64_t ld, float* tmp) {
  const float* rows[kTransposeCells];
  for (int64_t j0 = 0; j0 < bk; j0 += kTransposeCells) {
    const int64_t nb = std::min(kTransposeCells, bk - j0);
    for (int64_t jj = 0; jj < nb; ++jj) {
      const void* src = cells.k_row(t0 + j0 + jj, h);
      if (cells.k16()) {
        vk.f16_to_f32(static_cast<const uint16_t*>(src), tmp + jj * s.hd, s.hd);
        rows[jj] = tmp + jj * s.hd;
      } else {
        rows[jj] = static_cast<const float*>(src);
      }
    }
    for (int64_t d = 0; d < s.hd; ++d) {
      float* dst = kt + d * ld + j0;
      for (int64_t jj = 0; jj < nb; ++jj) dst[jj] = rows[jj][d];
    }
  }
}

// vt[j * ld + d] = V of cell t0 + j, kv head h (j < bk, d < hd), padding columns hd .. ld zeroed.
void load_v_rows(const VecKernels& vk, const Cells& cells, const Shapes& s, int64_t t0, int64_t bk, int64_t h,
                 float* vt, int64_t ld) {
  for (int64_t j = 0; j < bk; ++j) {
    float* dst = vt + j * ld;
    const void* src = cells.v_row(t0 + j, h);
    if (cells.v16()) {
      vk.f16_to_f32(static_cast<const uint16_t*>(src), dst, s.hd);
    } else {
      std::memcpy(dst, src, size_t(s.hd) * sizeof(float));
    }
    std::fill(dst + s.hd, dst + ld, 0.0f);
  }
}

// One decode work item: query row i, kv head kvh, all query heads of its group. scratch holds
// group * (n_kv + hd + 1) floats.
void decode_item(const VecKernels& vk, const Tensor& q, const Cells& cells, const Tensor& out, float scale,
                 const Shapes& s, int64_t i, int64_t kvh, float* scratch) {
  float* scores = scratch;
  float* o = scores + s.group * s.n_kv;
  float* sums = o + s.group * s.hd;
  const int64_t ld_cache = s.n_head_kv * s.hd;  // elements between cells
  const int64_t len = s.n_kv - s.n + i + 1;
  // The group's query heads are adjacent rows of q.
  const float* qr = q.as<const float>() + (i * s.n_head + kvh * s.group) * s.hd;
  for (const Cells::Seg& g : cells.segments()) {
    if (g.first >= len) break;
    const int64_t m = std::min(g.n, len - g.first);
    if (cells.k16()) {
      vk.dots_f16(qr, s.hd, s.group, static_cast<const uint16_t*>(cells.seg_k(g, kvh)), ld_cache, m, s.hd, scale,
                  scores + g.first, s.n_kv);
    } else {
      vk.dots(qr, s.hd, s.group, static_cast<const float*>(cells.seg_k(g, kvh)), ld_cache, m, s.hd, scale,
              scores + g.first, s.n_kv);
    }
  }
  for (int64_t g = 0; g < s.group; ++g) {
    float* sc = scores + g * s.n_kv;
    sums[g] = vk.exp_sum(sc, vk.max(sc, len), len);
  }
  // P·V segment by segment; the accumulators carry over, so the sums run in cell order.
  bool accumulate = false;
  for (const Cells::Seg& g : cells.segments()) {
    if (g.first >= len) break;
    const int64_t m = std::min(g.n, len - g.first);
    if (cells.v16()) {
      vk.gemm_f16b(s.group, s.hd, m, scores + g.first, s.n_kv, 1, static_cast<const uint16_t*>(cells.seg_v(g, kvh)),
                   ld_cache, o, s.hd, accumulate);
    } else {
      vk.gemm(s.group, s.hd, m, scores + g.first, s.n_kv, 1, static_cast<const float*>(cells.seg_v(g, kvh)), ld_cache,
              o, s.hd, accumulate);
    }
    accumulate = true;
  }
  for (int64_t g = 0; g < s.group; ++g) {
    float* dst = out.as<float>() + (i * s.n_head + kvh * s.group + g) * s.hd;
    const float inv = 1.0f / sums[g];
    for (int64_t d = 0; d < s.hd; ++d) dst[d] = o[g * s.hd + d] * inv;
  }
}

int64_t decode_scratch_floats(const Shapes& s) { return s.group * (s.n_kv + s.hd + 1); }

Status run_decode(OpContext& ctx, const Tensor& q, const Cells& cells, const Tensor& out, float scale,
                  const Shapes& s) {
  const VecKernels& vk = *ctx.vec;
  KVB_RETURN_IF_ERROR(
      ctx.scratch->reserve_per_thread(ctx.pool->n_threads(), size_t(decode_scratch_floats(s)) * sizeof(float)));
  auto items = [&](int64_t begin, int64_t end, int tid) {
    for (int64_t item = begin; item < end; ++item) {
      decode_item(vk, q, cells, out, scale, s, item / s.n_head_kv, item % s.n_head_kv, ctx.scratch->thread(tid));
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

Status run_tiled(OpContext& ctx, const Tensor& q, const Cells& cells, const Tensor& out, float scale,
                 const Shapes& s) {
  const VecKernels& vk = *ctx.vec;
  const int n_threads = ctx.pool->n_threads();
  const int64_t hd = s.hd;
  const int64_t bq = std::max<int64_t>(1, kRowsPerItem / s.group);  // query rows per item
  const int64_t rmax = s.group * bq;                                // stacked rows per item
  const int64_t n_qb = (s.n + bq - 1) / bq;
  const int64_t ldv = round_up16(hd);  // row stride of V tiles and of O
  // Per-thread layout (floats): lim [rmax] (int64), Q [rmax][hd] (scaled), S [rmax][kBk],
  // O [rmax][ldv], m, l [rmax], flash_step's t [2 round_up16(rmax)], and the K/V tiles read when
  // nothing is prepacked: Kᵀ [hd][kBk] and V [kBk][ldv]. The prepack uses it as load_k_transposed's tmp.
  const int64_t per_thread =
      2 * rmax + rmax * hd + rmax * kBk + rmax * ldv + 2 * rmax + 2 * round_up16(rmax) + hd * kBk + kBk * ldv;
  KVB_RETURN_IF_ERROR(ctx.scratch->reserve_per_thread(n_threads, size_t(per_thread) * sizeof(float)));
  // When several query blocks read the same cells, K and V are converted once into per-head f32
  // arrays, Kᵀ [n_head_kv][hd][ldk] and V [n_head_kv][n_kv][ldv], and tiles are read from there in
  // place; a single block loads its tiles on the way.
  const bool prepack = n_qb > 1;
  const int64_t ldk_all = round_up16(s.n_kv);
  const float* k_all = nullptr;
  const float* v_all = nullptr;
  if (prepack) {
    const size_t k_floats = size_t(s.n_head_kv * hd * ldk_all), v_floats = size_t(s.n_head_kv * s.n_kv * ldv);
    KVB_RETURN_IF_ERROR(ctx.scratch->reserve_shared((k_floats + v_floats) * sizeof(float)));
    float* kp = ctx.scratch->shared();
    float* vp = kp + k_floats;
    ctx.pool->parallel_for(s.n_kv, 64, [&](int64_t begin, int64_t end, int tid) {
      float* tmp = ctx.scratch->thread(tid);
      for (int64_t h = 0; h < s.n_head_kv; ++h) {
        float* kh = kp + h * hd * ldk_all;
        load_k_transposed(vk, cells, s, begin, end - begin, h, kh + begin, ldk_all, tmp);
        if (end == s.n_kv) {  // the vector padding past the last cell
          for (int64_t d = 0; d < hd; ++d) std::fill(kh + d * ldk_all + s.n_kv, kh + (d + 1) * ldk_all, 0.0f);
        }
        load_v_rows(vk, cells, s, begin, end - begin, h, vp + (h * s.n_kv + begin) * ldv, ldv);
      }
    });
    k_all = kp;
    v_all = vp;
  }
  auto items = [&](int64_t begin, int64_t end, int tid) {
    auto* lim = reinterpret_cast<int64_t*>(ctx.scratch->thread(tid));
    float* qs = ctx.scratch->thread(tid) + 2 * rmax;
    float* st = qs + rmax * hd;
    float* ot = st + rmax * kBk;
    float* m = ot + rmax * ldv;
    float* l = m + rmax;
    float* t = l + rmax;
    float* kf = t + 2 * round_up16(rmax);
    float* vf = kf + hd * kBk;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t qb = n_qb - 1 - item / s.n_head_kv;  // heaviest blocks first
      const int64_t kvh = item % s.n_head_kv;
      const int64_t i0 = qb * bq, nq = std::min(bq, s.n - i0);
      const int64_t rows = s.group * nq;  // row r = g * nq + ri: head kvh * group + g, query i0 + ri
      for (int64_t g = 0; g < s.group; ++g) {
        for (int64_t ri = 0; ri < nq; ++ri) {
          float* dst = qs + (g * nq + ri) * hd;
          std::memcpy(dst, q.as<const float>() + ((i0 + ri) * s.n_head + kvh * s.group + g) * hd,
                      size_t(hd) * sizeof(float));
          vk.scale(dst, scale, hd);
        }
      }
      std::fill(ot, ot + rows * ldv, 0.0f);
      std::fill(m, m + rows, kNegInf);
      std::fill(l, l + rows, 0.0f);
      const int64_t diag = s.n_kv - s.n + i0;  // cells <= diag are visible to every row
      const int64_t kv_end = diag + nq;        // exclusive: the last row's limit + 1
      // Cell 0 is visible to every row, so every row sees a cell on the first tile.
      for (int64_t t0 = 0; t0 < kv_end; t0 += kBk) {
        const int64_t bk = std::min(kBk, kv_end - t0);
        const int64_t* limp = nullptr;
        if (t0 + bk - 1 > diag) {  // the tile crosses the causal diagonal: row ri sees j <= diag - t0 + ri
          for (int64_t g = 0; g < s.group; ++g) {
            for (int64_t ri = 0; ri < nq; ++ri) lim[g * nq + ri] = diag - t0 + ri;
          }
          limp = lim;
        }
        const float* kt = kf;
        const float* vt = vf;
        int64_t ldk = kBk;
        if (prepack) {
          kt = k_all + kvh * hd * ldk_all + t0;
          vt = v_all + (kvh * s.n_kv + t0) * ldv;
          ldk = ldk_all;
        } else {
          load_k_transposed(vk, cells, s, t0, bk, kvh, kf, kBk, vf);  // vf ([kBk][ldv]) is free until load_v_rows
          for (int64_t d = 0; d < hd; ++d) std::fill(kf + d * kBk + bk, kf + d * kBk + round_up16(bk), 0.0f);
          load_v_rows(vk, cells, s, t0, bk, kvh, vf, ldv);
        }
        vk.flash_step(bk, hd, rows, qs, hd, kt, ldk, vt, ldv, limp, st, kBk, m, l, ot, ldv, t);
      }
      for (int64_t g = 0; g < s.group; ++g) {
        for (int64_t ri = 0; ri < nq; ++ri) {
          const int64_t r = g * nq + ri;
          float* dst = out.as<float>() + ((i0 + ri) * s.n_head + kvh * s.group + g) * hd;
          std::memcpy(dst, ot + r * ldv, size_t(hd) * sizeof(float));
          vk.scale(dst, 1.0f / l[r], hd);
        }
      }
    }
  };
  ctx.pool->parallel_for(n_qb * s.n_head_kv, 1, items);
  return Status::Ok();
}

}  // namespace

Status attention(OpContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                 RowMode mode) {
  const AttentionSeq a{q, k, v, out};
  return attention_batch(ctx, std::span<const AttentionSeq>(&a, 1), scale, mode);
}

Status attention_batch(OpContext& ctx, std::span<const AttentionSeq> seqs, float scale, RowMode mode) {
  std::vector<Shapes> shapes;
  std::vector<Cells> cells;
  shapes.reserve(seqs.size());
  cells.reserve(seqs.size());
  for (const AttentionSeq& a : seqs) {
    KVB_ASSIGN_OR_RETURN(const Shapes s, check_attention_seq(a, scale));
    shapes.push_back(s);
    cells.emplace_back(a, s);
  }
  if (mode != RowMode::kDecode || seqs.size() == 1) {
    for (size_t i = 0; i < seqs.size(); ++i) {
      const Shapes& s = shapes[i];
      if (s.n == 0 || s.n_head == 0) continue;
      const bool decode = mode == RowMode::kAuto ? s.n < kTiledMinRows : mode == RowMode::kDecode;
      KVB_RETURN_IF_ERROR(decode ? run_decode(ctx, seqs[i].q, cells[i], seqs[i].out, scale, s)
                                 : run_tiled(ctx, seqs[i].q, cells[i], seqs[i].out, scale, s));
    }
    return Status::Ok();
  }
  // Decode rows of many sequences: each is too small to spread over the threads alone, so all
  // their (row, kv head) items go into one parallel loop. Each item runs decode_item, as the
  // sequence's own call would.
  std::vector<int64_t> first_item;  // per sequence, then the total
  int64_t scratch = 0, n_items = 0;
  for (const Shapes& s : shapes) {
    first_item.push_back(n_items);
    n_items += s.n * s.n_head_kv;
    scratch = std::max(scratch, decode_scratch_floats(s));
  }
  first_item.push_back(n_items);
  if (n_items == 0) return Status::Ok();
  KVB_RETURN_IF_ERROR(ctx.scratch->reserve_per_thread(ctx.pool->n_threads(), size_t(scratch) * sizeof(float)));
  const VecKernels& vk = *ctx.vec;
  ctx.pool->parallel_for(n_items, 1, [&](int64_t begin, int64_t end, int tid) {
    size_t q = size_t(std::upper_bound(first_item.begin(), first_item.end(), begin) - first_item.begin()) - 1;
    for (int64_t item = begin; item < end; ++item) {
      while (item >= first_item[q + 1]) ++q;
      const Shapes& s = shapes[q];
      const int64_t local = item - first_item[q];
      decode_item(vk, seqs[q].q, cells[q], seqs[q].out, scale, s, local / s.n_head_kv, local % s.n_head_kv,
                  ctx.scratch->thread(tid));
    }
  });
  return Status::Ok();
}

}  // namespace kvb::cpu
