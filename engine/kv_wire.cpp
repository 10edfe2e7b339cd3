#include "engine/kv_wire.h"
#include "engine/kv_wire_values.h"

#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <bit>
#include <climits>
#include <cmath>
#include <cstring>
#include <limits>
#include <new>

#include <fmt/format.h>

namespace kvb {

// The payload layouts below are little-endian, and the codec memcpy's host values.
static_assert(std::endian::native == std::endian::little, "kv_wire assumes a little-endian host");

namespace {

constexpr uint64_t kAutoChunkBytes = uint64_t(1) << 20;  // raw payload per chunk when chunk_tokens == 0
constexpr int kZstdLevel = 1;  // fast: a chunk must compress faster than loopback gRPC moves it

bool valid_dtype(WireDType t) {
  switch (t) {
    case WireDType::kF32:
    case WireDType::kF16:
    case WireDType::kBF16:
    case WireDType::kInt8: return true;
  }
  return false;
}

bool valid_compression(WireCompression c) { return c == WireCompression::kNone || c == WireCompression::kZstd; }

// a * b, saturating at UINT64_MAX (never a real size, so it fails every equality check).
uint64_t mul_sat(uint64_t a, uint64_t b) {
  uint64_t r;
  return __builtin_mul_overflow(a, b, &r) ? UINT64_MAX : r;
}

uint64_t digest_of(const std::vector<uint64_t>& checksums) {
  // u64 little-endian each (the host order, asserted above).
  return XXH3_64bits(checksums.data(), checksums.size() * sizeof(uint64_t));
}

// Per-thread zstd contexts: reused across chunks (a context costs ~100 µs to set up), never shared.
struct ZstdCFree {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct ZstdDFree {
  void operator()(ZSTD_DCtx* c) const { ZSTD_freeDCtx(c); }
};
ZSTD_CCtx* thread_cctx() {
  thread_local std::unique_ptr<ZSTD_CCtx, ZstdCFree> ctx(ZSTD_createCCtx());
  return ctx.get();
}
ZSTD_DCtx* thread_dctx() {
  thread_local std::unique_ptr<ZSTD_DCtx, ZstdDFree> ctx(ZSTD_createDCtx());
  return ctx.get();
}

// INVALID_ARGUMENT unless both lists are sorted, unique and < n_layer.
Status check_layer_set(const KvLayerSet& set, uint32_t n_layer, std::string_view who) {
  for (const auto* list : {&set.k, &set.v}) {
    for (size_t i = 0; i < list->size(); ++i) {
      const uint32_t l = (*list)[i];
      if (l >= n_layer) return invalid_argument(fmt::format("{}: layer {} of {} in the layer set", who, l, n_layer));
      if (i > 0 && (*list)[i - 1] >= l) {
        return invalid_argument(fmt::format("{}: the layer set's {} list is not sorted and unique", who,
                                            list == &set.k ? "K" : "V"));
      }
    }
  }
  return Status::Ok();
}

}  // namespace

bool KvLayerSet::contains(uint32_t layer, bool is_v) const {
  const std::vector<uint32_t>& list = is_v ? v : k;
  return std::binary_search(list.begin(), list.end(), layer);
}

// ---- header ----

std::string_view wire_dtype_name(WireDType t) {
  switch (t) {
    case WireDType::kF32: return "f32";
    case WireDType::kF16: return "f16";
    case WireDType::kBF16: return "bf16";
    case WireDType::kInt8: return "int8";
  }
  return "?";
}

Result<WireDType> parse_wire_dtype(std::string_view name) {
  for (const WireDType t : kWireDTypes) {
    if (wire_dtype_name(t) == name) return t;
  }
  return invalid_argument(fmt::format("unknown wire dtype '{}' (f32, f16, bf16 or int8)", name));
}

KvWireHeader cache_header(const KvCache& cache, const ModelIdentity& id, WireDType dtype,
                          WireCompression compression, const std::optional<KvLayerSet>& layers, uint32_t n_chunks) {
  const KvLayout& lay = cache.layout();
  KvWireHeader h;
  h.format_version = kKvWireVersion;
  h.model = id;
  h.n_layer = uint32_t(lay.n_layer);
  h.n_head_kv = uint32_t(lay.n_head_kv);
  h.head_dim = uint32_t(lay.head_dim);
  h.dtype = dtype;
  h.compression = compression;
  h.tokens.assign(cache.tokens().begin(), cache.tokens().end());
  h.pos0 = cache.pos0();
  h.layers = layers;
  h.total_bytes = wire_payload_bytes(dtype, h.n_head_kv, h.head_dim, uint32_t(cache.n_tokens())) * h.n_slices();
  h.n_chunks = n_chunks;
  return h;
}

KvLayout received_layout(const KvWireHeader& header) {
  return KvLayout{int32_t(header.n_layer), int32_t(header.n_head_kv), int32_t(header.head_dim), DType::kF32};
}

int32_t received_cells(const KvWireHeader& header, const KvWireLimits& limits, int32_t n_ctx_min, int32_t n_ctx_extra) {
  const uint64_t n_tokens = header.tokens.size();
  const uint64_t cell_bytes = uint64_t(header.n_head_kv) * header.head_dim * 4 * 2 * header.n_layer;
  const uint64_t max_cells = std::min<uint64_t>({limits.max_tokens, limits.max_bytes / cell_bytes, INT32_MAX});
  const uint64_t with_extra = std::min<uint64_t>(n_tokens + uint64_t(std::max(n_ctx_extra, 0)), max_cells);
  return std::max({int32_t(n_tokens), int32_t(with_extra), n_ctx_min, int32_t(1)});
}

uint64_t wire_payload_bytes(WireDType dtype, uint32_t n_head_kv, uint32_t head_dim, uint32_t count) {
  const uint64_t elems = uint64_t(n_head_kv) * head_dim;  // < 2^64: two u32 factors
  switch (dtype) {
    case WireDType::kF32: return mul_sat(mul_sat(elems, 4), count);
    case WireDType::kF16:
    case WireDType::kBF16: return mul_sat(mul_sat(elems, 2), count);
    case WireDType::kInt8: {
      const uint64_t per_cell = elems + uint64_t(n_head_kv) * 4;  // q + one f32 scale per head
      return per_cell < elems ? UINT64_MAX : mul_sat(per_cell, count);
    }
  }
  return UINT64_MAX;
}

// ---- encoder ----

Result<std::unique_ptr<KvWireEncoder>> KvWireEncoder::create(const KvCache& cache, const ModelIdentity& id,
                                                             WireDType dtype, WireCompression compression,
                                                             uint32_t chunk_tokens,
                                                             const std::optional<KvLayerSet>& layers) {
  if (!cache.is_host()) return invalid_argument("kv wire encode: the cache must be in host memory");
  if (!valid_dtype(dtype)) return invalid_argument("kv wire encode: unknown wire dtype");
  if (!valid_compression(compression)) return invalid_argument("kv wire encode: unknown compression");
  const KvLayout& lay = cache.layout();
  if (uint32_t(lay.n_layer) != id.n_layer || uint32_t(lay.n_head_kv) != id.n_head_kv ||
      uint32_t(lay.head_dim) != id.head_dim) {
    return invalid_argument(fmt::format(
        "kv wire encode: cache layout ({} layers, {} kv heads x {}) does not match the model ({}, {} x {})",
        lay.n_layer, lay.n_head_kv, lay.head_dim, id.n_layer, id.n_head_kv, id.head_dim));
  }
  if (lay.dtype != DType::kF32 && lay.dtype != DType::kF16) {
    return invalid_argument(fmt::format("kv wire encode: unsupported cache dtype {}", dtype_name(lay.dtype)));
  }

  if (layers) KVB_RETURN_IF_ERROR(check_layer_set(*layers, id.n_layer, "kv wire encode"));

  std::unique_ptr<KvWireEncoder> e(new KvWireEncoder(cache));
  const uint32_t n_tokens = uint32_t(cache.n_tokens());
  const uint64_t n_slices = layers ? layers->size() : uint64_t(2) * id.n_layer;
  const uint64_t cell_bytes = wire_payload_bytes(dtype, id.n_head_kv, id.head_dim, 1);
  if (chunk_tokens == 0) chunk_tokens = uint32_t(std::clamp<uint64_t>(kAutoChunkBytes / cell_bytes, 1, UINT32_MAX));
  chunk_tokens = std::max<uint32_t>(1, std::min(chunk_tokens, n_tokens));
  const uint64_t slices = (uint64_t(n_tokens) + chunk_tokens - 1) / chunk_tokens;
  const uint64_t n_chunks = slices * n_slices;
  if (n_chunks > UINT32_MAX) {
    return invalid_argument(fmt::format("kv wire encode: {} chunks; use larger chunks", n_chunks));
  }

  e->header_ = cache_header(cache, id, dtype, compression, layers, uint32_t(n_chunks));
  e->chunk_tokens_ = chunk_tokens;
  e->zero_copy_ = dtype == WireDType::kF32 && compression == WireCompression::kNone && lay.dtype == DType::kF32;
  e->checksums_.reserve(size_t(n_chunks));
  e->skip_uncarried();
  return e;
}

void KvWireEncoder::skip_uncarried() {
  while (layer_ < header_.n_layer && !header_.carries(layer_, is_v_)) {
    if (!is_v_) {
      is_v_ = true;
    } else {
      is_v_ = false;
      ++layer_;
    }
  }
}

bool KvWireEncoder::peek(uint32_t& layer, bool& is_v) const {
  if (layer_ >= header_.n_layer || header_.tokens.empty()) return false;
  layer = layer_;
  is_v = is_v_;
  return true;
}

bool KvWireEncoder::next_slice(KvWireChunkView& out, Tensor& cells) {
  const uint32_t n_tokens = uint32_t(header_.tokens.size());
  if (layer_ >= header_.n_layer || n_tokens == 0) return false;

  const uint32_t count = std::min(chunk_tokens_, n_tokens - token_);
  out = KvWireChunkView{};
  out.layer = layer_;
  out.is_v = is_v_;
  out.token_begin = token_;
  out.token_count = count;
  out.raw_size = wire_payload_bytes(header_.dtype, header_.n_head_kv, header_.head_dim, count);
  cells = (is_v_ ? cache_.v(int32_t(layer_)) : cache_.k(int32_t(layer_))).slice_rows(token_, count);

  token_ += count;
  if (token_ >= n_tokens) {
    token_ = 0;
    if (!is_v_) {
      is_v_ = true;
    } else {
      is_v_ = false;
      ++layer_;
    }
    skip_uncarried();
  }
  return true;
}

void KvWireEncoder::encode_into(const Tensor& cells, uint32_t count, std::string& dst) {
  const int64_t n_head_kv = header_.n_head_kv, head_dim = header_.head_dim;
  const uint64_t raw = wire_payload_bytes(header_.dtype, header_.n_head_kv, header_.head_dim, count);
  // Source cells as f32: the cache itself when it is f32, else a converted copy.
  const float* x = cells.as<const float>();
  if (cells.dtype != DType::kF32) {
    converted_.resize(static_cast<size_t>(int64_t(count) * n_head_kv * head_dim));
    to_f32(cells.dtype, cells.data, converted_.data(), int64_t(converted_.size()));
    x = converted_.data();
  }
  if (header_.compression == WireCompression::kZstd) {
    scratch_.resize(size_t(raw));
    kv_wire_values::encode(header_.dtype, x, int64_t(count) * n_head_kv, head_dim, scratch_.data());
    dst.resize(ZSTD_compressBound(size_t(raw)));
    const size_t z =
        ZSTD_compressCCtx(thread_cctx(), dst.data(), dst.size(), scratch_.data(), scratch_.size(), kZstdLevel);
    // compressBound always suffices; an error here is a bug (or a failed context allocation).
    KVB_ASSERT(!ZSTD_isError(z), fmt::format("zstd compress failed: {}", ZSTD_getErrorName(z)));
    dst.resize(z);
  } else {
    dst.resize(size_t(raw));
    kv_wire_values::encode(header_.dtype, x, int64_t(count) * n_head_kv, head_dim, dst.data());
  }
}

void KvWireEncoder::record(KvWireChunkView& out, std::string_view payload) {
  out.payload = payload;
  out.xxh3 = XXH3_64bits(payload.data(), payload.size());
  checksums_.push_back(out.xxh3);
  ++emitted_;
}

bool KvWireEncoder::next(KvWireChunk& out) {
  KvWireChunkView v;
  Tensor cells;
  if (!next_slice(v, cells)) return false;
  encode_into(cells, v.token_count, out.payload);
  record(v, out.payload);
  static_cast<KvWireSlice&>(out) = v;
  return true;
}

bool KvWireEncoder::next(KvWireChunkView& out) {
  Tensor cells;
  if (!next_slice(out, cells)) return false;
  if (zero_copy_) {
    record(out, std::string_view(static_cast<const char*>(cells.data), size_t(out.raw_size)));
  } else {
    encode_into(cells, out.token_count, payload_);
    record(out, payload_);
  }
  return true;
}

uint64_t KvWireEncoder::digest() const { return digest_of(checksums_); }

// ---- decoder ----

Status KvWireDecoder::validate(const KvWireHeader& header, const ModelIdentity& expected,
                               const KvWireLimits& limits) {
  if (header.format_version != kKvWireVersion) {
    return invalid_argument(fmt::format("kv wire: unsupported format version {} (this agent speaks {})",
                                        header.format_version, kKvWireVersion));
  }
  // Identity first: a cache of another model is a precondition failure, whatever else is wrong.
  if (const auto diff = find_difference(expected, header.model)) {
    return failed_precondition(fmt::format("kv wire: the cache comes from a different model: {} differs "
                                           "(this model: {}, the cache's: {})",
                                           diff->field, diff->expected, diff->got));
  }
  if (expected.n_layer == 0 || expected.n_layer > 1u << 16 || expected.n_head_kv == 0 || expected.head_dim == 0 ||
      uint64_t(expected.n_head_kv) * expected.head_dim > 1u << 24) {
    return invalid_argument("kv wire decode: the receiver's model identity has no usable layout");
  }
  if (header.n_layer != expected.n_layer || header.n_head_kv != expected.n_head_kv ||
      header.head_dim != expected.head_dim) {
    return invalid_argument(fmt::format(
        "kv wire: header layout ({} layers, {} kv heads x {}) contradicts its model ({} layers, {} x {})",
        header.n_layer, header.n_head_kv, header.head_dim, expected.n_layer, expected.n_head_kv,
        expected.head_dim));
  }
  if (!valid_dtype(header.dtype)) return invalid_argument("kv wire: unknown wire dtype");
  if (!valid_compression(header.compression)) return invalid_argument("kv wire: unknown compression");
  if (header.layers) KVB_RETURN_IF_ERROR(check_layer_set(*header.layers, header.n_layer, "kv wire"));
  const uint64_t n_slices = header.n_slices();

  const uint64_t n_tokens = header.tokens.size();
  if (n_tokens > limits.max_tokens || n_tokens > uint64_t(INT32_MAX)) {
    return resource_exhausted(fmt::format("kv wire: the cache holds {} tokens, over the limit of {}", n_tokens,
                                          std::min<uint64_t>(limits.max_tokens, INT32_MAX)));
  }
  if (header.pos0 < 0 || int64_t(header.pos0) + int64_t(n_tokens) > int64_t(INT32_MAX)) {
    return invalid_argument(fmt::format("kv wire: positions {} .. {} + {} out of range", header.pos0,
                                        header.pos0, n_tokens));
  }
  for (size_t i = 0; i < header.tokens.size(); ++i) {
    const int32_t t = header.tokens[i];
    if (t < 0 || uint32_t(t) >= expected.n_vocab) {
      return invalid_argument(fmt::format("kv wire: token {} at cell {} is outside the vocabulary [0, {})", t, i,
                                          expected.n_vocab));
    }
  }
  const uint64_t total =
      mul_sat(wire_payload_bytes(header.dtype, header.n_head_kv, header.head_dim, uint32_t(n_tokens)), n_slices);
  if (header.total_bytes != total) {
    return invalid_argument(fmt::format("kv wire: total_bytes {} but {} tokens of {} make {}", header.total_bytes,
                                        n_tokens, wire_dtype_name(header.dtype), total));
  }
  // The decoded cache is f32 whatever the wire dtype: bound what we allocate, not what travels.
  const uint64_t cache_bytes =
      mul_sat(mul_sat(uint64_t(header.n_head_kv) * header.head_dim * 4, n_tokens), uint64_t(2) * header.n_layer);
  if (cache_bytes > limits.max_bytes) {
    return resource_exhausted(fmt::format("kv wire: the cache needs {} bytes, over the limit of {}", cache_bytes,
                                          limits.max_bytes));
  }
  const uint64_t min_chunks = n_tokens == 0 ? 0 : n_slices;
  const uint64_t max_chunks = n_slices * n_tokens;  // one cell each
  if (header.n_chunks < min_chunks || header.n_chunks > max_chunks) {
    return invalid_argument(fmt::format("kv wire: {} chunks cannot carry {} K/V slices x {} tokens",
                                        header.n_chunks, n_slices, n_tokens));
  }
  return Status::Ok();
}

Status KvWireDecoder::init_bookkeeping(const KvWireHeader& header) {
  const size_t n_tokens = header.tokens.size();
  try {
    covered_.assign(size_t(header.n_layer) * 2 * n_tokens, 0);
    filled_.assign(size_t(header.n_layer) * 2, 0);
    checksums_.reserve(header.n_chunks);
    header_ = header;
  } catch (const std::bad_alloc&) {
    return resource_exhausted("kv wire decode: out of memory for the cache's bookkeeping");
  }
  // Slices the stream does not carry count as received: add() rejects chunks for them, finish()
  // does not wait for them.
  for (uint32_t l = 0; l < header.n_layer; ++l) {
    for (const bool is_v : {false, true}) {
      if (header.carries(l, is_v)) continue;
      const size_t slice = size_t(l) * 2 + (is_v ? 1 : 0);
      std::fill_n(covered_.begin() + std::ptrdiff_t(slice * n_tokens), n_tokens, uint8_t(1));
      filled_[slice] = uint32_t(n_tokens);
    }
  }
  return Status::Ok();
}

Result<std::unique_ptr<KvWireDecoder>> KvWireDecoder::create(const KvWireHeader& header,
                                                             const ModelIdentity& expected,
                                                             const BufferType& buffer_type, int32_t n_ctx_min,
                                                             const KvWireLimits& limits, int32_t n_ctx_extra) {
  if (!buffer_type.is_host()) return invalid_argument("kv wire decode: the cache must be allocated in host memory");
  KVB_RETURN_IF_ERROR(validate(header, expected, limits));
  const uint64_t n_tokens = header.tokens.size();

  std::unique_ptr<KvWireDecoder> d(new KvWireDecoder());
  // Free cells for the receiver's own tokens, within the same limits as the received ones.
  KVB_ASSIGN_OR_RETURN(d->cache_, KvCache::create(buffer_type, received_layout(header),
                                                  received_cells(header, limits, n_ctx_min, n_ctx_extra)));
  KVB_RETURN_IF_ERROR(d->cache_->set_pos0(header.pos0));
  KVB_RETURN_IF_ERROR(d->init_bookkeeping(header));
  // The tokens are known from the header: commit them now so that cache() describes the sequence
  // while it fills (nobody else sees the cache before finish()).
  if (n_tokens > 0) {
    KVB_ASSIGN_OR_RETURN(const KvPlan plan, d->cache_->plan_append(int32_t(n_tokens)));
    d->cache_->commit_append(plan, header.tokens);
  }
  // Slices that do not travel read as zeros, not as whatever the allocator left there.
  for (uint32_t l = 0; l < header.n_layer; ++l) {
    for (const bool is_v : {false, true}) {
      if (header.carries(l, is_v)) continue;
      const Tensor t = is_v ? d->cache_->v_used(int32_t(l)) : d->cache_->k_used(int32_t(l));
      std::memset(t.data, 0, t.nbytes());
    }
  }
  d->cells_ = d->cache_.get();
  return d;
}

Result<std::unique_ptr<KvWireDecoder>> KvWireDecoder::create_into(const KvWireHeader& header,
                                                                  const ModelIdentity& expected, KvCache& target) {
  KvWireLimits limits;
  limits.max_tokens = UINT32_MAX;
  limits.max_bytes = UINT64_MAX;  // nothing is allocated: the target exists
  KVB_RETURN_IF_ERROR(validate(header, expected, limits));
  if (!target.is_host() || target.layout() != received_layout(header)) {
    return invalid_argument("kv wire decode: the target cache is not a host f32 cache of the stream's layout");
  }
  if (!std::equal(target.tokens().begin(), target.tokens().end(), header.tokens.begin(), header.tokens.end()) ||
      target.pos0() != header.pos0) {
    return invalid_argument(fmt::format(
        "kv wire decode: the stream's {} tokens at position {} are not the target cache's {} tokens at {}",
        header.tokens.size(), header.pos0, target.n_tokens(), target.pos0()));
  }
  std::unique_ptr<KvWireDecoder> d(new KvWireDecoder());
  KVB_RETURN_IF_ERROR(d->init_bookkeeping(header));
  d->cells_ = &target;
  return d;
}

bool KvWireDecoder::complete(uint32_t layer, bool is_v) const {
  if (layer >= header_.n_layer) return false;
  return filled_[size_t(layer) * 2 + (is_v ? 1 : 0)] == header_.tokens.size();
}

KvWireChunkView view_of(const KvWireChunk& c) {
  KvWireChunkView v;
  static_cast<KvWireSlice&>(v) = c;
  v.payload = c.payload;
  return v;
}

uint64_t KvWireChunkView::payload_size() const {
  if (pieces.empty()) return payload.size();
  uint64_t n = 0;
  for (std::string_view p : pieces) n += p.size();
  return n;
}

void KvWireDecoder::HashStateFree::operator()(void* state) const {
  XXH3_freeState(static_cast<XXH3_state_t*>(state));
}

uint64_t KvWireDecoder::checksum(const KvWireChunkView& chunk) {
  if (chunk.pieces.empty()) return XXH3_64bits(chunk.payload.data(), chunk.payload.size());
  if (chunk.pieces.size() == 1) return XXH3_64bits(chunk.pieces[0].data(), chunk.pieces[0].size());
  if (hash_state_ == nullptr) {
    hash_state_.reset(XXH3_createState());
    KVB_ASSERT(hash_state_ != nullptr, "XXH3_createState failed");
  }
  auto* st = static_cast<XXH3_state_t*>(hash_state_.get());
  XXH3_64bits_reset(st);
  for (std::string_view p : chunk.pieces) {
    if (!p.empty()) XXH3_64bits_update(st, p.data(), p.size());
  }
  return XXH3_64bits_digest(st);
}

Status KvWireDecoder::add(const KvWireChunkView& chunk) {
  if (done_) return failed_precondition("kv wire: the decoder has already finished");
  const uint32_t n_tokens = uint32_t(header_.tokens.size());
  if (checksums_.size() >= header_.n_chunks) {
    return invalid_argument(fmt::format("kv wire: more data chunks than the {} the header announced",
                                        header_.n_chunks));
  }
  if (chunk.layer >= header_.n_layer) {
    return invalid_argument(fmt::format("kv wire: chunk for layer {} of {}", chunk.layer, header_.n_layer));
  }
  if (!header_.carries(chunk.layer, chunk.is_v)) {
    return invalid_argument(fmt::format("kv wire: chunk for layer {} {}, which the header's layer set leaves out",
                                        chunk.layer, chunk.is_v ? "V" : "K"));
  }
  if (chunk.token_count == 0 || uint64_t(chunk.token_begin) + chunk.token_count > n_tokens) {
    return invalid_argument(fmt::format("kv wire: chunk cells [{}, {} + {}) outside the cache's {} tokens",
                                        chunk.token_begin, chunk.token_begin, chunk.token_count, n_tokens));
  }
  const uint64_t raw = wire_payload_bytes(header_.dtype, header_.n_head_kv, header_.head_dim, chunk.token_count);
  if (chunk.raw_size != raw) {
    return invalid_argument(fmt::format("kv wire: chunk raw_size {} but {} cells of {} make {}", chunk.raw_size,
                                        chunk.token_count, wire_dtype_name(header_.dtype), raw));
  }
  const bool zstd = header_.compression == WireCompression::kZstd;
  const uint64_t size = chunk.payload_size();
  if (!zstd && size != raw) {
    return invalid_argument(fmt::format("kv wire: chunk payload of {} bytes, expected {}", size, raw));
  }
  if (zstd && size > ZSTD_compressBound(size_t(raw))) {
    return invalid_argument(fmt::format("kv wire: compressed chunk of {} bytes for {} raw bytes", size, raw));
  }
  uint8_t* covered = covered_.data() + (size_t(chunk.layer) * 2 + (chunk.is_v ? 1 : 0)) * n_tokens;
  for (uint32_t t = chunk.token_begin; t < chunk.token_begin + chunk.token_count; ++t) {
    if (covered[t]) {
      return invalid_argument(fmt::format("kv wire: chunk layer {} {} cells [{}, {}) overlaps cell {} already received",
                                          chunk.layer, chunk.is_v ? "V" : "K", chunk.token_begin,
                                          chunk.token_begin + chunk.token_count, t));
    }
  }
  if (checksum(chunk) != chunk.xxh3) {
    return data_loss(fmt::format("kv wire: checksum mismatch in chunk layer {} {} cells [{}, {})", chunk.layer,
                                 chunk.is_v ? "V" : "K", chunk.token_begin, chunk.token_begin + chunk.token_count));
  }

  const Tensor cells =
      (chunk.is_v ? cells_->v(int32_t(chunk.layer)) : cells_->k(int32_t(chunk.layer))).slice_rows(chunk.token_begin,
                                                                                                 chunk.token_count);
  const char* src = chunk.pieces.empty() ? chunk.payload.data() : chunk.pieces[0].data();
  bool written = false;  // the cells already hold the values
  if (chunk.pieces.size() > 1) {
    if (!zstd && header_.dtype == WireDType::kF32) {
      // f32 payload bytes are the cells' bytes: copy each piece straight to its place.
      char* dst = static_cast<char*>(cells.data);
      for (std::string_view p : chunk.pieces) {
        if (!p.empty()) std::memcpy(dst, p.data(), p.size());
        dst += p.size();
      }
      written = true;
    } else {
      try {
        gathered_.resize(size_t(size));
      } catch (const std::bad_alloc&) {
        return resource_exhausted("kv wire: out of memory for a chunk");
      }
      size_t off = 0;
      for (std::string_view p : chunk.pieces) {
        if (!p.empty()) std::memcpy(gathered_.data() + off, p.data(), p.size());
        off += p.size();
      }
      src = gathered_.data();
    }
  }
  if (zstd) {
    ZSTD_DCtx* dctx = thread_dctx();
    if (dctx == nullptr) return resource_exhausted("kv wire: cannot create a zstd context");
    try {
      scratch_.resize(size_t(raw));
    } catch (const std::bad_alloc&) {
      return resource_exhausted("kv wire: out of memory for a chunk");
    }
    // Single-shot into a buffer of exactly raw bytes: a frame that inflates to more is an error,
    // and no window beyond that buffer is ever allocated.
    const size_t r = ZSTD_decompressDCtx(dctx, scratch_.data(), scratch_.size(), src, size_t(size));
    if (ZSTD_isError(r) || r != raw) {
      return data_loss(fmt::format("kv wire: chunk layer {} does not decompress to its {} raw bytes ({})",
                                   chunk.layer, raw, ZSTD_isError(r) ? ZSTD_getErrorName(r) : "short"));
    }
    src = scratch_.data();
  }

  if (!written) {
    kv_wire_values::decode(header_.dtype, src, int64_t(chunk.token_count) * header_.n_head_kv, header_.head_dim,
                           cells.as<float>());
  }
  std::fill(covered + chunk.token_begin, covered + chunk.token_begin + chunk.token_count, uint8_t(1));
  filled_[size_t(chunk.layer) * 2 + (chunk.is_v ? 1 : 0)] += chunk.token_count;
  checksums_.push_back(chunk.xxh3);
  bytes_received_ += size;
  return Status::Ok();
}

Status KvWireDecoder::check_trailer(const KvWireTrailer& trailer) const {
  if (done_) return failed_precondition("kv wire: the decoder has already finished");
  if (trailer.n_chunks != header_.n_chunks) {
    return invalid_argument(fmt::format("kv wire: trailer counts {} chunks, the header announced {}",
                                        trailer.n_chunks, header_.n_chunks));
  }
  if (checksums_.size() != header_.n_chunks) {
    return invalid_argument(fmt::format("kv wire: incomplete cache: {} of {} data chunks received",
                                        checksums_.size(), header_.n_chunks));
  }
  const auto hole = std::find(covered_.begin(), covered_.end(), uint8_t(0));
  if (hole != covered_.end()) {
    const size_t i = size_t(hole - covered_.begin()), n = header_.tokens.size();
    return invalid_argument(fmt::format("kv wire: incomplete cache: layer {} {} cell {} was never sent",
                                        i / n / 2, (i / n) % 2 ? "V" : "K", i % n));
  }
  if (digest_of(checksums_) != trailer.digest) {
    return data_loss("kv wire: trailer digest does not match the chunks received");
  }
  return Status::Ok();
}

Result<std::unique_ptr<KvCache>> KvWireDecoder::finish(const KvWireTrailer& trailer) {
  if (cache_ == nullptr && !done_) return failed_precondition("kv wire: finish() on a decoder made by create_into()");
  KVB_RETURN_IF_ERROR(check_trailer(trailer));
  done_ = true;
  covered_ = {};
  cells_ = nullptr;
  return std::move(cache_);
}

Status KvWireDecoder::finish_into(const KvWireTrailer& trailer) {
  if (cache_ != nullptr) return failed_precondition("kv wire: finish_into() on a decoder that owns its cache");
  KVB_RETURN_IF_ERROR(check_trailer(trailer));
  done_ = true;
  covered_ = {};
  return Status::Ok();
}

}  // namespace kvb
