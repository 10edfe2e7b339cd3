// The base-logits file (see perplexity_base.h).
#include "engine/perplexity_base.h"

#include <fmt/format.h>

#include <bit>
#include <cstring>
#include <filesystem>

#include "engine/perplexity.h"

namespace kvb::ppl {

static_assert(std::endian::native == std::endian::little, "the base-logits file is little-endian");

namespace {

constexpr char kMagic[8] = {'_', 'l', 'o', 'g', 'i', 't', 's', '_'};
constexpr char kTrailerMagic[8] = {'K', 'V', 'B', 'P', 'P', 'L', 'T', '1'};
constexpr size_t kHeaderBytes = 8 + 3 * 4;
constexpr size_t kTrailerBytes = 8 + 8 + 4 + 4;
// Bounds that keep every size computation far from overflow.
constexpr int32_t kMaxCount = 1 << 24;

template <class T>
void put(std::ofstream& out, const T& v) {
  out.write(reinterpret_cast<const char*>(&v), sizeof(T));
}
template <class T>
bool get(std::ifstream& in, T& v) {
  return bool(in.read(reinterpret_cast<char*>(&v), sizeof(T)));
}

}  // namespace

size_t BaseHeader::chunk_words() const { return size_t(n_scored()) * size_t(base_row_words(n_vocab)); }

Result<std::unique_ptr<BaseWriter>> BaseWriter::create(const std::string& path, const BaseHeader& header,
                                                       std::span<const int32_t> ids) {
  if (ids.size() != size_t(header.n_chunk) * size_t(header.n_ctx)) {
    return invalid_argument(fmt::format("base logits: {} ids for {} windows of {}", ids.size(), header.n_chunk,
                                        header.n_ctx));
  }
  std::unique_ptr<BaseWriter> w(new BaseWriter());
  w->path_ = path;
  w->header_ = header;
  w->out_.open(path, std::ios::binary | std::ios::trunc);
  if (!w->out_) return not_found(fmt::format("cannot create {}", path));
  w->out_.write(kMagic, sizeof(kMagic));
  put(w->out_, uint32_t(header.n_ctx));
  put(w->out_, header.n_vocab);
  put(w->out_, header.n_chunk);
  w->out_.write(reinterpret_cast<const char*>(ids.data()), std::streamsize(ids.size_bytes()));
  if (!w->out_) return data_loss(fmt::format("writing {} failed", path));
  return w;
}

Status BaseWriter::append_chunk(std::span<const uint16_t> rows) {
  if (chunks_written_ >= header_.n_chunk) return failed_precondition("base logits: more windows than the header says");
  if (rows.size() != header_.chunk_words()) return invalid_argument("base logits: wrong row count for a window");
  out_.write(reinterpret_cast<const char*>(rows.data()), std::streamsize(rows.size_bytes()));
  if (!out_) return data_loss(fmt::format("writing {} failed", path_));
  ++chunks_written_;
  return {};
}

Status BaseWriter::finish(const BaseTrailer& trailer) {
  if (chunks_written_ != header_.n_chunk) {
    return failed_precondition(fmt::format("base logits: {} of {} windows written", chunks_written_, header_.n_chunk));
  }
  out_.write(kTrailerMagic, sizeof(kTrailerMagic));
  put(out_, trailer.tokenizer_hash);
  put(out_, trailer.bos);
  put(out_, uint32_t(0));
  out_.close();
  if (!out_) return data_loss(fmt::format("writing {} failed", path_));
  return {};
}

Result<std::unique_ptr<BaseReader>> BaseReader::open(const std::string& path) {
  std::unique_ptr<BaseReader> r(new BaseReader());
  r->path_ = path;
  r->in_.open(path, std::ios::binary);
  std::error_code ec;
  const uintmax_t file_size = std::filesystem::file_size(path, ec);
  if (!r->in_ || ec) return not_found(fmt::format("cannot open {}", path));
  const std::string what = fmt::format("{} is not a base-logits file (--kl-divergence-base)", path);
  char magic[8];
  uint32_t n_ctx = 0;
  BaseHeader& h = r->header_;
  if (!r->in_.read(magic, 8) || std::memcmp(magic, kMagic, 8) != 0) return invalid_argument(what + ": no _logits_ magic");
  if (!get(r->in_, n_ctx) || !get(r->in_, h.n_vocab) || !get(r->in_, h.n_chunk)) return invalid_argument(what + ": short header");
  if (n_ctx < 4 || n_ctx > uint32_t(kMaxCount) || h.n_vocab < 1 || h.n_vocab > kMaxCount || h.n_chunk < 1 ||
      h.n_chunk > kMaxCount) {
    return invalid_argument(fmt::format("{}: impossible counts n_ctx {}, n_vocab {}, n_chunk {}", what, n_ctx,
                                        h.n_vocab, h.n_chunk));
  }
  h.n_ctx = int32_t(n_ctx);
  // Each count < 2^24: ids < 2^50 bytes, one window's rows < 2^50 bytes; their product is checked.
  if (h.chunk_words() > (uint64_t(1) << 61) / uint64_t(h.n_chunk)) {
    return invalid_argument(fmt::format("{}: impossible size of {} windows of {} ids over {} vocab ids", what,
                                        h.n_chunk, h.n_ctx, h.n_vocab));
  }
  const uint64_t body = kHeaderBytes + 4 * uint64_t(h.n_chunk) * uint64_t(h.n_ctx) +
                        2 * uint64_t(h.n_chunk) * h.chunk_words();
  if (file_size != body && file_size != body + kTrailerBytes) {
    return invalid_argument(fmt::format("{}: {} bytes, but its counts (n_ctx {}, n_vocab {}, n_chunk {}) need {}{}",
                                        path, file_size, h.n_ctx, h.n_vocab, h.n_chunk, body,
                                        file_size < body ? " (truncated?)" : ""));
  }
  r->ids_.resize(size_t(h.n_chunk) * size_t(h.n_ctx));
  if (!r->in_.read(reinterpret_cast<char*>(r->ids_.data()), std::streamsize(r->ids_.size() * 4))) {
    return data_loss(fmt::format("{}: short read of the ids", path));
  }
  for (int32_t id : r->ids_) {
    if (id < 0 || id >= h.n_vocab) return invalid_argument(fmt::format("{}: id {} outside the vocab of {}", what, id, h.n_vocab));
  }
  if (file_size == body + kTrailerBytes) {
    const auto rows_at = r->in_.tellg();
    r->in_.seekg(std::streamoff(body));
    BaseTrailer t;
    uint32_t reserved = 0;
    if (!r->in_.read(magic, 8) || std::memcmp(magic, kTrailerMagic, 8) != 0 || !get(r->in_, t.tokenizer_hash) ||
        !get(r->in_, t.bos) || !get(r->in_, reserved)) {
      return invalid_argument(fmt::format("{}: 24 unexpected bytes after the last window", path));
    }
    r->trailer_ = t;
    r->in_.seekg(rows_at);
  }
  return r;
}

Status BaseReader::read_chunk(std::vector<uint16_t>& rows) {
  if (chunks_read_ >= header_.n_chunk) return out_of_range("base logits: no more windows");
  rows.resize(header_.chunk_words());
  if (!in_.read(reinterpret_cast<char*>(rows.data()), std::streamsize(rows.size() * 2))) {
    return data_loss(fmt::format("{}: short read of window {}", path_, chunks_read_));
  }
  ++chunks_read_;
  return {};
}

}  // namespace kvb::ppl
