#include "proto/wire_convert.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <new>
#include <utility>
#include <vector>

#include <fmt/format.h>

namespace kvb::wire {

// ============================== enums ==============================

pb::WireDType to_proto(WireDType t) {
  switch (t) {
    case WireDType::kF32: return pb::WIRE_DTYPE_F32;
    case WireDType::kF16: return pb::WIRE_DTYPE_F16;
    case WireDType::kBF16: return pb::WIRE_DTYPE_BF16;
    case WireDType::kInt8: return pb::WIRE_DTYPE_INT8;
  }
  return pb::WIRE_DTYPE_UNSPECIFIED;
}

pb::Compression to_proto(WireCompression c) {
  return c == WireCompression::kZstd ? pb::COMPRESSION_ZSTD : pb::COMPRESSION_NONE;
}

Result<WireDType> wire_dtype_from_proto(int v) {
  switch (v) {
    case pb::WIRE_DTYPE_UNSPECIFIED:
    case pb::WIRE_DTYPE_F32: return WireDType::kF32;
    case pb::WIRE_DTYPE_F16: return WireDType::kF16;
    case pb::WIRE_DTYPE_BF16: return WireDType::kBF16;
    case pb::WIRE_DTYPE_INT8: return WireDType::kInt8;
    default: return invalid_argument(fmt::format("unknown wire dtype {}", v));
  }
}

Result<WireCompression> compression_from_proto(int v) {
  switch (v) {
    case pb::COMPRESSION_NONE: return WireCompression::kNone;
    case pb::COMPRESSION_ZSTD: return WireCompression::kZstd;
    default: return invalid_argument(fmt::format("unknown compression {}", v));
  }
}

// ============================== messages ==============================

void to_proto(const ModelIdentity& id, pb::ModelIdentity* out) {
  out->set_arch(id.arch);
  out->set_n_layer(id.n_layer);
  out->set_n_embd(id.n_embd);
  out->set_n_head(id.n_head);
  out->set_n_head_kv(id.n_head_kv);
  out->set_head_dim(id.head_dim);
  out->set_n_ff(id.n_ff);
  out->set_n_vocab(id.n_vocab);
  out->set_rope_type(id.rope_type);
  out->set_rope_n_rot(id.rope_n_rot);
  out->set_rope_theta(id.rope_theta);
  out->set_rope_freq_scale(id.rope_freq_scale);
  out->set_norm_eps(id.norm_eps);
  out->set_tokenizer_hash(id.tokenizer_hash);
  out->set_weights_hash(id.weights_hash);
  out->set_fingerprint(id.fingerprint);
}

ModelIdentity from_proto(const pb::ModelIdentity& m) {
  ModelIdentity id;
  id.arch = m.arch();
  id.n_layer = m.n_layer();
  id.n_embd = m.n_embd();
  id.n_head = m.n_head();
  id.n_head_kv = m.n_head_kv();
  id.head_dim = m.head_dim();
  id.n_ff = m.n_ff();
  id.n_vocab = m.n_vocab();
  id.rope_type = m.rope_type();
  id.rope_n_rot = m.rope_n_rot();
  id.rope_theta = m.rope_theta();
  id.rope_freq_scale = m.rope_freq_scale();
  id.norm_eps = m.norm_eps();
  id.tokenizer_hash = m.tokenizer_hash();
  id.weights_hash = m.weights_hash();
  id.fingerprint = m.fingerprint();
  return id;
}

void to_proto(const KvWireHeader& h, pb::KvHeader* out) {
  out->set_format_version(h.format_version);
  to_proto(h.model, out->mutable_model());
  out->set_n_layer(h.n_layer);
  out->set_n_head_kv(h.n_head_kv);
  out->set_head_dim(h.head_dim);
  out->set_dtype(to_proto(h.dtype));
  out->set_compression(to_proto(h.compression));
  out->mutable_token_ids()->Assign(h.tokens.begin(), h.tokens.end());
  out->set_pos0(h.pos0);
  out->set_total_bytes(h.total_bytes);
  out->set_n_chunks(h.n_chunks);
  if (h.layers) to_proto(*h.layers, out->mutable_layers());
}

void to_proto(const KvLayerSet& s, pb::LayerSet* out) {
  out->mutable_k()->Assign(s.k.begin(), s.k.end());
  out->mutable_v()->Assign(s.v.begin(), s.v.end());
}

KvLayerSet from_proto(const pb::LayerSet& m) {
  KvLayerSet s;
  s.k.assign(m.k().begin(), m.k().end());
  s.v.assign(m.v().begin(), m.v().end());
  return s;
}

Result<KvWireHeader> from_proto(const pb::KvHeader& m) {
  if (!m.has_model()) return invalid_argument("kv header: no model identity");
  if (m.dtype() == pb::WIRE_DTYPE_UNSPECIFIED) return invalid_argument("kv header: dtype not set");
  KvWireHeader h;
  h.format_version = m.format_version();
  h.model = from_proto(m.model());
  h.n_layer = m.n_layer();
  h.n_head_kv = m.n_head_kv();
  h.head_dim = m.head_dim();
  KVB_ASSIGN_OR_RETURN(h.dtype, wire_dtype_from_proto(m.dtype()));
  KVB_ASSIGN_OR_RETURN(h.compression, compression_from_proto(m.compression()));
  try {
    h.tokens.assign(m.token_ids().begin(), m.token_ids().end());
  } catch (const std::bad_alloc&) {
    return resource_exhausted("kv header: out of memory for the token ids");
  }
  h.pos0 = m.pos0();
  h.total_bytes = m.total_bytes();
  h.n_chunks = m.n_chunks();
  if (m.has_layers()) h.layers = from_proto(m.layers());  // checked by KvWireDecoder::create
  return h;
}

namespace {

void chunk_fields(const KvWireChunk& c, pb::KvData* out) {
  out->set_layer(c.layer);
  out->set_kind(c.is_v ? pb::KV_KIND_V : pb::KV_KIND_K);
  out->set_token_begin(c.token_begin);
  out->set_token_count(c.token_count);
  out->set_raw_size(c.raw_size);
  out->set_xxh3(c.xxh3);
}

template <class Chunk>
Result<Chunk> chunk_fields(const pb::KvData& m) {
  Chunk c;
  switch (m.kind()) {
    case pb::KV_KIND_K: c.is_v = false; break;
    case pb::KV_KIND_V: c.is_v = true; break;
    default: return invalid_argument(fmt::format("kv data: kind {} is neither K nor V", int(m.kind())));
  }
  c.layer = m.layer();
  c.token_begin = m.token_begin();
  c.token_count = m.token_count();
  c.raw_size = m.raw_size();
  c.xxh3 = m.xxh3();
  return c;
}

}  // namespace

void to_proto(const KvWireChunk& c, pb::KvData* out) {
  chunk_fields(c, out);
  out->set_payload(c.payload);
}

void to_proto(KvWireChunk&& c, pb::KvData* out) {
  chunk_fields(c, out);
  out->set_payload(std::move(c.payload));
}

Result<KvWireChunk> from_proto(const pb::KvData& m) {
  KVB_ASSIGN_OR_RETURN(KvWireChunk c, chunk_fields<KvWireChunk>(m));
  c.payload = m.payload();
  return c;
}

Result<KvWireChunkView> view_from_proto(const pb::KvData& m) {
  KVB_ASSIGN_OR_RETURN(KvWireChunkView c, chunk_fields<KvWireChunkView>(m));
  c.payload = m.payload();
  return c;
}

Result<KvWireChunk> from_proto(pb::KvData&& m) {
  KVB_ASSIGN_OR_RETURN(KvWireChunk c, chunk_fields<KvWireChunk>(m));
  c.payload.swap(*m.mutable_payload());  // no copy, arena or not: std::string swaps its buffer
  return c;
}

void to_proto(const KvWireTrailer& t, pb::KvTrailer* out) {
  out->set_n_chunks(t.n_chunks);
  out->set_digest(t.digest);
}

KvWireTrailer from_proto(const pb::KvTrailer& m) { return {m.n_chunks(), m.digest()}; }

// ============================== streams ==============================

bool CacheStreamWriter::next(pb::CacheChunk* out) {
  out->Clear();
  switch (stage_) {
    case Stage::kHeader:
      to_proto(encoder_.header(), out->mutable_header());
      stage_ = Stage::kData;
      return true;
    case Stage::kData:
      if (encoder_.next(chunk_)) {
        to_proto(std::move(chunk_), out->mutable_data());
        return true;
      }
      to_proto(encoder_.trailer(), out->mutable_trailer());
      stage_ = Stage::kDone;
      return true;
    case Stage::kDone: return false;
  }
  return false;
}

// ---- serialized messages ----

namespace {

// Protobuf wire format: field tags are (number << 3) | wire type.
constexpr uint8_t kTagData = (2 << 3) | 2;  // CacheChunk.data, length-delimited
enum KvDataTag : uint8_t {
  kTagLayer = (1 << 3) | 0,
  kTagKind = (2 << 3) | 0,
  kTagTokenBegin = (3 << 3) | 0,
  kTagTokenCount = (4 << 3) | 0,
  kTagRawSize = (5 << 3) | 0,
  kTagPayload = (6 << 3) | 2,
  kTagXxh3 = (7 << 3) | 1,
};

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(char(uint8_t(v) | 0x80));
    v >>= 7;
  }
  out.push_back(char(uint8_t(v)));
}

