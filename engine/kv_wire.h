// The KV-cache wire format, natively: model identity, header, data chunks, trailer.
//
// This is the byte-level contract of proto/kvbridge/v1/kv_wire.proto without protobuf types
// (agent/ and client/ convert one to the other field by field). An encoder turns a host KvCache
// into header → chunks → trailer; a decoder validates a header against the receiver's model before
// allocating anything, applies chunks (checksum first), and yields a KvCache only when the stream
// was complete and consistent.
//
// Payload layout of one chunk (layer l, K or V, cells [token_begin, token_begin + token_count)),
// before compression, little-endian:
//   f32/f16/bf16: values [token_count][n_head_kv][head_dim]
//   int8:         scales f32 [token_count][n_head_kv], then q int8 [token_count][n_head_kv][head_dim],
//                 x ≈ scale · q with scale = max|x| / 127 over one head of one token.
// Checksum: xxh3-64 (seed 0) of the payload as sent (after compression). Trailer digest: xxh3-64
// of the sequence of chunk checksums (u64 little-endian each), in sending order.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "engine/model_identity.h"

namespace kvb {

inline constexpr uint32_t kKvWireVersion = 1;

enum class WireDType { kF32, kF16, kBF16, kInt8 };
enum class WireCompression { kNone, kZstd };
inline constexpr WireDType kWireDTypes[] = {WireDType::kF32, WireDType::kF16, WireDType::kBF16, WireDType::kInt8};
std::string_view wire_dtype_name(WireDType t);  // "f32", "f16", "bf16", "int8"
// The dtype wire_dtype_name spells `name`; INVALID_ARGUMENT listing the names otherwise.
Result<WireDType> parse_wire_dtype(std::string_view name);

// Which layers' K and V a stream carries, when not all of them (a fusion stream carries only what
// the fuser needs, STYLE: skip what the reference computes for nothing). Each list is sorted,
// without duplicates, every index < n_layer; either list may be empty.
struct KvLayerSet {
  std::vector<uint32_t> k, v;

  bool contains(uint32_t layer, bool is_v) const;
  size_t size() const { return k.size() + v.size(); }  // (layer, K/V) slices carried
  bool operator==(const KvLayerSet&) const = default;
};

struct KvWireHeader {
  uint32_t format_version = kKvWireVersion;
  ModelIdentity model;
  uint32_t n_layer = 0, n_head_kv = 0, head_dim = 0;
  WireDType dtype = WireDType::kF32;
  WireCompression compression = WireCompression::kNone;
  std::vector<int32_t> tokens;  // one id per cell
  int32_t pos0 = 0;
  uint64_t total_bytes = 0;     // sum of raw (uncompressed) payload sizes
  uint32_t n_chunks = 0;
  // Absent: a whole cache (every layer's K and V). Present: only these slices travel; the others
  // are left zero in a decoded cache and must not be read as the sender's values.
  std::optional<KvLayerSet> layers;

  bool carries(uint32_t layer, bool is_v) const { return !layers || layers->contains(layer, is_v); }
  uint32_t n_slices() const { return layers ? uint32_t(layers->size()) : 2 * n_layer; }  // (layer, K/V) pairs
};

// What a data chunk carries besides its payload: layer l's K or V, cells [token_begin,
// token_begin + token_count), the payload's size before compression and its checksum as sent.
struct KvWireSlice {
  uint32_t layer = 0;
  bool is_v = false;            // K when false
  uint32_t token_begin = 0;
  uint32_t token_count = 0;
  uint64_t raw_size = 0;
  uint64_t xxh3 = 0;
};

struct KvWireChunk : KvWireSlice {
  std::string payload;
};

// The same chunk with a borrowed payload: the sender's cache cells themselves (a zero-copy
// encoder), or the bytes still inside the message they arrived in (so that a receiver neither
// copies nor frees ~1 MiB per chunk). Nothing keeps the payload alive: it must outlive the call
// the view is passed to.
struct KvWireChunkView : KvWireSlice {
  // The payload: `payload`, or, when `pieces` is not empty, the concatenation of `pieces` (the
  // slices of a received message, say; `payload` is then ignored).
  std::string_view payload;
  std::span<const std::string_view> pieces;

