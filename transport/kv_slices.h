// The KV meaning of transfers: which (layer, K|V, token range) slices a pull moves, their tags,
// and where each lies in a KvCache's buffer.
//
// Both endpoints compute the same plan from what the negotiation fixed (layout, n_tokens, layer
// set, chunk size), so they post matching tags in the same order — what transports without tag
// matching (NCCL, caps().any_order false) need. The order is the wire encoder's: layer by layer,
// K then V, token chunks in order; a consumer (the fuser) can start on a layer once its slices
// are done.
//
// A slice's bytes are contiguous in a KvCache (engine/kv_cache.h: cell-major per layer and K/V),
// so one slice is one transfer of one byte range. Sharer and receiver caches may have different
// capacities (n_ctx): the offsets differ, the sizes and tags do not. Raw transports move the
// cache dtype as is: both layouts must be equal (the negotiation checks; INVALID_ARGUMENT here
// when a slice does not fit).
#pragma once

#include <cstdint>
#include <optional>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/kv_wire.h"
#include "kernels/status.h"
#include "transport/kv_transport.h"

namespace kvb::transport {

struct KvSlice {
  uint32_t layer = 0;
  bool is_v = false;
  uint32_t token_begin = 0;
  uint32_t token_count = 0;
  uint64_t tag = 0;  // kv_slice_tag(layer, is_v, token_begin)

  bool operator==(const KvSlice&) const = default;
};

// Tag of a slice: 0x4B ('K') in the top byte, layer in bits 33..55, K/V in bit 32, the first token
// in bits 0..31. Distinct for distinct slices; never 0.
uint64_t kv_slice_tag(uint32_t layer, bool is_v, uint32_t token_begin);

// The slices of a pull: every carried (layer, K|V) of `layers` (all when absent), each cut into
// runs of `chunk_tokens` cells (0: one run per slice). INVALID_ARGUMENT for n_tokens == 0, a bad
// layout, or a layer set that is unsorted, duplicated or out of range.
Result<std::vector<KvSlice>> plan_kv_slices(const KvLayout& layout, uint32_t n_tokens,
                                            const std::optional<KvLayerSet>& layers = std::nullopt,
                                            uint32_t chunk_tokens = 0);

// The whole buffer of `cache` as a region (its first layer's K cells start it). `device`: the CUDA
// ordinal of a device cache, ignored for a host cache. The cache keeps owning the memory.
KvRegion cache_region(const KvCache& cache, int device = -1);

struct ByteRange {
  size_t offset = 0;  // from cache_region(cache).ptr
  size_t bytes = 0;
};

// Where `slice` lies in cache_region(cache). The cells need not be committed yet (a receiver fills
// cells [0, n) reserved by plan_append(n), then commits). INVALID_ARGUMENT when the slice is
// outside the layout or past n_ctx.
Result<ByteRange> slice_bytes(const KvCache& cache, const KvSlice& slice);

}  // namespace kvb::transport