// A proto3 scalar: omitted when zero, as protobuf serializes it.
void put_varint_field(std::string& out, uint8_t tag, uint64_t v) {
  if (v == 0) return;
  out.push_back(char(tag));
  put_varint(out, v);
}

// Sequential reads over consecutive byte ranges.
class PieceReader {
 public:
  explicit PieceReader(std::span<const std::string_view> pieces) : pieces_(pieces) {
    for (std::string_view p : pieces) left_ += p.size();
    skip_empty();
  }
  uint64_t left() const { return left_; }
  bool byte(uint8_t& b) {
    if (left_ == 0) return false;
    b = uint8_t(pieces_[i_][off_]);
    advance(1);
    return true;
  }
  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      uint8_t b;
      if (!byte(b)) return false;
      v |= uint64_t(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return true;
    }
    return false;  // over 10 bytes
  }
  bool fixed64(uint64_t& v) {
    v = 0;
    for (int i = 0; i < 8; ++i) {
      uint8_t b;
      if (!byte(b)) return false;
      v |= uint64_t(b) << (8 * i);
    }
    return true;
  }
  // The next n bytes, as borrowed ranges appended to `out`.
  bool take(uint64_t n, std::vector<std::string_view>& out) {
    if (n > left_) return false;
    while (n > 0) {
      const size_t k = size_t(std::min<uint64_t>(n, pieces_[i_].size() - off_));
      out.push_back(pieces_[i_].substr(off_, k));
      advance(k);
      n -= k;
    }
    return true;
  }

 private:
  void advance(size_t n) {  // within the current piece
    off_ += n;
    left_ -= n;
    skip_empty();
  }
  void skip_empty() {
    while (i_ < pieces_.size() && off_ == pieces_[i_].size()) {
      ++i_;
      off_ = 0;
    }
  }

  std::span<const std::string_view> pieces_;
  size_t i_ = 0, off_ = 0;
  uint64_t left_ = 0;
};