  uint64_t payload_size() const;
};
KvWireChunkView view_of(const KvWireChunk& c);

struct KvWireTrailer {
  uint32_t n_chunks = 0;
  uint64_t digest = 0;
};

// Raw payload bytes of `count` cells of one layer's K or V in `dtype`.
uint64_t wire_payload_bytes(WireDType dtype, uint32_t n_head_kv, uint32_t head_dim, uint32_t count);

// The header announcing all n_tokens() cells of `cache` (identity `id`, tokens, pos0, `layers`)
// in `dtype` / `compression`, cut into `n_chunks` chunks; total_bytes as the payloads add up.
// Checks nothing: the encoder validates before, a raw transfer announces its slices with it.
KvWireHeader cache_header(const KvCache& cache, const ModelIdentity& id, WireDType dtype,
                          WireCompression compression, const std::optional<KvLayerSet>& layers, uint32_t n_chunks);

// Serializes a host cache (f32 or f16). The cache must stay unchanged while the encoder lives (it
// is read lazily, chunk by chunk); the encoder borrows it. Chunks go layer by layer, K then V,
// token slices of chunk_tokens cells (0: as many cells as fit ~1 MiB of raw payload; values above
// n_tokens are capped). An empty cache gives a header with n_chunks 0 and no chunks. With `layers`,
// only those slices are sent (header.layers set); INVALID_ARGUMENT for an unsorted, duplicated or
// out-of-range index.
// int8 error bound: |x - scale·q| <= scale/2 per element (scale = max|x|/127 of its head and
// token), up to f32 rounding (< 5e-5 · scale). zstd uses level 1, one frame per chunk.
// Threading: one thread at a time (zstd contexts are per thread).
class KvWireEncoder {
 public:
  // INVALID_ARGUMENT when the cache is not host memory or the identity does not match its layout.
  static Result<std::unique_ptr<KvWireEncoder>> create(const KvCache& cache, const ModelIdentity& id,
                                                       WireDType dtype, WireCompression compression,
                                                       uint32_t chunk_tokens = 0,
                                                       const std::optional<KvLayerSet>& layers = std::nullopt);
  const KvWireHeader& header() const { return header_; }
  // The (layer, K/V) slice the next chunk belongs to; false when all chunks were produced.
  bool peek(uint32_t& layer, bool& is_v) const;
  // Fills the next chunk; false when all chunks were produced.
  bool next(KvWireChunk& out);
  // The same, borrowing the payload (one range, no pieces) instead of copying it out: when
  // zero_copy(), the payload is the cache's own cells (valid while the cache lives unchanged; the
  // encoder only hashed them); otherwise it is the encoder's buffer, valid until the next call.
  // Calls of both overloads may be mixed; they share one sequence.
  bool next(KvWireChunkView& out);
  // Whether the payloads are the cache's bytes as they are: f32 wire, no compression, f32 cache.
  bool zero_copy() const { return zero_copy_; }
  // Valid after next() returned false.
  KvWireTrailer trailer() const { return {emitted_, digest()}; }

 private:
  KvWireEncoder(const KvCache& cache) : cache_(cache) {}
  uint64_t digest() const;
  // Describes the next chunk in `out` and its source cells (f32), advancing the position; false at the end.
  bool next_slice(KvWireChunkView& out, Tensor& cells);
  void skip_uncarried();  // moves layer_/is_v_ to the next slice the header carries
  // Encodes `cells` (f32 or the cache's f16) in the wire dtype into `dst`, compressed when asked.
  void encode_into(const Tensor& cells, uint32_t count, std::string& dst);
  void record(KvWireChunkView& out, std::string_view payload);

