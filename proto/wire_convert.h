// kvbridge.v1 wire messages ↔ the engine's native KV wire types, the one cache-stream reader, and
// cache snapshot files.
//
// This is the only place protobuf meets the KV wire format (STYLE R7): agent/ and client/ convert
// here, engine/ never sees a protobuf type. Conversions check what the proto can express but the
// native type cannot (unknown enum values, a missing oneof); everything that needs the receiver's
// model (layout, token ids, sizes) is checked by KvWireDecoder, which CacheStreamReader drives.
// For bulk transfers the data messages also exist in serialized form, read and written in place
// (SerializedStreamWriter, CacheStreamReader::add_serialized): the agent's ExportCache and peer
// pulls move payloads between the cache and gRPC's slices without a protobuf copy in between.
//
// Error codes (gRPC canonical, mapped 1:1 by the server):
//   INVALID_ARGUMENT    malformed or out-of-order messages, unknown enum values, truncated streams
//                       and files, sizes or token ids inconsistent with the header
//   FAILED_PRECONDITION a cache of another model (the message names the first differing field)
//   DATA_LOSS           a payload whose checksum, decompressed size or digest does not match
//   RESOURCE_EXHAUSTED  a cache over the receiver's KvWireLimits, or out of memory
//   NOT_FOUND / PERMISSION_DENIED / INTERNAL   snapshot file system errors
//
// Threading: every function is reentrant; a CacheStreamReader/Writer is used by one thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "engine/kv_wire.h"
#include "kvbridge/v1/kv_wire.pb.h"

namespace kvb::wire {

namespace pb = ::kvbridge::v1;

// ============================== enums ==============================

pb::WireDType to_proto(WireDType t);
pb::Compression to_proto(WireCompression c);
// `v` is the raw field value (proto3 enums are open: any int32 can arrive).
// WIRE_DTYPE_UNSPECIFIED → kF32 (the proto's "sender picks" default, for requests); a header must
// name its dtype explicitly (header_from_proto rejects UNSPECIFIED). Unknown values → INVALID_ARGUMENT.
Result<WireDType> wire_dtype_from_proto(int v);
Result<WireCompression> compression_from_proto(int v);

// ============================== messages ==============================

void to_proto(const ModelIdentity& id, pb::ModelIdentity* out);
ModelIdentity from_proto(const pb::ModelIdentity& m);  // field by field; nothing to reject

// Lists as given; KvWireDecoder::create checks order, uniqueness and range.
void to_proto(const KvLayerSet& s, pb::LayerSet* out);
KvLayerSet from_proto(const pb::LayerSet& m);

void to_proto(const KvWireHeader& h, pb::KvHeader* out);
// INVALID_ARGUMENT for a missing model identity, an unspecified or unknown dtype, an unknown
// compression. Token ids, sizes and layout are left to KvWireDecoder::create.
Result<KvWireHeader> from_proto(const pb::KvHeader& m);

// The payload is copied (const&) or moved (&&, no copy of the ~1 MiB payload).
void to_proto(const KvWireChunk& c, pb::KvData* out);
void to_proto(KvWireChunk&& c, pb::KvData* out);
// INVALID_ARGUMENT for KV_KIND_UNSPECIFIED or an unknown kind. The && overload moves the payload
// out of `m` (m's payload is left empty).
Result<KvWireChunk> from_proto(const pb::KvData& m);
Result<KvWireChunk> from_proto(pb::KvData&& m);
// The same checks, borrowing the payload from `m` (valid while `m` is alive and unchanged).
Result<KvWireChunkView> view_from_proto(const pb::KvData& m);

void to_proto(const KvWireTrailer& t, pb::KvTrailer* out);
KvWireTrailer from_proto(const pb::KvTrailer& m);

// ============================== streams ==============================

// Turns an encoder into the CacheChunk sequence of kv_wire.proto: header, data..., trailer.
// Borrows the encoder (which borrows its cache): both must outlive the writer.
//   CacheStreamWriter w(*encoder);
//   pb::CacheChunk msg;
//   while (w.next(&msg)) send(msg);
class CacheStreamWriter {
 public:
  explicit CacheStreamWriter(KvWireEncoder& encoder) : encoder_(encoder) {}
  // Fills `out` (cleared first) with the next message; false once the trailer has been produced.
  bool next(pb::CacheChunk* out);