// The fields of a KvData that fills the rest of `r`, when they are the ones kv_wire.proto defines
// with their declared wire types (in any order, repeated ones: the last wins, as protobuf). False
// for anything else (unknown fields, other wire types, truncation): the caller then lets protobuf
// parse the message.
bool parse_kv_data(PieceReader& r, KvWireChunkView& c, int32_t& kind, std::vector<std::string_view>& payload) {
  c = KvWireChunkView{};
  kind = 0;
  payload.clear();
  while (r.left() > 0) {
    uint64_t tag = 0, v = 0;
    if (!r.varint(tag)) return false;
    switch (tag) {
      case kTagLayer: if (!r.varint(v)) return false; c.layer = uint32_t(v); break;
      case kTagKind: if (!r.varint(v)) return false; kind = int32_t(v); break;
      case kTagTokenBegin: if (!r.varint(v)) return false; c.token_begin = uint32_t(v); break;
      case kTagTokenCount: if (!r.varint(v)) return false; c.token_count = uint32_t(v); break;
      case kTagRawSize: if (!r.varint(v)) return false; c.raw_size = v; break;
      case kTagXxh3: if (!r.fixed64(v)) return false; c.xxh3 = v; break;
      case kTagPayload:
        payload.clear();
        if (!r.varint(v) || !r.take(v, payload)) return false;
        break;
      default: return false;
    }
  }
  return true;
}

}  // namespace

