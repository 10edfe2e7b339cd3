// GGUF reader: parses the header, metadata and tensor table of a mapped file with every read
// bounds-checked, so a truncated or hostile file yields INVALID_ARGUMENT and never a crash.
#include <fmt/format.h>

#include <limits>
#include <utility>

#include "engine/gguf.h"

namespace kvb {

namespace {

constexpr uint32_t kGgufMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kMaxDims = 4;

}  // namespace

namespace {
constexpr std::pair<GgmlType, DType> kGgmlTypes[] = {
    {GgmlType::kF32, DType::kF32},   {GgmlType::kF16, DType::kF16},   {GgmlType::kBF16, DType::kBF16},
    {GgmlType::kQ8_0, DType::kQ8_0}, {GgmlType::kQ4_0, DType::kQ4_0}, {GgmlType::kQ4_1, DType::kQ4_1},
    {GgmlType::kQ5_0, DType::kQ5_0}, {GgmlType::kQ5_1, DType::kQ5_1}, {GgmlType::kQ2_K, DType::kQ2_K},
    {GgmlType::kQ3_K, DType::kQ3_K}, {GgmlType::kQ4_K, DType::kQ4_K}, {GgmlType::kQ5_K, DType::kQ5_K},
    {GgmlType::kQ6_K, DType::kQ6_K},
};
}  // namespace

std::optional<DType> dtype_from_ggml(uint32_t ggml_type) {
  for (const auto& [g, d] : kGgmlTypes) {
    if (uint32_t(g) == ggml_type) return d;
  }
  return std::nullopt;
}

uint32_t ggml_from_dtype(DType t) {
  for (const auto& [g, d] : kGgmlTypes) {
    if (d == t) return uint32_t(g);
  }
  KVB_ASSERT(false, "dtype has no ggml equivalent");
}

std::string_view ggml_type_name(uint32_t t) {
  static constexpr std::string_view kNames[] = {
      "f32",  "f16",  "q4_0", "q4_1", "q4_2", "q4_3", "q5_0",    "q5_1",    "q8_0",    "q8_1",
      "q2_K", "q3_K", "q4_K", "q5_K", "q6_K", "q8_K", "iq2_xxs", "iq2_xs",  "iq3_xxs", "iq1_s",
      "iq4_nl", "iq3_s", "iq2_s", "iq4_xs", "i8", "i16", "i32",  "i64",     "f64",     "iq1_m",
      "bf16"};
  if (t < std::size(kNames)) return kNames[t];
  return "unknown";
}

size_t GgufValue::array_size() const {
  return arr_str.size() + arr_i.size() + arr_f.size();
}

int64_t GgufTensor::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  return n;
}

// Cursor over the mapped bytes; every read checks the remaining length.
class GgufParser {
 public:
  GgufParser(const uint8_t* data, size_t size, const std::string& path)
      : data_(data), size_(size), path_(path) {}

  Status parse(GgufFile& f) {
    uint32_t magic = 0;
    KVB_RETURN_IF_ERROR(read_pod(magic, "magic"));
    if (magic != kGgufMagic) return error("not a GGUF file (bad magic)");
    KVB_RETURN_IF_ERROR(read_pod(f.version_, "version"));
    if (f.version_ != 2 && f.version_ != 3) {
      return error(fmt::format("unsupported GGUF version {} (supported: 2, 3)", f.version_));
    }
    uint64_t n_tensors = 0, n_kv = 0;
    KVB_RETURN_IF_ERROR(read_pod(n_tensors, "tensor count"));
    KVB_RETURN_IF_ERROR(read_pod(n_kv, "metadata count"));
    // Each kv needs at least 8 (key length) + 4 (type) bytes, each tensor at least 8 + 4 + 4 + 8.
    if (n_kv > remaining() / 12 || n_tensors > remaining() / 24) {
      return error(fmt::format("implausible counts: {} metadata entries, {} tensors for a {}-byte file", n_kv,
                               n_tensors, size_));
    }
    for (uint64_t i = 0; i < n_kv; ++i) {
      std::string key;
      KVB_RETURN_IF_ERROR(read_string(key, "metadata key"));
      uint32_t type = 0;
      KVB_RETURN_IF_ERROR(read_pod(type, "metadata type"));
      GgufValue v;
      KVB_RETURN_IF_ERROR(read_value(type, v, key, /*allow_array=*/true));
      if (!f.kv_.emplace(key, std::move(v)).second) return error(fmt::format("duplicate metadata key '{}'", key));
    }
    if (const GgufValue* a = f.find("general.alignment")) {
      if (a->type != GgufType::kU32 || a->i <= 0 || (a->i & (a->i - 1)) != 0) {
        return error("general.alignment must be a power-of-two u32");
      }
      f.alignment_ = uint32_t(a->i);
    }
    f.tensors_.reserve(size_t(n_tensors));
    for (uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensor t;
      KVB_RETURN_IF_ERROR(read_tensor_info(t));
      if (!f.tensor_index_.emplace(t.name, f.tensors_.size()).second) {
        return error(fmt::format("duplicate tensor '{}'", t.name));
      }
      f.tensors_.push_back(std::move(t));
    }
    const uint64_t data_start = (pos_ + f.alignment_ - 1) / f.alignment_ * f.alignment_;
    for (GgufTensor& t : f.tensors_) {
      if (t.offset % f.alignment_ != 0) {
        return error(fmt::format("tensor '{}': offset {} is not aligned to {}", t.name, t.offset, f.alignment_));
      }
      if (data_start > size_ || t.offset > size_ - data_start || t.nbytes > size_ - data_start - t.offset) {
        return error(fmt::format("tensor '{}': data [{}, +{}) lies outside the file ({} bytes)", t.name,
                                 data_start + t.offset, t.nbytes, size_));
      }
      t.data = data_ + data_start + t.offset;
    }
    return Status::Ok();
  }

