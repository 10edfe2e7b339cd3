// KvCache: the attention keys and values of one token sequence, for every layer.
//
// Layout (per layer, K and V separately, in one backend buffer):
//     K[l] : [n_ctx][n_head_kv][head_dim]    (cell-major: one cell = one token of the sequence)
//     V[l] : [n_ctx][n_head_kv][head_dim]
// Keys are stored post-RoPE (rotated at their position), as llama.cpp, HF DynamicCache and C2C do.
// Cell-major was chosen over head-major ([n_head_kv][n_ctx][head_dim]) because appending a batch
// writes one contiguous block per layer, the first n cells of a layer are one contiguous byte range
// (the wire format streams exactly that, and slices of it by token range), and a prefix copy or a
// truncation touches nothing but a counter. Decode attention reads each head with a stride of
// n_head_kv * head_dim elements, which costs nothing measurable at head_dim >= 8 floats.
//
// Cells 0 .. n_tokens()-1 are in use, in sequence order; cell i holds token tokens()[i] at position
// positions()[i], and positions are strictly increasing by one (pos(i) = pos(0) + i).
// Batches are placed plan-then-apply: plan_append(n) reserves the next n cells without changing the
// sequence; the forward pass writes K/V there; commit_append(plan, tokens) makes them visible. A
// failure between the two leaves the cache exactly as it was.
//
// Threading: a KvCache is used by one thread at a time (the engine loop that owns it).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "kernels/backend.h"
#include "kernels/status.h"
#include "kernels/tensor.h"

namespace kvb {

// Everything a receiver must check before touching cache memory (STYLE R3): a blob carries it.
struct KvLayout {
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;  // F32 or F16

  int64_t cell_elems() const { return int64_t(n_head_kv) * head_dim; }  // per layer, per K or V
  size_t cell_bytes() const { return row_bytes(dtype, cell_elems()); }
  bool operator==(const KvLayout&) const = default;
};

struct KvPlan {
  int32_t first_cell = 0;  // the batch occupies cells [first_cell, first_cell + n)
  int32_t n = 0;
  int32_t first_pos = 0;   // position of the first new token
};

class KvCache {
 public:
  // Allocates n_ctx cells per layer from `buffer_type` (the backend's memory). RESOURCE_EXHAUSTED
  // when the allocation fails; INVALID_ARGUMENT for a bad layout or n_ctx.
  static Result<std::unique_ptr<KvCache>> create(const BufferType& buffer_type, const KvLayout& layout,
                                                 int32_t n_ctx);

  const KvLayout& layout() const { return layout_; }
  int32_t n_ctx() const { return n_ctx_; }
  int32_t n_tokens() const { return int32_t(tokens_.size()); }
  std::span<const int32_t> tokens() const { return tokens_; }
  // Position of cell 0 (the rest follow by one). 0 for a fresh cache.
  int32_t pos0() const { return pos0_; }
  int32_t next_pos() const { return pos0_ + n_tokens(); }
  std::vector<int32_t> positions() const;

  // Whole-capacity views of layer l: [n_ctx][n_head_kv][head_dim]. Cells >= n_tokens() are scratch.
  Tensor k(int32_t layer) const;
  Tensor v(int32_t layer) const;
  // The n_tokens() cells in use: [n_tokens][n_head_kv][head_dim], one contiguous byte range.
  Tensor k_used(int32_t layer) const { return k(layer).slice_rows(0, n_tokens()); }
  Tensor v_used(int32_t layer) const { return v(layer).slice_rows(0, n_tokens()); }
  // The same cells as rows of all heads: [n_tokens][n_head_kv * head_dim], heads flattened
  // head-major (index h * head_dim + d) — the per-token vector C2C's projector reads.
  Tensor used_rows(int32_t layer, bool is_v) const;
  bool is_host() const { return buffer_->is_host(); }
  size_t bytes_used() const { return size_t(n_tokens()) * layout_.cell_bytes() * 2 * size_t(layout_.n_layer); }
  size_t bytes_allocated() const { return buffer_->size(); }

  // ---- plan-then-apply append ----
  // RESOURCE_EXHAUSTED when n more cells do not fit in n_ctx; the cache is unchanged.
  Result<KvPlan> plan_append(int32_t n) const;
  // Makes the planned cells part of the sequence. `tokens` has plan.n ids. The plan must be the
  // latest one of this cache and nothing else may have changed it since (asserted).
  void commit_append(const KvPlan& plan, std::span<const int32_t> tokens);

