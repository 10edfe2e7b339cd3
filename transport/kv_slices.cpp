#include "transport/kv_slices.h"

#include <fmt/format.h>

#include <algorithm>

namespace kvb::transport {

namespace {

Status check_list(const std::vector<uint32_t>& l, uint32_t n_layer, const char* what) {
  for (size_t i = 0; i < l.size(); ++i) {
    if (l[i] >= n_layer) return invalid_argument(fmt::format("layer set {}: layer {} >= n_layer {}", what, l[i], n_layer));
    if (i > 0 && l[i] <= l[i - 1]) return invalid_argument(fmt::format("layer set {}: not sorted or duplicated", what));
  }
  return Status::Ok();
}

}  // namespace

uint64_t kv_slice_tag(uint32_t layer, bool is_v, uint32_t token_begin) {
  return (uint64_t(0x4B) << 56) | (uint64_t(layer & 0x7fffffu) << 33) | (uint64_t(is_v) << 32) | token_begin;
}

Result<std::vector<KvSlice>> plan_kv_slices(const KvLayout& layout, uint32_t n_tokens,
                                            const std::optional<KvLayerSet>& layers, uint32_t chunk_tokens) {
  if (layout.n_layer <= 0 || layout.n_layer > (1 << 23) || layout.n_head_kv <= 0 || layout.head_dim <= 0) {
    return invalid_argument("plan_kv_slices: bad layout");
  }
  if (n_tokens == 0) return invalid_argument("plan_kv_slices: no tokens");
  const uint32_t n_layer = uint32_t(layout.n_layer);
  if (layers) {
    KVB_RETURN_IF_ERROR(check_list(layers->k, n_layer, "k"));
    KVB_RETURN_IF_ERROR(check_list(layers->v, n_layer, "v"));
  }
  const uint32_t chunk = chunk_tokens == 0 ? n_tokens : std::min(chunk_tokens, n_tokens);
  std::vector<KvSlice> out;
  for (uint32_t l = 0; l < n_layer; ++l) {
    for (const bool is_v : {false, true}) {
      if (layers && !layers->contains(l, is_v)) continue;
      for (uint32_t t = 0; t < n_tokens; t += chunk) {
        KvSlice s;
        s.layer = l;
        s.is_v = is_v;
        s.token_begin = t;
        s.token_count = std::min(chunk, n_tokens - t);
        s.tag = kv_slice_tag(l, is_v, t);
        out.push_back(s);
      }
    }
  }
  return out;
}

KvRegion cache_region(const KvCache& cache, int device) {
  KvRegion r;
  r.ptr = cache.k(0).data;
  r.bytes = cache.bytes_allocated();
  r.is_device = !cache.is_host();
  r.device = r.is_device ? device : -1;
  return r;
}

Result<ByteRange> slice_bytes(const KvCache& cache, const KvSlice& s) {
  const KvLayout& lay = cache.layout();
  if (s.layer >= uint32_t(lay.n_layer) || s.token_count == 0 || uint64_t(s.token_begin) + s.token_count > uint64_t(cache.n_ctx())) {
    return invalid_argument(fmt::format("slice (layer {}, {}, cells [{}, {})) is outside the cache ({} layers, {} cells)",
                                        s.layer, s.is_v ? "V" : "K", s.token_begin,
                                        uint64_t(s.token_begin) + s.token_count, lay.n_layer, cache.n_ctx()));
  }
  const Tensor t = s.is_v ? cache.v(int32_t(s.layer)) : cache.k(int32_t(s.layer));
  const char* base = static_cast<const char*>(cache.k(0).data);
  ByteRange b;
  b.offset = size_t(static_cast<const char*>(t.data) - base) + size_t(s.token_begin) * lay.cell_bytes();
  b.bytes = size_t(s.token_count) * lay.cell_bytes();
  KVB_ASSERT(b.offset + b.bytes <= cache.bytes_allocated(), "a KV slice lies outside its cache buffer");
  return b;
}

}  // namespace kvb::transport