 private:
  size_t remaining() const { return size_ - pos_; }

  Status error(const std::string& what) const {
    return invalid_argument(fmt::format("{}: {} (at byte {})", path_, what, pos_));
  }

  template <class T>
  Status read_pod(T& out, std::string_view what) {
    if (remaining() < sizeof(T)) return error(fmt::format("truncated file while reading {}", what));
    std::memcpy(&out, data_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return Status::Ok();
  }

  Status read_string(std::string& out, std::string_view what) {
    uint64_t len = 0;
    KVB_RETURN_IF_ERROR(read_pod(len, what));
    if (len > remaining()) return error(fmt::format("truncated file while reading {} ({} bytes)", what, len));
    out.assign(reinterpret_cast<const char*>(data_ + pos_), size_t(len));
    pos_ += size_t(len);
    return Status::Ok();
  }

  static size_t scalar_size(uint32_t type) {
    switch (GgufType(type)) {
      case GgufType::kU8: case GgufType::kI8: case GgufType::kBool: return 1;
      case GgufType::kU16: case GgufType::kI16: return 2;
      case GgufType::kU32: case GgufType::kI32: case GgufType::kF32: return 4;
      case GgufType::kU64: case GgufType::kI64: case GgufType::kF64: return 8;
      default: return 0;
    }
  }

  // Reads one scalar of `type` into i (integers, bool) or f (floats).
  Status read_scalar(uint32_t type, int64_t& i, double& f, bool& is_float) {
    is_float = false;
    switch (GgufType(type)) {
      case GgufType::kU8: { uint8_t v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "u8")); i = v; return Status::Ok(); }
      case GgufType::kI8: { int8_t v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "i8")); i = v; return Status::Ok(); }
      case GgufType::kU16: { uint16_t v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "u16")); i = v; return Status::Ok(); }
      case GgufType::kI16: { int16_t v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "i16")); i = v; return Status::Ok(); }
      case GgufType::kU32: { uint32_t v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "u32")); i = v; return Status::Ok(); }
      case GgufType::kI32: { int32_t v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "i32")); i = v; return Status::Ok(); }
      case GgufType::kU64: { uint64_t v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "u64")); i = int64_t(v); return Status::Ok(); }
      case GgufType::kI64: { int64_t v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "i64")); i = v; return Status::Ok(); }
      case GgufType::kBool: {
        uint8_t v = 0;
        KVB_RETURN_IF_ERROR(read_pod(v, "bool"));
        if (v > 1) return error("bool value is neither 0 nor 1");
        i = v;
        return Status::Ok();
      }
      case GgufType::kF32: { float v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "f32")); f = v; is_float = true; return Status::Ok(); }
      case GgufType::kF64: { double v = 0; KVB_RETURN_IF_ERROR(read_pod(v, "f64")); f = v; is_float = true; return Status::Ok(); }
      default: return error(fmt::format("unknown metadata value type {}", type));
    }
  }

  Status read_value(uint32_t type, GgufValue& v, const std::string& key, bool allow_array) {
    v.type = GgufType(type);
    if (type == uint32_t(GgufType::kString)) return read_string(v.str, key);
    if (type == uint32_t(GgufType::kArray)) {
      if (!allow_array) return error(fmt::format("'{}': nested arrays are not supported", key));
      uint32_t elem = 0;
      uint64_t n = 0;
      KVB_RETURN_IF_ERROR(read_pod(elem, "array type"));
      KVB_RETURN_IF_ERROR(read_pod(n, "array length"));
      v.array_type = GgufType(elem);
      if (elem == uint32_t(GgufType::kString)) {
        if (n > remaining() / 8) return error(fmt::format("'{}': array of {} strings overruns the file", key, n));
        v.arr_str.resize(size_t(n));
        for (auto& s : v.arr_str) KVB_RETURN_IF_ERROR(read_string(s, key));
        return Status::Ok();
      }
      const size_t es = scalar_size(elem);
      if (es == 0) return error(fmt::format("'{}': unsupported array element type {}", key, elem));
      if (n > remaining() / es) return error(fmt::format("'{}': array of {} elements overruns the file", key, n));
      const bool is_float_type = elem == uint32_t(GgufType::kF32) || elem == uint32_t(GgufType::kF64);
      (is_float_type ? v.arr_f.reserve(size_t(n)) : v.arr_i.reserve(size_t(n)));
      for (uint64_t j = 0; j < n; ++j) {
        int64_t iv = 0;
        double fv = 0;
        bool is_float = false;
        KVB_RETURN_IF_ERROR(read_scalar(elem, iv, fv, is_float));
        if (is_float) v.arr_f.push_back(fv);
        else v.arr_i.push_back(iv);
      }
      return Status::Ok();
    }
    bool is_float = false;
    return read_scalar(type, v.i, v.f, is_float);
  }

  Status read_tensor_info(GgufTensor& t) {
    KVB_RETURN_IF_ERROR(read_string(t.name, "tensor name"));
    uint32_t n_dims = 0;
    KVB_RETURN_IF_ERROR(read_pod(n_dims, "tensor dims"));
    if (n_dims == 0 || n_dims > kMaxDims) {
      return error(fmt::format("tensor '{}': {} dimensions (1..4 supported)", t.name, n_dims));
    }
    t.ne.resize(n_dims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t ne = 0;
      KVB_RETURN_IF_ERROR(read_pod(ne, "tensor shape"));
      if (ne == 0 || ne > uint64_t(std::numeric_limits<int64_t>::max()) ||
          numel > uint64_t(std::numeric_limits<int64_t>::max()) / ne) {
        return error(fmt::format("tensor '{}': invalid dimension {}", t.name, ne));
      }
      numel *= ne;
      t.ne[d] = int64_t(ne);
    }
    uint32_t type = 0;
    KVB_RETURN_IF_ERROR(read_pod(type, "tensor type"));
    const auto dt = dtype_from_ggml(type);
    if (!dt) {
      return error(fmt::format("tensor '{}' has type {} ({}), which kvbridge does not support "
                               "(supported: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_K, q3_K, q4_K, q5_K, q6_K)",
                               t.name, ggml_type_name(type), type));
    }
    t.dtype = *dt;
    if (t.ne[0] % dtype_block_size(t.dtype) != 0) {
      return error(fmt::format("tensor '{}': row of {} elements is not a multiple of the {} block size", t.name,
                               t.ne[0], dtype_name(t.dtype)));
    }
    if (numel / uint64_t(dtype_block_size(t.dtype)) > size_ / dtype_block_bytes(t.dtype)) {
      return error(fmt::format("tensor '{}': {} elements cannot fit in the file", t.name, numel));
    }
    t.nbytes = size_t(numel) / size_t(dtype_block_size(t.dtype)) * dtype_block_bytes(t.dtype);
    KVB_RETURN_IF_ERROR(read_pod(t.offset, "tensor offset"));
    return Status::Ok();
  }

  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
  const std::string& path_;
};