void data_message_framing(const KvWireChunkView& c, std::string* head, std::string* tail) {
  const uint64_t payload = c.payload_size();
  std::string fields;
  put_varint_field(fields, kTagLayer, c.layer);
  put_varint_field(fields, kTagKind, c.is_v ? pb::KV_KIND_V : pb::KV_KIND_K);
  put_varint_field(fields, kTagTokenBegin, c.token_begin);
  put_varint_field(fields, kTagTokenCount, c.token_count);
  put_varint_field(fields, kTagRawSize, c.raw_size);
  if (payload > 0) {
    fields.push_back(char(kTagPayload));
    put_varint(fields, payload);
  }
  tail->clear();
  if (c.xxh3 != 0) {
    tail->push_back(char(kTagXxh3));
    for (int i = 0; i < 8; ++i) tail->push_back(char(uint8_t(c.xxh3 >> (8 * i))));
  }
  head->clear();
  head->push_back(char(kTagData));
  put_varint(*head, fields.size() + payload + tail->size());
  head->append(fields);
}

bool SerializedStreamWriter::next(SerializedChunk* out) {
  out->owned.clear();
  out->borrowed = {};
  out->tail.clear();
  pb::CacheChunk msg;
  switch (stage_) {
    case Stage::kHeader:
      to_proto(encoder_.header(), msg.mutable_header());
      stage_ = Stage::kData;
      break;
    case Stage::kData: {
      KvWireChunkView v;
      if (encoder_.zero_copy() ? encoder_.next(v) : encoder_.next(chunk_)) {
        if (encoder_.zero_copy()) {
          out->borrowed = v.payload;
        } else {
          v = view_of(chunk_);
          out->owned = std::move(chunk_.payload);
          v.payload = out->owned;
        }
        data_message_framing(v, &out->head, &out->tail);
        return true;
      }
      to_proto(encoder_.trailer(), msg.mutable_trailer());
      stage_ = Stage::kDone;
      break;
    }
    case Stage::kDone: return false;
  }
  out->head.clear();
  msg.AppendToString(&out->head);
  return true;
}

CacheStreamReader::CacheStreamReader(const ModelIdentity& expected, const BufferType& buffer_type, int32_t n_ctx_min,
                                     const KvWireLimits& limits, int32_t n_ctx_extra)
    : expected_(expected), buffer_type_(buffer_type), n_ctx_min_(n_ctx_min), limits_(limits),
      n_ctx_extra_(n_ctx_extra) {}

Status CacheStreamReader::fail(Status s) {
  error_ = s;
  decoder_.reset();  // releases the half-built cache at once
  cache_.reset();
  return s;
}

Status CacheStreamReader::add(const pb::CacheChunk& msg) {
  if (!error_.ok()) return error_;
  switch (msg.part_case()) {
    case pb::CacheChunk::kHeader: return add_header(msg.header());
    case pb::CacheChunk::kData:
      // Order first: never convert (or copy a payload of) a message that is out of place.
      KVB_RETURN_IF_ERROR(check_data_order());
      return add_data(msg.data());
    case pb::CacheChunk::kTrailer: return add_trailer(msg.trailer());
    case pb::CacheChunk::PART_NOT_SET: break;
  }
  return fail(invalid_argument("cache stream: a message with no header, data or trailer"));
}

Status CacheStreamReader::add(pb::CacheChunk&& msg) { return add(static_cast<const pb::CacheChunk&>(msg)); }

Status CacheStreamReader::add_serialized(std::span<const std::string_view> pieces) {
  if (!error_.ok()) return error_;
  {
    // The common message, CacheChunk{data} and nothing else: read its fields in place.
    PieceReader r(pieces);
    uint64_t tag = 0, len = 0;
    KvWireChunkView c;
    int32_t kind = 0;
    if (r.varint(tag) && tag == kTagData && r.varint(len) && len == r.left() &&
        parse_kv_data(r, c, kind, payload_pieces_)) {
      KVB_RETURN_IF_ERROR(check_data_order());
      if (kind != pb::KV_KIND_K && kind != pb::KV_KIND_V) {
        return fail(invalid_argument(fmt::format("kv data: kind {} is neither K nor V", kind)));
      }
      c.is_v = kind == pb::KV_KIND_V;
      c.pieces = payload_pieces_;
      if (Status st = decoder_->add(c); !st.ok()) return fail(st);
      ++chunks_;
      return Status::Ok();
    }
  }
  // Anything else (header, trailer, unusual encodings): protobuf parses it.
  gathered_.clear();
  for (std::string_view p : pieces) gathered_.append(p);
  pb::CacheChunk msg;
  if (!msg.ParseFromString(gathered_)) return fail(invalid_argument("cache stream: a message does not parse"));
  return add(msg);
}

