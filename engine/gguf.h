// GGUF (v2 and v3) reading and writing.
//
// GgufFile maps a file read-only and validates its whole structure at open time: every metadata
// value, every tensor's type, shape and byte range. After a successful open, accessors never fail
// on memory safety; tensor data pointers stay valid as long as the GgufFile lives.
// Tensor shapes are reported in GGUF order: ne[0] is the contiguous dimension (so a matrix
// [n_out][n_in] has ne = {n_in, n_out}).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "engine/mmap_file.h"
#include "kernels/dtype.h"
#include "kernels/status.h"

namespace kvb {

enum class GgufType : uint32_t {
  kU8 = 0, kI8 = 1, kU16 = 2, kI16 = 3, kU32 = 4, kI32 = 5, kF32 = 6, kBool = 7,
  kString = 8, kArray = 9, kU64 = 10, kI64 = 11, kF64 = 12,
};

// ggml tensor type ids used in GGUF tensor infos.
enum class GgmlType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kBF16 = 30,
};
std::optional<DType> dtype_from_ggml(uint32_t ggml_type);
uint32_t ggml_from_dtype(DType t);  // DType must be a weight type (F32, F16, BF16 or a block type)
std::string_view ggml_type_name(uint32_t ggml_type);  // "q4_0" etc., for error messages

// One metadata value. Arrays hold scalars or strings (nested arrays are rejected at open).
struct GgufValue {
  GgufType type = GgufType::kU32;
  GgufType array_type = GgufType::kU32;  // element type when type == kArray
  // Scalars: integers in i (u64 values are stored bit-cast), floats in f, bool in i.
  int64_t i = 0;
  double f = 0.0;
  std::string str;
  std::vector<int64_t> arr_i;          // integer / bool arrays
  std::vector<double> arr_f;           // float arrays
  std::vector<std::string> arr_str;    // string arrays

  size_t array_size() const;
};

struct GgufTensor {
  std::string name;
  std::vector<int64_t> ne;  // GGUF order, ne[0] contiguous
  DType dtype = DType::kF32;
  uint64_t offset = 0;      // relative to the data section
  size_t nbytes = 0;
  const void* data = nullptr;

  int64_t numel() const;
};

class GgufFile {
 public:
  // Maps and validates `path`. INVALID_ARGUMENT for anything malformed (bad magic or version,
  // truncated header, absurd counts, a tensor of an unsupported type — named — or data out of
  // bounds); NOT_FOUND when the file does not exist.
  static Result<std::unique_ptr<GgufFile>> open(const std::string& path);

  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  const std::string& path() const { return path_; }

  // Metadata, in file order of first appearance.
  const std::map<std::string, GgufValue>& metadata() const { return kv_; }
  const GgufValue* find(std::string_view key) const;
  // Typed getters: nullopt when absent; INVALID_ARGUMENT (via Result) when present with a wrong type.
  Result<std::optional<std::string>> get_string(std::string_view key) const;
  Result<std::optional<int64_t>> get_int(std::string_view key) const;     // any integer type
  Result<std::optional<double>> get_float(std::string_view key) const;    // f32/f64 (ints accepted)
  Result<std::optional<bool>> get_bool(std::string_view key) const;

  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor* find_tensor(std::string_view name) const;

 private:
  std::string path_;
  MappedFile map_;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  std::map<std::string, GgufValue> kv_;
  std::vector<GgufTensor> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;

  friend class GgufParser;
};

// Builds a GGUF v3 file in memory order: metadata in insertion order, tensors aligned to 32 bytes.
class GgufWriter {
 public:
  void set_string(const std::string& key, std::string v);
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string_array(const std::string& key, std::vector<std::string> v);
  void set_f32_array(const std::string& key, std::vector<float> v);
  void set_i32_array(const std::string& key, std::vector<int32_t> v);
  // Tensor bytes are copied. ne in GGUF order (ne[0] contiguous); bytes.size() must equal the size
  // implied by dtype and ne (INVALID_ARGUMENT otherwise).
  Status add_tensor(const std::string& name, DType dtype, std::vector<int64_t> ne, std::string bytes);
  // A tensor whose bytes are produced during write() instead of being held: write() calls
  // `produce` once, in tensor order, and `produce` must pass exactly the byte size implied by dtype
  // and ne to `emit`, in order, in any number of calls. Anything `produce` captures must outlive
  // write(). A non-OK Status from `produce` (or a wrong byte count) aborts write(), which then
  // returns that Status and leaves no file behind. Same shape checks as add_tensor.
  using ByteSink = std::function<Status(const void* data, size_t n)>;
  using TensorProducer = std::function<Status(const ByteSink& emit)>;
  Status add_tensor_stream(const std::string& name, DType dtype, std::vector<int64_t> ne, TensorProducer produce);
  // Writes atomically (temp file + rename). UNAVAILABLE/INVALID_ARGUMENT on I/O errors.
  Status write(const std::string& path) const;

 private:
  struct Kv {
    std::string key;
    GgufValue value;
  };
  struct PendingTensor {
    std::string name;
    DType dtype;
    std::vector<int64_t> ne;
    size_t nbytes = 0;
    std::string bytes;        // add_tensor
    TensorProducer produce;   // add_tensor_stream (bytes unused)
  };
  void set(const std::string& key, GgufValue v);
  // Validates a new tensor's name, dtype and shape; returns its byte size.
  Result<size_t> check_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& ne) const;
  std::vector<Kv> kv_;
  std::vector<PendingTensor> tensors_;
};

}  // namespace kvb