  // ---- sequence operations ----
  // seq_rm: keeps cells [0, n) and drops the rest. OUT_OF_RANGE if n > n_tokens().
  Status truncate(int32_t n);
  // Drops everything (n_tokens = 0, pos0 = 0).
  void clear();
  // seq_cp: replaces this cache's contents with the first n cells of `src` (same layout, enough
  // capacity; INVALID_ARGUMENT / RESOURCE_EXHAUSTED otherwise). Each cache lives in host memory
  // or in `backend`'s device memory, in any combination: the layers move with copy (same kind of
  // memory), copy_from_host (host → device) or copy_to_host (device → host), 2·n_layer copies
  // enqueued on `backend` — call backend.synchronize() before reading the cells (copy_cache does).
  Status copy_from(Backend& backend, const KvCache& src, int32_t n);
  // Sets the position of cell 0 of an EMPTY cache, so that the next append starts at `pos0` (a
  // cache received over the wire keeps its sender's positions). FAILED_PRECONDITION when the cache
  // holds tokens; INVALID_ARGUMENT for pos0 < 0.
  Status set_pos0(int32_t pos0);
  // Appends cells [first, first + n) of `src` unchanged: they must continue this cache's positions
  // (src.pos0() + first == next_pos()), or this cache is empty and takes them as its pos0. For the
  // prefix cache: a block cut out of a sequence, a shared block's first cells copied into a
  // sequence that diverges inside it, blocks and a tail laid out contiguously again. Same
  // layout; host or `backend`'s device memory on either side. Enqueued on `backend` only: call
  // backend.synchronize() before `src` may change or this cache is read by the host.
  // INVALID_ARGUMENT (layout, positions, src == this), OUT_OF_RANGE (cells), RESOURCE_EXHAUSTED
  // (capacity); the cache is unchanged on error.
  Status append_cells(Backend& backend, const KvCache& src, int32_t first, int32_t n);
  // Drops the first n cells: the rest move to the front (pos0 += n), enqueued on `backend` as
  // copies that never overlap. OUT_OF_RANGE for n outside [0, n_tokens()].
  Status drop_front(Backend& backend, int32_t n);
  // Concatenation: appends all cells of `src` after this cache's cells, as if src's tokens had been
  // computed at positions next_pos() .. next_pos() + src.n_tokens() - 1. Keys are stored post-RoPE,
  // so src's keys are re-rotated by delta = next_pos() - src.pos0() (rotations compose:
  // R(p + d) = R(d)·R(p)); values are copied unchanged. Note the cells of src still only attended
  // to src's own tokens when they were computed (this is cache concatenation, not a re-prefill).
  // `rope` must be the model's RoPE parameters. This cache must live on `backend`; src may also be
  // host memory when this one is device memory (its cells are uploaded with copy_from_host: a
  // context that arrived over the network joins a GPU session). Both must be f32
  // (INVALID_ARGUMENT otherwise, and for different layouts); RESOURCE_EXHAUSTED when src does not
  // fit in the free cells, or the positions would pass INT32_MAX. On any error this cache is left
  // exactly as it was (only scratch cells beyond n_tokens() may have been written). Synchronous:
  // the backend is synchronized before returning. Allocates a small positions buffer
  // (4 bytes per src cell) from backend.device().buffer_type().
  Status append_shifted(Backend& backend, const KvCache& src, const RopeParams& rope);

 private:
  KvCache() = default;
  size_t layer_bytes() const { return size_t(n_ctx_) * layout_.cell_bytes(); }

  KvLayout layout_;
  int32_t n_ctx_ = 0;
  int32_t pos0_ = 0;
  std::vector<int32_t> tokens_;  // [n_tokens]
  std::unique_ptr<Buffer> buffer_;  // [n_layer][K, V][n_ctx][n_head_kv][head_dim]
};

// ---- copies between kinds of memory ----

// Replaces dst's contents with all of src (its cells, tokens and pos0), wherever each lives: host
// memory or `backend`'s device memory (KvCache::copy_from), and waits for the copies
// (backend.synchronize()), so that src may be freed and dst read at once. Host → host copies are
// plain memcpys on the CPU backend. INVALID_ARGUMENT for different layouts or src == dst;
// RESOURCE_EXHAUSTED when dst has fewer than src.n_tokens() cells. On error dst's contents are
// unspecified (clear() it or drop it). Not thread-safe with respect to `backend` (its rule).
Status copy_cache(const KvCache& src, KvCache& dst, Backend& backend);

// A copy of src in new memory from `buffer_type` (host or `backend`'s device memory), with
// max(n_ctx, src.n_tokens(), 1) cells: e.g. a device cache staged to pinned host memory before it
// is encoded for the wire, or a received host cache uploaded to the GPU. Errors as
// KvCache::create and copy_cache.
Result<std::unique_ptr<KvCache>> clone_cache(const KvCache& src, const BufferType& buffer_type, Backend& backend,
                                             int32_t n_ctx = 0);

}  // namespace kvb