Status CacheStreamReader::check_data_order() {
  switch (stage_) {
    case Stage::kHeader: return fail(invalid_argument("cache stream: data before the header"));
    case Stage::kDone: return fail(invalid_argument("cache stream: a message after the trailer"));
    case Stage::kData: break;
  }
  return Status::Ok();
}

Status CacheStreamReader::add_header(const pb::KvHeader& m) {
  if (stage_ != Stage::kHeader) {
    return fail(invalid_argument(stage_ == Stage::kData ? "cache stream: a second header"
                                                        : "cache stream: a message after the trailer"));
  }
  Result<KvWireHeader> h = from_proto(m);
  if (!h.ok()) return fail(h.status());
  Result<std::unique_ptr<KvWireDecoder>> d = KvWireDecoder::create(*h, expected_, buffer_type_, n_ctx_min_, limits_,
                                                                    n_ctx_extra_);
  if (!d.ok()) return fail(d.status());
  decoder_ = std::move(d).value();
  stage_ = Stage::kData;
  return Status::Ok();
}

Status CacheStreamReader::add_data(const pb::KvData& m) {
  const Result<KvWireChunkView> chunk = view_from_proto(m);
  if (!chunk.ok()) return fail(chunk.status());
  if (Status s = decoder_->add(*chunk); !s.ok()) return fail(s);
  ++chunks_;
  return Status::Ok();
}

Status CacheStreamReader::add_trailer(const pb::KvTrailer& m) {
  switch (stage_) {
    case Stage::kHeader: return fail(invalid_argument("cache stream: trailer before the header"));
    case Stage::kDone: return fail(invalid_argument("cache stream: a second trailer"));
    case Stage::kData: break;
  }
  Result<std::unique_ptr<KvCache>> c = decoder_->finish(from_proto(m));
  if (!c.ok()) return fail(c.status());
  cache_ = std::move(c).value();
  stage_ = Stage::kDone;
  return Status::Ok();
}

Result<std::unique_ptr<KvCache>> CacheStreamReader::finish() {
  if (!error_.ok()) return error_;
  if (stage_ == Stage::kHeader) return invalid_argument("cache stream: ended before its header");
  if (stage_ == Stage::kData) {
    return invalid_argument(fmt::format("cache stream: ended before its trailer ({} of {} data chunks received)",
                                        chunks_, decoder_->header().n_chunks));
  }
  if (taken_) return failed_precondition("cache stream: the cache was already taken");
  taken_ = true;
  return std::move(cache_);
}

// ============================== snapshot files ==============================

namespace {

Status errno_status(std::string_view what, const std::string& path, int err) {
  const std::string m = fmt::format("{} {}: {}", what, path, std::strerror(err));
  switch (err) {
    case ENOENT:
    case ENOTDIR: return not_found(m);
    case EACCES:
    case EPERM:
    case EROFS: return Status(StatusCode::kPermissionDenied, m);
    case ENOSPC:
    case EDQUOT: return resource_exhausted(m);
    default: return internal_error(m);
  }
}

Status write_all(int fd, const void* data, size_t n, const std::string& path) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno_status("writing", path, errno);
    }
    p += w;
    n -= size_t(w);
  }
  return Status::Ok();
}

}  // namespace

// Sequential reads of exact byte counts, from a file or from memory.
class SnapshotSource {
 public:
  virtual ~SnapshotSource() = default;
  virtual uint64_t remaining() const = 0;
  // Exactly n <= remaining() bytes; the view is valid until the next call.
  virtual Result<std::string_view> read(size_t n) = 0;
};

namespace {

class MemorySource final : public SnapshotSource {
 public:
  explicit MemorySource(std::string_view bytes) : bytes_(bytes) {}
  uint64_t remaining() const override { return bytes_.size() - off_; }
  Result<std::string_view> read(size_t n) override {
    KVB_ASSERT(n <= remaining(), "read past the end");
    const std::string_view v = bytes_.substr(off_, n);
    off_ += n;
    return v;
  }