 private:
  enum class Stage { kHeader, kData, kDone };
  KvWireEncoder& encoder_;
  Stage stage_ = Stage::kHeader;
  KvWireChunk chunk_;  // the payload moves into each message
};

// One CacheChunk message in protobuf wire format, with its data payload left out of line so that a
// sender can hand the payload to its transport without copying it: the message's bytes are
// head + payload() + tail (byte-identical to serializing CacheStreamWriter's message).
struct SerializedChunk {
  std::string head;           // the whole message for a header or a trailer
  std::string owned;          // the payload, when the encoder produced its bytes
  std::string_view borrowed;  // the payload, when it is the cache's own cells (a zero-copy encoder)
  std::string tail;

  std::string_view payload() const { return borrowed.empty() ? std::string_view(owned) : borrowed; }
  uint64_t size() const { return head.size() + payload().size() + tail.size(); }
};

// CacheStreamWriter's sequence, serialized. With a zero-copy encoder (KvWireEncoder::zero_copy)
// a data message's payload is `borrowed` from the cache, which must then stay alive and unchanged
// until the transport is done with those bytes; otherwise it is `owned` (the caller may move it
// out). Borrows the encoder, which must outlive the writer. One thread at a time.
class SerializedStreamWriter {
 public:
  explicit SerializedStreamWriter(KvWireEncoder& encoder) : encoder_(encoder) {}
  // Fills `out` (all fields replaced) with the next message; false once the trailer was produced.
  bool next(SerializedChunk* out);

 private:
  enum class Stage { kHeader, kData, kDone };
  KvWireEncoder& encoder_;
  Stage stage_ = Stage::kHeader;
  KvWireChunk chunk_;
};

// The bytes around a data payload: CacheChunk{data: c} is head + c's payload + tail.
void data_message_framing(const KvWireChunkView& c, std::string* head, std::string* tail);

// Consumes CacheChunk messages and rebuilds the cache. The one place that enforces message order
// (ImportCache, peer pulls and snapshot files all go through it):
//   exactly one header first → data chunks → exactly one trailer → nothing more.
// Anything else (data before the header, a second header, a message after the trailer, an empty
// oneof) is INVALID_ARGUMENT. The header is validated against `expected` and `limits` before
// anything is allocated (KvWireDecoder::create). Errors are sticky: after the first error every
// add()/finish() returns that same Status, so a handler can simply stop at the first non-OK one.
//
//   CacheStreamReader r(identity, cpu_device().buffer_type(), /*n_ctx_min=*/0, limits);
//   while (stream.Read(&msg)) {                      // the server's ImportCache, a peer pull
//     if (Status s = r.add(std::move(msg)); !s.ok()) return to_grpc(s);
//   }
//   KVB_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, r.finish());  // truncated → INVALID_ARGUMENT
//
// A transport failure (the peer died: gRPC UNAVAILABLE) is the caller's to report as such: the
// reader only sees that the stream ended early, and finish() then says INVALID_ARGUMENT.
// The expected identity and buffer type are borrowed and must outlive the reader. The cache is
// allocated in host memory (buffer_type must be host) with n_ctx = max(n_tokens + n_ctx_extra,
// n_ctx_min, 1) (the extra cells within `limits`, see KvWireDecoder::create), f32, at the sender's
// positions (pos0 kept).
class CacheStreamReader {
 public:
  CacheStreamReader(const ModelIdentity& expected, const BufferType& buffer_type, int32_t n_ctx_min,
                    const KvWireLimits& limits = {}, int32_t n_ctx_extra = 0);

