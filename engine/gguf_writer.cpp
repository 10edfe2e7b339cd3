// GGUF v3 writer: metadata in insertion order, tensor data aligned to general.alignment (32).
#include <fmt/format.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>

#include "engine/gguf.h"

namespace kvb {

namespace {

constexpr uint32_t kAlignment = 32;

void put_bytes(std::string& out, const void* p, size_t n) { out.append(static_cast<const char*>(p), n); }

template <class T>
void put(std::string& out, T v) {
  put_bytes(out, &v, sizeof(T));
}

void put_string(std::string& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out += s;
}

void put_value(std::string& out, const GgufValue& v) {
  put<uint32_t>(out, uint32_t(v.type));
  switch (v.type) {
    case GgufType::kString: put_string(out, v.str); return;
    case GgufType::kU32: put<uint32_t>(out, uint32_t(v.i)); return;
    case GgufType::kI32: put<int32_t>(out, int32_t(v.i)); return;
    case GgufType::kF32: put<float>(out, float(v.f)); return;
    case GgufType::kBool: put<uint8_t>(out, v.i ? 1 : 0); return;
    case GgufType::kArray:
      put<uint32_t>(out, uint32_t(v.array_type));
      put<uint64_t>(out, v.array_size());
      if (v.array_type == GgufType::kString) {
        for (const auto& s : v.arr_str) put_string(out, s);
      } else if (v.array_type == GgufType::kF32) {
        for (double f : v.arr_f) put<float>(out, float(f));
      } else {
        for (int64_t i : v.arr_i) put<int32_t>(out, int32_t(i));
      }
      return;
    default: KVB_ASSERT(false, "writer only emits the types of its setters");
  }
}

}  // namespace

void GgufWriter::set(const std::string& key, GgufValue v) {
  for (Kv& kv : kv_) {
    if (kv.key == key) {
      kv.value = std::move(v);
      return;
    }
  }
  kv_.push_back({key, std::move(v)});
}

void GgufWriter::set_string(const std::string& key, std::string v) {
  GgufValue g;
  g.type = GgufType::kString;
  g.str = std::move(v);
  set(key, std::move(g));
}

void GgufWriter::set_u32(const std::string& key, uint32_t v) {
  GgufValue g;
  g.type = GgufType::kU32;
  g.i = v;
  set(key, std::move(g));
}

void GgufWriter::set_i32(const std::string& key, int32_t v) {
  GgufValue g;
  g.type = GgufType::kI32;
  g.i = v;
  set(key, std::move(g));
}

void GgufWriter::set_f32(const std::string& key, float v) {
  GgufValue g;
  g.type = GgufType::kF32;
  g.f = v;
  set(key, std::move(g));
}

void GgufWriter::set_bool(const std::string& key, bool v) {
  GgufValue g;
  g.type = GgufType::kBool;
  g.i = v;
  set(key, std::move(g));
}

void GgufWriter::set_string_array(const std::string& key, std::vector<std::string> v) {
  GgufValue g;
  g.type = GgufType::kArray;
  g.array_type = GgufType::kString;
  g.arr_str = std::move(v);
  set(key, std::move(g));
}

void GgufWriter::set_f32_array(const std::string& key, std::vector<float> v) {
  GgufValue g;
  g.type = GgufType::kArray;
  g.array_type = GgufType::kF32;
  g.arr_f.assign(v.begin(), v.end());
  set(key, std::move(g));
}

void GgufWriter::set_i32_array(const std::string& key, std::vector<int32_t> v) {
  GgufValue g;
  g.type = GgufType::kArray;
  g.array_type = GgufType::kI32;
  g.arr_i.assign(v.begin(), v.end());
  set(key, std::move(g));
}

Result<size_t> GgufWriter::check_tensor(const std::string& name, DType dtype, const std::vector<int64_t>& ne) const {
  if (ne.empty() || ne.size() > 4) return invalid_argument(fmt::format("tensor '{}': 1..4 dims", name));
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16 && !dtype_is_quantized(dtype)) {
    return invalid_argument(fmt::format("tensor '{}': dtype {} cannot be stored in GGUF", name, dtype_name(dtype)));
  }
  int64_t rows = 1;
  for (size_t i = 1; i < ne.size(); ++i) rows *= ne[i];
  if (ne[0] % dtype_block_size(dtype) != 0) {
    return invalid_argument(fmt::format("tensor '{}': ne[0]={} not a multiple of the block size", name, ne[0]));
  }
  for (const auto& t : tensors_) {
    if (t.name == name) return invalid_argument(fmt::format("duplicate tensor '{}'", name));
  }
  return size_t(rows) * row_bytes(dtype, ne[0]);
}