 private:
  std::string_view bytes_;
  size_t off_ = 0;
};

class FileSource final : public SnapshotSource {
 public:
  static Result<std::unique_ptr<FileSource>> open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno_status("opening", path, errno);
    std::unique_ptr<FileSource> s(new FileSource(path, fd));  // owns fd from here
    struct stat st {};
    if (::fstat(fd, &st) != 0) return errno_status("stat", path, errno);
    if (!S_ISREG(st.st_mode)) return invalid_argument(fmt::format("{}: not a regular file", path));
    s->remaining_ = uint64_t(st.st_size);
    return s;
  }
  ~FileSource() override { ::close(fd_); }
  uint64_t remaining() const override { return remaining_; }
  Result<std::string_view> read(size_t n) override {
    KVB_ASSERT(n <= remaining_, "read past the end");
    try {
      buf_.resize(n);
    } catch (const std::bad_alloc&) {
      return resource_exhausted("snapshot: out of memory");
    }
    size_t got = 0;
    while (got < n) {
      const ssize_t r = ::read(fd_, buf_.data() + got, n - got);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return errno_status("reading", path_, errno);
      if (r == 0) return invalid_argument(fmt::format("{}: the file shrank while being read", path_));
      got += size_t(r);
    }
    remaining_ -= n;
    return std::string_view(buf_.data(), n);
  }

 private:
  FileSource(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  std::string path_;
  int fd_;
  uint64_t remaining_ = 0;
  std::string buf_;
};

}  // namespace

// ---- SnapshotWriter ----

Result<std::unique_ptr<SnapshotWriter>> SnapshotWriter::create(const std::string& path) {
  std::string tmp = path + ".tmp.XXXXXX";
  const int fd = ::mkostemp(tmp.data(), O_CLOEXEC);  // mode 0600
  if (fd < 0) return errno_status("creating a temporary file for", path, errno);
  std::unique_ptr<SnapshotWriter> w(new SnapshotWriter(path, std::move(tmp), fd));
  if (Status s = write_all(fd, kSnapshotMagic.data(), kSnapshotMagic.size(), w->tmp_); !s.ok()) return s;
  w->bytes_ = kSnapshotMagic.size();
  return w;
}

SnapshotWriter::~SnapshotWriter() {
  if (fd_ >= 0) ::close(fd_);
  if (!committed_) ::unlink(tmp_.c_str());
}

Status SnapshotWriter::append(const pb::CacheChunk& msg) {
  if (committed_ || fd_ < 0) return failed_precondition("snapshot: append after commit or a failed commit");
  const size_t len = msg.ByteSizeLong();
  if (len > kMaxSnapshotMessageBytes) {
    return invalid_argument(fmt::format("snapshot: a message of {} bytes exceeds the limit of {}; use smaller chunks",
                                        len, kMaxSnapshotMessageBytes));
  }
  scratch_.resize(4);
  for (int i = 0; i < 4; ++i) scratch_[size_t(i)] = char(uint8_t(len >> (8 * i)));
  if (!msg.AppendToString(&scratch_)) return internal_error("snapshot: cannot serialize a message");
  KVB_RETURN_IF_ERROR(write_all(fd_, scratch_.data(), scratch_.size(), tmp_));
  bytes_ += scratch_.size();
  return Status::Ok();
}

Status SnapshotWriter::commit() {
  if (committed_ || fd_ < 0) return failed_precondition("snapshot: commit twice or after a failed commit");
  const int fd = std::exchange(fd_, -1);
  if (::fsync(fd) != 0) {
    const int err = errno;
    ::close(fd);
    return errno_status("syncing", tmp_, err);
  }
  if (::close(fd) != 0) return errno_status("closing", tmp_, errno);
  if (::rename(tmp_.c_str(), path_.c_str()) != 0) return errno_status("renaming onto", path_, errno);
  committed_ = true;
  return Status::Ok();
}

// ---- SnapshotReader ----

SnapshotReader::SnapshotReader(std::unique_ptr<SnapshotSource> src, uint64_t size)
    : src_(std::move(src)), size_(size) {}
SnapshotReader::~SnapshotReader() = default;

Result<std::unique_ptr<SnapshotReader>> SnapshotReader::start(std::unique_ptr<SnapshotSource> src) {
  const uint64_t size = src->remaining();
  if (size < kSnapshotMagic.size()) return invalid_argument("snapshot: too short for its magic");
  KVB_ASSIGN_OR_RETURN(const std::string_view magic, src->read(kSnapshotMagic.size()));
  if (magic != kSnapshotMagic) return invalid_argument("snapshot: bad magic (not a kvbridge cache file)");
  return std::unique_ptr<SnapshotReader>(new SnapshotReader(std::move(src), size));
}