Result<std::unique_ptr<GgufFile>> GgufFile::open(const std::string& path) {
  auto f = std::make_unique<GgufFile>();
  f->path_ = path;
  KVB_ASSIGN_OR_RETURN(f->map_, MappedFile::open(path));
  GgufParser parser(f->map_.data(), f->map_.size(), path);
  KVB_RETURN_IF_ERROR(parser.parse(*f));
  return f;
}

const GgufValue* GgufFile::find(std::string_view key) const {
  auto it = kv_.find(std::string(key));
  return it == kv_.end() ? nullptr : &it->second;
}

const GgufTensor* GgufFile::find_tensor(std::string_view name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

bool is_int_type(GgufType t) {
  switch (t) {
    case GgufType::kU8: case GgufType::kI8: case GgufType::kU16: case GgufType::kI16:
    case GgufType::kU32: case GgufType::kI32: case GgufType::kU64: case GgufType::kI64:
      return true;
    default:
      return false;
  }
}

Status wrong_type(const std::string& path, std::string_view key, std::string_view want) {
  return invalid_argument(fmt::format("{}: metadata '{}' is not {}", path, key, want));
}

}  // namespace

Result<std::optional<std::string>> GgufFile::get_string(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::optional<std::string>();
  if (v->type != GgufType::kString) return wrong_type(path_, key, "a string");
  return std::optional<std::string>(v->str);
}

Result<std::optional<int64_t>> GgufFile::get_int(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::optional<int64_t>();
  if (!is_int_type(v->type)) return wrong_type(path_, key, "an integer");
  return std::optional<int64_t>(v->i);
}

Result<std::optional<double>> GgufFile::get_float(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::optional<double>();
  if (v->type == GgufType::kF32 || v->type == GgufType::kF64) return std::optional<double>(v->f);
  if (is_int_type(v->type)) return std::optional<double>(double(v->i));
  return wrong_type(path_, key, "a number");
}

Result<std::optional<bool>> GgufFile::get_bool(std::string_view key) const {
  const GgufValue* v = find(key);
  if (!v) return std::optional<bool>();
  if (v->type != GgufType::kBool) return wrong_type(path_, key, "a bool");
  return std::optional<bool>(v->i != 0);
}

}  // namespace kvb