  // Consumes the next message. Data payloads are checksummed and decoded straight from `msg`
  // (never copied out of it). The && overload is the same (kept for callers that move).
  Status add(const pb::CacheChunk& msg);
  Status add(pb::CacheChunk&& msg);
  // The same for one serialized CacheChunk given as consecutive byte ranges (the slices of a
  // received message, borrowed for the call): a data message's payload is checksummed and decoded
  // straight from the ranges, never copied into a message (f32) or copied once (other dtypes, zstd).
  // Anything but a plain data message is parsed with protobuf and handed to add(). Same checks and
  // codes; bytes that do not parse are INVALID_ARGUMENT.
  Status add_serialized(std::span<const std::string_view> pieces);

  // Once the trailer was accepted: the cache (ownership passes to the caller; once only, a second
  // call is FAILED_PRECONDITION). Before: INVALID_ARGUMENT ("stream ended before its trailer"),
  // which is what a truncated stream gives. After an error: that error.
  Result<std::unique_ptr<KvCache>> finish();

  bool done() const { return stage_ == Stage::kDone; }
  // While data arrives: whether that (layer, K/V) slice is complete, and the cache being filled
  // (null before the header and after finish()); a consumer may read a slice once it is complete.
  bool complete(uint32_t layer, bool is_v) const { return decoder_ && decoder_->complete(layer, is_v); }
  const KvCache* partial() const {
    if (cache_) return cache_.get();
    return decoder_ && !taken_ ? &decoder_->cache() : nullptr;
  }
  // The validated header, or null before one was accepted.
  const KvWireHeader* header() const { return decoder_ ? &decoder_->header() : nullptr; }
  // Payload bytes accepted so far, as sent (compressed); 0 after an error.
  uint64_t bytes_received() const { return decoder_ ? decoder_->bytes_received() : 0; }
  uint32_t chunks_received() const { return chunks_; }

 private:
  enum class Stage { kHeader, kData, kDone };
  Status add_header(const pb::KvHeader& m);
  Status check_data_order();
  Status add_data(const pb::KvData& m);  // in order (checked by the caller)
  Status add_trailer(const pb::KvTrailer& m);
  Status fail(Status s);

  const ModelIdentity& expected_;
  const BufferType& buffer_type_;
  int32_t n_ctx_min_;
  KvWireLimits limits_;
  int32_t n_ctx_extra_;
  Stage stage_ = Stage::kHeader;
  Status error_;
  uint32_t chunks_ = 0;
  std::unique_ptr<KvWireDecoder> decoder_;
  std::unique_ptr<KvCache> cache_;
  bool taken_ = false;
  std::vector<std::string_view> payload_pieces_;  // add_serialized's, reused
  std::string gathered_;                          // add_serialized's slow path, reused
};

// ============================== snapshot files ==============================
//
// Format (kv_wire.proto): the 8-byte magic "KVBCACHE", then each CacheChunk of the stream as a
// little-endian u32 length followed by that many bytes of the serialized message; header first,
// trailer last, nothing after it. File access is off by default in the server (STYLE R7): these
// functions are for the CLI (`kvbridge cache save|load`) and for agents explicitly configured to
// use them.

inline constexpr std::string_view kSnapshotMagic = "KVBCACHE";
// Largest serialized message a snapshot may hold (a reader rejects longer lengths before
// allocating anything). Auto-sized chunks are ~1 MiB.
inline constexpr uint32_t kMaxSnapshotMessageBytes = 64u << 20;

// ---- message level: the framing only, no model needed (the client moves messages as they are) ----

// Writes a snapshot atomically: the magic and then each appended message go to a temporary file
// beside `path` (mode 0600: a cache holds the text it was computed from); commit() fsyncs it and
// renames it onto `path`. Destroying an uncommitted writer (or one whose commit failed) removes
// the temporary file and leaves `path` untouched. Owns its file descriptor; one thread at a time.
// Writes what it is given: order and contents are the reader's to check.
class SnapshotWriter {
 public:
  // NOT_FOUND (no such directory) / PERMISSION_DENIED / RESOURCE_EXHAUSTED (disk full) / INTERNAL.
  static Result<std::unique_ptr<SnapshotWriter>> create(const std::string& path);
  ~SnapshotWriter();
  SnapshotWriter(const SnapshotWriter&) = delete;
  SnapshotWriter& operator=(const SnapshotWriter&) = delete;