Result<std::unique_ptr<SnapshotReader>> SnapshotReader::open(const std::string& path) {
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<FileSource> src, FileSource::open(path));
  auto r = start(std::move(src));
  if (!r.ok()) return r.status().with_context(path);
  return r;
}

Result<std::unique_ptr<SnapshotReader>> SnapshotReader::from_bytes(std::string_view bytes) {
  return start(std::make_unique<MemorySource>(bytes));
}

uint64_t SnapshotReader::bytes_left() const { return src_->remaining(); }

Result<bool> SnapshotReader::next(pb::CacheChunk& msg) {
  if (src_->remaining() == 0) return false;
  if (src_->remaining() < 4) return invalid_argument("snapshot: truncated inside a message length");
  KVB_ASSIGN_OR_RETURN(const std::string_view len_bytes, src_->read(4));
  uint32_t len = 0;
  for (int i = 0; i < 4; ++i) len |= uint32_t(uint8_t(len_bytes[size_t(i)])) << (8 * i);
  if (len > kMaxSnapshotMessageBytes) {
    return invalid_argument(fmt::format("snapshot: a message of {} bytes, over the limit of {}", len,
                                        kMaxSnapshotMessageBytes));
  }
  if (len > src_->remaining()) {
    return invalid_argument(fmt::format("snapshot: truncated: a message of {} bytes but {} left", len,
                                        src_->remaining()));
  }
  KVB_ASSIGN_OR_RETURN(const std::string_view body, src_->read(len));
  if (!msg.ParseFromArray(body.data(), int(body.size()))) return invalid_argument("snapshot: a message does not parse");
  return true;
}

// ---- whole caches ----

namespace {

Result<std::unique_ptr<KvCache>> decode_snapshot(SnapshotReader& snap, const ModelIdentity& expected,
                                                 const BufferType& buffer_type, int32_t n_ctx_min,
                                                 const KvWireLimits& limits) {
  CacheStreamReader reader(expected, buffer_type, n_ctx_min, limits);
  pb::CacheChunk msg;
  while (!reader.done()) {
    KVB_ASSIGN_OR_RETURN(const bool more, snap.next(msg));
    if (!more) break;  // truncated between messages: finish() says so
    KVB_RETURN_IF_ERROR(reader.add(std::move(msg)));
  }
  if (reader.done() && snap.bytes_left() != 0) {
    return invalid_argument(fmt::format("snapshot: {} bytes after the trailer", snap.bytes_left()));
  }
  return reader.finish();
}

}  // namespace

Status write_snapshot(const std::string& path, KvWireEncoder& encoder) {
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<SnapshotWriter> w, SnapshotWriter::create(path));
  CacheStreamWriter stream(encoder);
  pb::CacheChunk msg;
  while (stream.next(&msg)) KVB_RETURN_IF_ERROR(w->append(msg));
  return w->commit();
}

Result<std::unique_ptr<KvCache>> read_snapshot(const std::string& path, const ModelIdentity& expected,
                                               const BufferType& buffer_type, int32_t n_ctx_min,
                                               const KvWireLimits& limits) {
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<SnapshotReader> snap, SnapshotReader::open(path));
  Result<std::unique_ptr<KvCache>> r = decode_snapshot(*snap, expected, buffer_type, n_ctx_min, limits);
  if (!r.ok()) return r.status().with_context(path);
  return r;
}

Result<std::unique_ptr<KvCache>> decode_snapshot_bytes(std::string_view bytes, const ModelIdentity& expected,
                                                       const BufferType& buffer_type, int32_t n_ctx_min,
                                                       const KvWireLimits& limits) {
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<SnapshotReader> snap, SnapshotReader::from_bytes(bytes));
  return decode_snapshot(*snap, expected, buffer_type, n_ctx_min, limits);
}

Result<KvWireHeader> read_snapshot_header(const std::string& path) {
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<SnapshotReader> snap, SnapshotReader::open(path));
  pb::CacheChunk msg;
  Result<bool> got = snap->next(msg);
  if (!got.ok()) return got.status().with_context(path);
  if (!*got || msg.part_case() != pb::CacheChunk::kHeader) {
    return invalid_argument(fmt::format("{}: the snapshot does not start with a header", path));
  }
  return from_proto(msg.header());
}

}  // namespace kvb::wire
