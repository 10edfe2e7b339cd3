#include "engine/kv_cache.h"

#include <algorithm>
#include <climits>

#include <fmt/format.h>

namespace kvb {

Result<std::unique_ptr<KvCache>> KvCache::create(const BufferType& buffer_type, const KvLayout& layout,
                                                 int32_t n_ctx) {
  if (layout.n_layer <= 0 || layout.n_head_kv <= 0 || layout.head_dim <= 0 ||
      (layout.dtype != DType::kF32 && layout.dtype != DType::kF16)) {
    return invalid_argument(fmt::format("kv cache: bad layout ({} layers, {} kv heads x {}, {})", layout.n_layer,
                                        layout.n_head_kv, layout.head_dim, dtype_name(layout.dtype)));
  }
  if (n_ctx <= 0) return invalid_argument(fmt::format("kv cache: n_ctx must be > 0, got {}", n_ctx));
  std::unique_ptr<KvCache> c(new KvCache());
  c->layout_ = layout;
  c->n_ctx_ = n_ctx;
  const size_t bytes = c->layer_bytes() * 2 * size_t(layout.n_layer);
  KVB_ASSIGN_OR_RETURN(c->buffer_, buffer_type.alloc(bytes));
  c->tokens_.reserve(size_t(n_ctx));
  return c;
}

Tensor KvCache::used_rows(int32_t layer, bool is_v) const {
  const Tensor t = is_v ? v_used(layer) : k_used(layer);
  return Tensor::make(layout_.dtype, t.data, {int64_t(n_tokens()), layout_.cell_elems()});
}

std::vector<int32_t> KvCache::positions() const {
  std::vector<int32_t> p(tokens_.size());
  for (size_t i = 0; i < p.size(); ++i) p[i] = pos0_ + int32_t(i);
  return p;
}

Tensor KvCache::k(int32_t layer) const {
  KVB_ASSERT(layer >= 0 && layer < layout_.n_layer, "layer out of range");
  char* base = static_cast<char*>(buffer_->data()) + size_t(2 * layer) * layer_bytes();
  return Tensor::make(layout_.dtype, base, {n_ctx_, layout_.n_head_kv, layout_.head_dim});
}

Tensor KvCache::v(int32_t layer) const {
  KVB_ASSERT(layer >= 0 && layer < layout_.n_layer, "layer out of range");
  char* base = static_cast<char*>(buffer_->data()) + size_t(2 * layer + 1) * layer_bytes();
  return Tensor::make(layout_.dtype, base, {n_ctx_, layout_.n_head_kv, layout_.head_dim});
}

Result<KvPlan> KvCache::plan_append(int32_t n) const {
  if (n <= 0) return invalid_argument(fmt::format("kv cache: cannot append {} tokens", n));
  if (int64_t(n_tokens()) + n > n_ctx_) {
    return resource_exhausted(fmt::format("context full: {} tokens in the cache + {} new > context size {}",
                                          n_tokens(), n, n_ctx_));
  }
  return KvPlan{n_tokens(), n, next_pos()};
}

void KvCache::commit_append(const KvPlan& plan, std::span<const int32_t> tokens) {
  KVB_ASSERT(plan.first_cell == n_tokens() && plan.first_pos == next_pos(), "stale kv plan");
  KVB_ASSERT(int32_t(tokens.size()) == plan.n && n_tokens() + plan.n <= n_ctx_, "kv plan size");
  tokens_.insert(tokens_.end(), tokens.begin(), tokens.end());
}

Status KvCache::truncate(int32_t n) {
  if (n < 0 || n > n_tokens()) {
    return out_of_range(fmt::format("kv cache: cannot truncate {} tokens to {}", n_tokens(), n));
  }
  tokens_.resize(size_t(n));
  if (n == 0) pos0_ = 0;
  return Status::Ok();
}

void KvCache::clear() {
  tokens_.clear();
  pos0_ = 0;
}

namespace {

// n bytes from src to dst, each host or device memory of `backend`, enqueued on it.
Status copy_bytes(Backend& backend, void* dst, bool dst_host, const void* src, bool src_host, size_t n) {
  if (src_host && !dst_host) return backend.copy_from_host(dst, src, n);
  if (!src_host && dst_host) return backend.copy_to_host(dst, src, n);
  return backend.copy(dst, src, n);
}

}  // namespace

Status KvCache::copy_from(Backend& backend, const KvCache& src, int32_t n) {
  if (src.layout_ != layout_) return invalid_argument("kv cache copy: layouts differ");
  if (&src == this) return invalid_argument("kv cache copy: a cache cannot be copied into itself");
  if (n < 0 || n > src.n_tokens()) {
    return out_of_range(fmt::format("kv cache copy: {} of {} tokens", n, src.n_tokens()));
  }
  if (n > n_ctx_) return resource_exhausted(fmt::format("kv cache copy: {} tokens > capacity {}", n, n_ctx_));
  const size_t bytes = size_t(n) * layout_.cell_bytes();
  const bool dst_host = is_host(), src_host = src.is_host();
  for (int32_t l = 0; l < layout_.n_layer && bytes > 0; ++l) {
    KVB_RETURN_IF_ERROR(copy_bytes(backend, k(l).data, dst_host, src.k(l).data, src_host, bytes));
    KVB_RETURN_IF_ERROR(copy_bytes(backend, v(l).data, dst_host, src.v(l).data, src_host, bytes));
  }
  tokens_.assign(src.tokens_.begin(), src.tokens_.begin() + n);
  pos0_ = src.pos0_;
  return Status::Ok();
}

Status KvCache::append_cells(Backend& backend, const KvCache& src, int32_t first, int32_t n) {
  if (src.layout_ != layout_) return invalid_argument("kv cache append_cells: layouts differ");
  if (&src == this) return invalid_argument("kv cache append_cells: a cache cannot be appended to itself");
  if (first < 0 || n < 0 || int64_t(first) + n > src.n_tokens()) {
    return out_of_range(fmt::format("kv cache append_cells: cells [{}, {}) of {}", first, int64_t(first) + n,
                                    src.n_tokens()));
  }
  if (int64_t(n_tokens()) + n > n_ctx_) {
    return resource_exhausted(fmt::format("kv cache append_cells: {} tokens + {} more > capacity {}", n_tokens(), n,
                                          n_ctx_));
  }
  const int32_t pos = src.pos0_ + first;
  if (n_tokens() > 0 && pos != next_pos()) {
    return invalid_argument(fmt::format("kv cache append_cells: the cells start at position {}, not {}", pos,
                                        next_pos()));
  }
  if (n == 0) return Status::Ok();
  const size_t bytes = size_t(n) * layout_.cell_bytes();
  const bool dst_host = is_host(), src_host = src.is_host();
  for (int32_t l = 0; l < layout_.n_layer; ++l) {
    KVB_RETURN_IF_ERROR(copy_bytes(backend, k(l).slice_rows(n_tokens(), n).data, dst_host,
                                   src.k(l).slice_rows(first, n).data, src_host, bytes));
    KVB_RETURN_IF_ERROR(copy_bytes(backend, v(l).slice_rows(n_tokens(), n).data, dst_host,
                                   src.v(l).slice_rows(first, n).data, src_host, bytes));
  }
  if (n_tokens() == 0) pos0_ = pos;
  tokens_.insert(tokens_.end(), src.tokens_.begin() + first, src.tokens_.begin() + first + n);
  return Status::Ok();
}

Status KvCache::drop_front(Backend& backend, int32_t n) {
  if (n < 0 || n > n_tokens()) {
    return out_of_range(fmt::format("kv cache: cannot drop {} of {} tokens", n, n_tokens()));
  }
  if (n == 0) return Status::Ok();
  const int32_t rest = n_tokens() - n;
  // Pieces of at most n cells: each source range lies past its destination range.
  for (int32_t done = 0; done < rest;) {
    const int32_t m = std::min(n, rest - done);
    const size_t bytes = size_t(m) * layout_.cell_bytes();
    for (int32_t l = 0; l < layout_.n_layer; ++l) {
      for (const Tensor& t : {k(l), v(l)}) {
        KVB_RETURN_IF_ERROR(backend.copy(t.slice_rows(done, m).data, t.slice_rows(n + done, m).data, bytes));
      }
    }
    done += m;
  }
  tokens_.erase(tokens_.begin(), tokens_.begin() + n);
  pos0_ += n;
  return Status::Ok();
}

Status KvCache::set_pos0(int32_t pos0) {
  if (n_tokens() != 0) {
    return failed_precondition(fmt::format("kv cache: cannot set pos0 of a cache holding {} tokens", n_tokens()));
  }
  if (pos0 < 0) return invalid_argument(fmt::format("kv cache: pos0 must be >= 0, got {}", pos0));
  pos0_ = pos0;
  return Status::Ok();
}

Status KvCache::append_shifted(Backend& backend, const KvCache& src, const RopeParams& rope) {
  if (src.layout_ != layout_) return invalid_argument("kv cache append: layouts differ");
  if (layout_.dtype != DType::kF32) {
    return invalid_argument(fmt::format("kv cache append: only f32 caches can be shifted, got {}",
                                        dtype_name(layout_.dtype)));
  }
  if (&src == this) return invalid_argument("kv cache append: a cache cannot be appended to itself");
  if (!src.is_host() && is_host()) {
    return invalid_argument("kv cache append: a device cache cannot be appended to a host cache");
  }
  const int32_t n = src.n_tokens();
  if (n == 0) return Status::Ok();
  if (int64_t(n_tokens()) + n > n_ctx_) {
    return resource_exhausted(fmt::format("kv cache append: {} tokens + {} more > context size {}", n_tokens(), n,
                                          n_ctx_));
  }
  if (int64_t(next_pos()) + n > INT32_MAX) {
    return resource_exhausted(fmt::format("kv cache append: positions {} + {} pass INT32_MAX", next_pos(), n));
  }
  const int64_t delta = int64_t(next_pos()) - src.pos0();

  // Copy into the free cells (scratch until committed), then turn every copied key by the same
  // angle: rope at "position" delta. The positions live in backend memory; they and the host
  // staging vector must outlive the enqueued ops, hence the synchronize on every path.
  std::unique_ptr<Buffer> pos_buf;
  std::vector<int32_t> deltas;
  auto enqueue = [&]() -> Status {
    const size_t bytes = size_t(n) * layout_.cell_bytes();
    const bool dst_host = is_host(), src_host = src.is_host();
    for (int32_t l = 0; l < layout_.n_layer; ++l) {
      void* k_free = k(l).slice_rows(n_tokens(), n).data;
      void* v_free = v(l).slice_rows(n_tokens(), n).data;
      KVB_RETURN_IF_ERROR(copy_bytes(backend, k_free, dst_host, src.k(l).data, src_host, bytes));
      KVB_RETURN_IF_ERROR(copy_bytes(backend, v_free, dst_host, src.v(l).data, src_host, bytes));
    }
    if (delta == 0) return Status::Ok();
    KVB_ASSIGN_OR_RETURN(pos_buf, backend.device().buffer_type().alloc(size_t(n) * sizeof(int32_t)));
    deltas.assign(static_cast<size_t>(n), int32_t(delta));
    KVB_RETURN_IF_ERROR(backend.copy_from_host(pos_buf->data(), deltas.data(), size_t(n) * sizeof(int32_t)));
    const Tensor pos = Tensor::make(DType::kI32, pos_buf->data(), {n});
    for (int32_t l = 0; l < layout_.n_layer; ++l) {
      KVB_RETURN_IF_ERROR(backend.rope(k(l).slice_rows(n_tokens(), n), pos, rope));
    }
    return Status::Ok();
  };
  const Status enqueued = enqueue();
  const Status synced = backend.synchronize();
  KVB_RETURN_IF_ERROR(enqueued);
  KVB_RETURN_IF_ERROR(synced);
  tokens_.insert(tokens_.end(), src.tokens_.begin(), src.tokens_.end());
  return Status::Ok();
}

Status copy_cache(const KvCache& src, KvCache& dst, Backend& backend) {
  const Status enqueued = dst.copy_from(backend, src, src.n_tokens());
  const Status synced = backend.synchronize();  // also on error: nothing may still be in flight
  KVB_RETURN_IF_ERROR(enqueued);
  return synced;
}

Result<std::unique_ptr<KvCache>> clone_cache(const KvCache& src, const BufferType& buffer_type, Backend& backend,
                                             int32_t n_ctx) {
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> dst,
                       KvCache::create(buffer_type, src.layout(), std::max({n_ctx, src.n_tokens(), int32_t(1)})));
  KVB_RETURN_IF_ERROR(copy_cache(src, *dst, backend));
  return dst;
}

}  // namespace kvb