  // INVALID_ARGUMENT for a message over kMaxSnapshotMessageBytes (nothing written); file system
  // errors as above; FAILED_PRECONDITION after commit().
  Status append(const pb::CacheChunk& msg);
  Status commit();
  uint64_t bytes_written() const { return bytes_; }  // magic included

 private:
  SnapshotWriter(std::string path, std::string tmp, int fd) : path_(std::move(path)), tmp_(std::move(tmp)), fd_(fd) {}
  std::string path_, tmp_;
  int fd_ = -1;
  bool committed_ = false;
  uint64_t bytes_ = 0;
  std::string scratch_;  // length prefix + serialized message
};

class SnapshotSource;  // a file or a byte range (wire_convert.cpp)

// Reads a snapshot message by message: memory is one message. Checks the framing only (magic,
// lengths, protobuf parse); feed the messages to a CacheStreamReader for everything else.
class SnapshotReader {
 public:
  // NOT_FOUND for a missing file; INVALID_ARGUMENT for a bad magic or not a regular file.
  static Result<std::unique_ptr<SnapshotReader>> open(const std::string& path);
  // Over bytes in memory, which must outlive the reader.
  static Result<std::unique_ptr<SnapshotReader>> from_bytes(std::string_view bytes);
  ~SnapshotReader();
  SnapshotReader(const SnapshotReader&) = delete;
  SnapshotReader& operator=(const SnapshotReader&) = delete;

  // Fills `msg` and returns true, or returns false at the end of the file. INVALID_ARGUMENT for a
  // length over kMaxSnapshotMessageBytes or past the end of the file, or bytes that do not parse
  // (checked before anything of that size is allocated).
  Result<bool> next(pb::CacheChunk& msg);

  uint64_t file_bytes() const { return size_; }
  uint64_t bytes_left() const;

 private:
  SnapshotReader(std::unique_ptr<SnapshotSource> src, uint64_t size);
  static Result<std::unique_ptr<SnapshotReader>> start(std::unique_ptr<SnapshotSource> src);
  std::unique_ptr<SnapshotSource> src_;
  uint64_t size_ = 0;
};

// ---- cache level ----

// Writes the whole stream of `encoder` (which must be fresh: nothing taken from it yet) to `path`
// atomically: a temporary file in the same directory (mode 0600: caches hold the text they were
// computed from), fsync, then rename over `path`. On error the temporary file is removed and
// `path` is untouched; the encoder is then partly consumed. INVALID_ARGUMENT when a message would
// exceed kMaxSnapshotMessageBytes (use smaller chunk_tokens); file system errors as above.
Status write_snapshot(const std::string& path, KvWireEncoder& encoder);

// Reads a snapshot through CacheStreamReader (same checks, same codes; a bad magic, a length over
// kMaxSnapshotMessageBytes or past the end of the file, unparsable bytes, or bytes after the
// trailer → INVALID_ARGUMENT; a missing file → NOT_FOUND). Streams the file: memory is one message
// plus the cache.
Result<std::unique_ptr<KvCache>> read_snapshot(const std::string& path, const ModelIdentity& expected,
                                               const BufferType& buffer_type, int32_t n_ctx_min,
                                               const KvWireLimits& limits = {});

// The same for snapshot bytes in memory (the fuzz target's entry point). Never reads outside `bytes`.
Result<std::unique_ptr<KvCache>> decode_snapshot_bytes(std::string_view bytes, const ModelIdentity& expected,
                                                       const BufferType& buffer_type, int32_t n_ctx_min,
                                                       const KvWireLimits& limits = {});

// The header of a snapshot file, without reading the rest (for `kvbridge cache info` and for
// choosing which model to load). Errors as read_snapshot for the magic and the first message.
Result<KvWireHeader> read_snapshot_header(const std::string& path);

}  // namespace kvb::wire
