// Safetensors: a validating reader (mmap, zero-copy tensor views) and a streaming writer.
//
// Format (https://github.com/huggingface/safetensors, "Format"):
//   u64 little-endian N | N bytes of UTF-8 JSON header | data section
//   header = { "<tensor name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
//              "__metadata__": {"<key>": "<string value>", ...} (optional) }
//   Offsets are relative to the data section; the tensors index the whole data section with no
//   holes and no overlap; the data is row-major little-endian. The header may be padded with
//   trailing spaces (our writer pads it so the data section starts 8-byte aligned).
//
// kvbridge reads F32, F16 and BF16 (any other dtype is INVALID_ARGUMENT naming the tensor) with at
// most 4 dimensions (kvb::Tensor's limit); a 0-dim shape [] is one scalar element.
#pragma once

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/mmap_file.h"
#include "kernels/status.h"
#include "kernels/tensor.h"

namespace kvb {

// One tensor of a file: where its bytes are and what they hold.
struct SafetensorsEntry {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;  // outermost first; empty for a 0-dim scalar
  uint64_t begin = 0;          // byte offsets in the data section: [begin, end)
  uint64_t end = 0;

  int64_t numel() const;
};

// "F32" / "F16" / "BF16" / "I32" for the dtypes kvbridge reads and writes; "" for the others.
std::string_view safetensors_dtype_name(DType t);

// A read-only safetensors file mapped in memory. Move-only; tensor views stay valid (and at the
// same addresses) while the object lives, including across moves.
// Thread-safety: immutable after open(); any number of threads may read it.
class SafetensorsFile {
 public:
  // Maps and validates `path` completely (header length vs file size, JSON, dtypes, shapes and
  // their byte sizes, offsets in bounds, contiguous and non-overlapping). NOT_FOUND for a missing
  // file; INVALID_ARGUMENT with the file name and the offending tensor for anything malformed.
  static Result<SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return path_; }
  // Tensors in data order.
  std::span<const SafetensorsEntry> entries() const { return entries_; }
  // nullptr when absent.
  const SafetensorsEntry* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // A view of an entry's bytes (read-only memory: never write through it). The data pointer is
  // aligned to the element size: the few tensors a foreign writer left misaligned are copied to
  // owned, aligned memory at open().
  Tensor view(const SafetensorsEntry& e) const;
  // view(*find(name)), or NOT_FOUND naming the tensor and the file.
  Result<Tensor> tensor(std::string_view name) const;

 private:
  static Result<SafetensorsFile> open_impl(const std::string& path);

  std::string path_;
  MappedFile file_;
  const uint8_t* data_ = nullptr;  // start of the data section inside file_
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t, std::less<>> index_;  // name -> entries_ index
  std::map<std::string, std::string> metadata_;
  std::vector<std::unique_ptr<uint64_t[]>> realigned_;  // copies of misaligned tensors
  std::vector<const void*> addr_;                       // per entry: where its bytes are
};

// Streaming writer: declare every tensor (name, dtype, shape) first, then open() writes the header
// and write() appends the data of the declared tensors in declaration order, in pieces of any size;
// finish() checks that exactly the declared bytes were written and closes the file. A writer that
// is destroyed before finish() leaves a truncated file behind (which the reader rejects).
// Not thread-safe.
class SafetensorsWriter {
 public:
  SafetensorsWriter() = default;
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // INVALID_ARGUMENT for a duplicate or empty name, an unsupported dtype, a negative dimension,
  // more than 4 dims, or a call after open().
  Status declare(std::string name, DType dtype, std::vector<int64_t> shape);
  void set_metadata(std::string key, std::string value) { metadata_[std::move(key)] = std::move(value); }

  // Creates (truncates) the file and writes the header. UNAVAILABLE on an I/O error.
  Status open(const std::string& path);
  // Appends data bytes. OUT_OF_RANGE past the declared total.
  Status write(const void* bytes, size_t n);
  Status finish();

  uint64_t data_bytes() const { return total_; }

 private:
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  uint64_t total_ = 0;
  uint64_t written_ = 0;
  std::string path_;
  std::FILE* f_ = nullptr;
};

// One tensor to write in one go: `data` holds numel(shape) elements of dtype (borrowed).
struct SafetensorsTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
};

// Writes a whole file (tensors in the given order). Errors as SafetensorsWriter.
Status write_safetensors(const std::string& path, std::span<const SafetensorsTensor> tensors,
                         const std::map<std::string, std::string>& metadata = {});

}  // namespace kvb
