// The base-logits file of a KL-divergence run: llama.cpp's `--kl-divergence-base` format (files
// are interchangeable with llama-perplexity's), plus an optional kvbridge trailer that llama.cpp
// never reads (it stops after the last row).
//
// Layout (little-endian, no padding):
//   "_logits_"                         8 bytes
//   u32 n_ctx, i32 n_vocab, i32 n_chunk
//   i32 ids[n_chunk · n_ctx]           the evaluation ids, as tokenized (BOS not substituted)
//   per window: u16 rows[n_ctx - 1 - n_ctx/2][base_row_words(n_vocab)]  (engine/perplexity.h:
//                                      two floats, then one 16-bit log-prob per vocab id)
//   trailer (kvbridge, optional, 24 bytes): "KVBPPLT1", u64 tokenizer hash (ModelIdentity's
//                                      xxh3 over the vocab), i32 BOS id (-1: none), u32 0
// Size: 20 + 4·n_chunk·n_ctx + 2·n_chunk·(n_ctx - 1 - n_ctx/2)·(2⌈n_vocab/2⌉ + 4) (+ 24) bytes,
// about n_vocab bytes per text token (e.g. 32000-vocab, 1 M tokens ≈ 32 GB; stories260K's 512
// vocab, 4 k tokens ≈ 2 MB).
//
// Ownership: a writer/reader owns its open file (RAII). Not thread-safe.
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "kernels/status.h"

namespace kvb::ppl {

struct BaseHeader {
  int32_t n_ctx = 0, n_vocab = 0, n_chunk = 0;
  int32_t n_scored() const { return n_ctx - 1 - n_ctx / 2; }
  // uint16 words of one window's rows.
  size_t chunk_words() const;
};

struct BaseTrailer {
  uint64_t tokenizer_hash = 0;
  int32_t bos = -1;
};

class BaseWriter {
 public:
  // Creates (truncates) `path` and writes the header and ids (n_chunk · n_ctx of them).
  // NOT_FOUND when the file cannot be created; INVALID_ARGUMENT for a wrong ids count.
  static Result<std::unique_ptr<BaseWriter>> create(const std::string& path, const BaseHeader& header,
                                                    std::span<const int32_t> ids);
  // One window's rows, in order (header.chunk_words() words). FAILED_PRECONDITION past n_chunk.
  Status append_chunk(std::span<const uint16_t> rows);
  // Writes the trailer and closes. FAILED_PRECONDITION unless every window was appended;
  // DATA_LOSS when a write failed (e.g. the disk is full).
  Status finish(const BaseTrailer& trailer);

 private:
  BaseWriter() = default;
  std::string path_;
  BaseHeader header_;
  std::ofstream out_;
  int32_t chunks_written_ = 0;
};

class BaseReader {
 public:
  // Opens and validates the whole layout against the file size: INVALID_ARGUMENT for a file that
  // is not a base-logits file (magic), has impossible counts or ids outside [0, n_vocab), or whose
  // size does not match its counts (truncated); NOT_FOUND when it cannot be opened.
  static Result<std::unique_ptr<BaseReader>> open(const std::string& path);

  const BaseHeader& header() const { return header_; }
  const std::vector<int32_t>& ids() const { return ids_; }
  // Present in files kvbridge wrote; absent in llama-perplexity's.
  const std::optional<BaseTrailer>& trailer() const { return trailer_; }
  // The next window's rows (windows are read in order) into `rows` (resized to chunk_words()).
  // OUT_OF_RANGE past the last window; DATA_LOSS on a short read.
  Status read_chunk(std::vector<uint16_t>& rows);

 private:
  BaseReader() = default;
  std::string path_;
  BaseHeader header_;
  std::vector<int32_t> ids_;
  std::optional<BaseTrailer> trailer_;
  std::ifstream in_;
  int32_t chunks_read_ = 0;
};

}  // namespace kvb::ppl