  const KvCache& cache_;
  KvWireHeader header_;
  uint32_t chunk_tokens_ = 0;
  uint32_t layer_ = 0, token_ = 0, emitted_ = 0;
  bool is_v_ = false;
  bool zero_copy_ = false;
  std::vector<uint64_t> checksums_;
  std::string scratch_;  // raw payload before compression
  std::string payload_;  // next(KvWireChunkView&)'s payload when not zero-copy
  std::vector<float> converted_;  // f16 cache cells as f32
};

struct KvWireLimits {
  uint32_t max_tokens = 1u << 20;         // cells a received cache may have
  // Bytes the decoded (f32) cache's cells may take: n_tokens x n_layer x 2 x n_head_kv x head_dim x 4.
  // This bounds what the receiver allocates; it is >= the raw payload bytes of any wire dtype.
  uint64_t max_bytes = uint64_t(1) << 34;
};

// The cache a received header fills: f32, the header's layout ...
KvLayout received_layout(const KvWireHeader& header);
// ... with this many cells: its tokens, plus up to n_ctx_extra free ones within `limits` (best
// effort: what max_tokens and max_bytes leave), and at least max(n_ctx_min, 1).
int32_t received_cells(const KvWireHeader& header, const KvWireLimits& limits, int32_t n_ctx_min, int32_t n_ctx_extra);

// Rebuilds a cache from a header, chunks and a trailer. Chunks may arrive in any order (each cell
// of each layer's K and V exactly once); the digest is checked over the order received. An add()
// that fails leaves the decoder as it was (no cell is marked received), but callers should treat
// any error as the end of the stream (CacheStreamReader in proto/wire_convert.h does).
// Threading: one thread at a time. Decoded values are always stored in an f32 cache.
class KvWireDecoder {
 public:
  // Validates the header against the receiver's identity and limits before allocating:
  //   FAILED_PRECONDITION naming the first differing identity field;
  //   INVALID_ARGUMENT for an unknown version, inconsistent layout, sizes or token ids;
  //   RESOURCE_EXHAUSTED when the cache exceeds the limits.
  // The cache is allocated from `buffer_type` (which must be host memory: INVALID_ARGUMENT
  // otherwise) with n_ctx = max(n_tokens + extra, n_ctx_min, 1), layout f32, pos0 = header.pos0;
  // allocation failure is RESOURCE_EXHAUSTED. `expected` is only read during the call.
  // n_ctx_extra >= 0 reserves free cells after the received ones, for tokens the receiver will
  // append (a session can then run in the received cache itself instead of a copy); it is
  // best-effort: extra = min(n_ctx_extra, what limits.max_tokens and limits.max_bytes leave).
  // Chunks are decoded straight into the cache's cells (no intermediate copy but zstd's output).
  // A header with `layers` decodes into a cache whose other slices stay zero.
  static Result<std::unique_ptr<KvWireDecoder>> create(const KvWireHeader& header, const ModelIdentity& expected,
                                                       const BufferType& buffer_type, int32_t n_ctx_min,
                                                       const KvWireLimits& limits = {}, int32_t n_ctx_extra = 0);
  // Decodes over the cells of an existing cache instead (the receiver applying fused layers to its
  // own cache): `target` must be host f32 with the header's layout, tokens and pos0, else
  // INVALID_ARGUMENT (FAILED_PRECONDITION for another model, as create). Slices the header carries
  // are overwritten as chunks arrive — a failed stream leaves them partly written, so callers
  // decode into a copy they can drop. `target` is borrowed and must outlive the decoder; finish
  // it with finish_into().
  static Result<std::unique_ptr<KvWireDecoder>> create_into(const KvWireHeader& header, const ModelIdentity& expected,
                                                            KvCache& target);
  // Applies one chunk. Checks, in order: INVALID_ARGUMENT for more chunks than announced, an
  // out-of-range layer or slice, a raw_size other than the slice's, a payload of the wrong size
  // (uncompressed) or over zstd's bound, a slice overlapping cells already received (duplicates
  // included); DATA_LOSS for a checksum mismatch, then for a frame that does not decompress to
  // exactly raw_size bytes. Decompression is single-shot into raw_size bytes (no other buffer).
  // After finish() succeeded: FAILED_PRECONDITION.
  Status add(const KvWireChunkView& chunk);
  Status add(const KvWireChunk& chunk) { return add(view_of(chunk)); }
  // INVALID_ARGUMENT when the trailer's count differs from the header's or chunks are missing;
  // DATA_LOSS when the digest differs. On success the caller owns the cache (its tokens
  // committed) and the decoder is spent.
  Result<std::unique_ptr<KvCache>> finish(const KvWireTrailer& trailer);
  // The same checks for a decoder made by create_into(); the target then holds the stream's values.
  Status finish_into(const KvWireTrailer& trailer);

  // Whether every cell of that slice has arrived (a consumer may start on a layer before the end).
  bool complete(uint32_t layer, bool is_v) const;
  // The cache being filled (its tokens are set from the start): read a slice once complete() says so.
  const KvCache& cache() const { return *cells_; }

  const KvWireHeader& header() const { return header_; }
  uint64_t bytes_received() const { return bytes_received_; }  // payload bytes as sent

  // The header checks create() and create_into() make before anything is allocated (codes as
  // create()'s); also for a header that announces raw slices rather than a stream (a cache
  // pulled over NCCL or CUDA IPC, whose bytes never pass a decoder).
  static Status validate(const KvWireHeader& header, const ModelIdentity& expected, const KvWireLimits& limits);

 private:
  KvWireDecoder() = default;
  Status init_bookkeeping(const KvWireHeader& header);
  Status check_trailer(const KvWireTrailer& trailer) const;
  uint64_t checksum(const KvWireChunkView& chunk);

  KvWireHeader header_;
  std::unique_ptr<KvCache> cache_;  // create(): the cache being built; null for create_into()
  KvCache* cells_ = nullptr;        // where chunks are written: cache_ or the borrowed target
  bool done_ = false;
  std::vector<uint8_t> covered_;  // [n_layer][2][n_tokens]: 1 when a chunk filled that cell (or it is not carried)
  std::vector<uint32_t> filled_;  // [n_layer][2]: cells received per slice
  std::vector<uint64_t> checksums_;
  uint64_t bytes_received_ = 0;
  std::string scratch_;    // zstd output
  std::string gathered_;   // a payload in pieces, made contiguous (zstd, non-f32 dtypes)
  struct HashStateFree {
    void operator()(void* state) const;
  };
  std::unique_ptr<void, HashStateFree> hash_state_;  // XXH3_state_t for payloads in pieces, made on first use
};

}  // namespace kvb