Status GgufWriter::add_tensor(const std::string& name, DType dtype, std::vector<int64_t> ne, std::string bytes) {
  KVB_ASSIGN_OR_RETURN(const size_t want, check_tensor(name, dtype, ne));
  if (bytes.size() != want) {
    return invalid_argument(fmt::format("tensor '{}': {} bytes given, shape needs {}", name, bytes.size(), want));
  }
  tensors_.push_back({name, dtype, std::move(ne), want, std::move(bytes), {}});
  return Status::Ok();
}

Status GgufWriter::add_tensor_stream(const std::string& name, DType dtype, std::vector<int64_t> ne,
                                     TensorProducer produce) {
  KVB_ASSIGN_OR_RETURN(const size_t want, check_tensor(name, dtype, ne));
  if (!produce) return invalid_argument(fmt::format("tensor '{}': no producer", name));
  tensors_.push_back({name, dtype, std::move(ne), want, {}, std::move(produce)});
  return Status::Ok();
}

Status GgufWriter::write(const std::string& path) const {
  std::string head;
  put<uint32_t>(head, 0x46554747);
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_.size());
  for (const Kv& kv : kv_) {
    put_string(head, kv.key);
    put_value(head, kv.value);
  }
  uint64_t offset = 0;
  for (const PendingTensor& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, ggml_from_dtype(t.dtype));
    put<uint64_t>(head, offset);
    offset += (t.nbytes + kAlignment - 1) / kAlignment * kAlignment;
  }
  head.resize((head.size() + kAlignment - 1) / kAlignment * kAlignment, '\0');

  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) return unavailable(fmt::format("{}: cannot create: {}", tmp, std::strerror(errno)));
  bool ok = std::fwrite(head.data(), 1, head.size(), f) == head.size();
  Status produced;
  static const char kZeros[kAlignment] = {};
  for (const PendingTensor& t : tensors_) {
    if (!ok || !produced.ok()) break;
    if (t.produce) {
      size_t written = 0;
      const ByteSink emit = [&](const void* data, size_t n) -> Status {
        if (written + n > t.nbytes) {
          return internal_error(fmt::format("tensor '{}': producer emitted more than {} bytes", t.name, t.nbytes));
        }
        if (std::fwrite(data, 1, n, f) != n) return unavailable(fmt::format("{}: write failed", path));
        written += n;
        return Status::Ok();
      };
      produced = t.produce(emit);
      if (produced.ok() && written != t.nbytes) {
        produced = internal_error(
            fmt::format("tensor '{}': producer emitted {} bytes, shape needs {}", t.name, written, t.nbytes));
      }
    } else {
      ok = std::fwrite(t.bytes.data(), 1, t.bytes.size(), f) == t.bytes.size();
    }
    const size_t pad = (kAlignment - t.nbytes % kAlignment) % kAlignment;
    ok = ok && std::fwrite(kZeros, 1, pad, f) == pad;
  }
  ok = (std::fclose(f) == 0) && ok;
  if (!ok || !produced.ok()) {
    std::remove(tmp.c_str());
    return produced.ok() ? unavailable(fmt::format("{}: write failed", path)) : produced;
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) return unavailable(fmt::format("{}: rename failed: {}", path, ec.message()));
  return Status::Ok();
}

}  // namespace kvb
