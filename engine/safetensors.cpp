// Safetensors reader and writer (format in safetensors.h). Every header field is checked before any
// tensor byte is touched; a hostile file yields INVALID_ARGUMENT, never a crash.
#include "engine/safetensors.h"

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <exception>
#include <nlohmann/json.hpp>
#include <utility>

namespace kvb {
namespace {

using json = nlohmann::json;

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // as the reference implementation: 100 MB
constexpr int64_t kMaxDim = int64_t(1) << 40;
constexpr size_t kHeaderAlign = 8;

size_t elem_size(DType t) { return t == DType::kF32 || t == DType::kI32 ? 4 : 2; }

bool dtype_from_safetensors(std::string_view s, DType& out) {
  if (s == "F32") {
    out = DType::kF32;
  } else if (s == "F16") {
    out = DType::kF16;
  } else if (s == "BF16") {
    out = DType::kBF16;
  } else if (s == "I32") {
    out = DType::kI32;
  } else {
    return false;
  }
  return true;
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses one header entry into `e` (name already set). `what` prefixes every message.
Status parse_entry(const json& j, const std::string& what, SafetensorsEntry& e) {
  if (!j.is_object()) return invalid_argument(fmt::format("{}: entry is not a JSON object", what));
  const auto dt = j.find("dtype");
  if (dt == j.end() || !dt->is_string()) return invalid_argument(fmt::format("{}: missing string \"dtype\"", what));
  const std::string dtype = dt->get<std::string>();
  if (!dtype_from_safetensors(dtype, e.dtype)) {
    return invalid_argument(
        fmt::format("{}: unsupported dtype \"{}\" (kvbridge reads F32, F16 and BF16)", what, dtype));
  }
  const auto sh = j.find("shape");
  if (sh == j.end() || !sh->is_array()) return invalid_argument(fmt::format("{}: missing array \"shape\"", what));
  if (sh->size() > 4) return invalid_argument(fmt::format("{}: {} dims (at most 4 are supported)", what, sh->size()));
  int64_t numel = 1;
  for (const json& d : *sh) {
    if (!d.is_number_unsigned() || d.get<uint64_t>() > uint64_t(kMaxDim)) {
      return invalid_argument(fmt::format("{}: bad dimension {} in shape {}", what, d.dump(), sh->dump()));
    }
    const auto v = int64_t(d.get<uint64_t>());
    if (v > 0 && numel > kMaxDim / v)
      return invalid_argument(fmt::format("{}: shape {} is too large", what, sh->dump()));
    numel *= v;
    e.shape.push_back(v);
  }
  const auto off = j.find("data_offsets");
  if (off == j.end() || !off->is_array() || off->size() != 2 || !(*off)[0].is_number_unsigned() ||
      !(*off)[1].is_number_unsigned()) {
    return invalid_argument(fmt::format("{}: \"data_offsets\" must be two non-negative integers", what));
  }
  e.begin = (*off)[0].get<uint64_t>();
  e.end = (*off)[1].get<uint64_t>();
  if (e.end < e.begin)
    return invalid_argument(fmt::format("{}: data_offsets [{}, {}] are reversed", what, e.begin, e.end));
  const uint64_t want = uint64_t(numel) * elem_size(e.dtype);
  if (e.end - e.begin != want) {
    return invalid_argument(fmt::format("{}: data_offsets [{}, {}] hold {} bytes, but {} {} needs {}", what, e.begin,
                                        e.end, e.end - e.begin, dtype, sh->dump(), want));
  }
  return Status::Ok();
}

}  // namespace

int64_t SafetensorsEntry::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string_view safetensors_dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kF16:
      return "F16";
    case DType::kBF16:
      return "BF16";
    case DType::kI32:
      return "I32";
    default:
      return "";
  }
}

// ---------------------------------------------------------------------------------------------
// Reader

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  try {
    return open_impl(path);
  } catch (const std::exception& e) {  // bad_alloc on a huge header
    return resource_exhausted(fmt::format("safetensors {}: {}", path, e.what()));
  }
}

Result<SafetensorsFile> SafetensorsFile::open_impl(const std::string& path) {
  SafetensorsFile f;
  f.path_ = path;
  KVB_ASSIGN_OR_RETURN(f.file_, MappedFile::open(path));
  const size_t size = f.file_.size();
  const auto bad = [&](const std::string& m) { return invalid_argument(fmt::format("safetensors {}: {}", path, m)); };
  if (size < 8) return bad(fmt::format("file of {} bytes is too short for the header length", size));
  const uint64_t n = read_u64_le(f.file_.data());
  if (n == 0 || n > size - 8 || n > kMaxHeaderBytes) {
    return bad(fmt::format("header length {} does not fit the file ({} bytes)", n, size));
  }
  const char* hp = reinterpret_cast<const char*>(f.file_.data() + 8);
  if (hp[0] != '{') return bad("the header does not start with '{'");
  const json header = json::parse(hp, hp + n, nullptr, /*allow_exceptions=*/false);
  if (header.is_discarded()) return bad("the header is not valid JSON");
  if (!header.is_object()) return bad("the header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it->is_object()) return bad("__metadata__ is not an object");
      for (auto m = it->begin(); m != it->end(); ++m) {
        if (!m->is_string()) return bad(fmt::format("__metadata__ value of \"{}\" is not a string", m.key()));
        f.metadata_[m.key()] = m->get<std::string>();
      }
      continue;
    }
    SafetensorsEntry e;
    e.name = it.key();
    KVB_RETURN_IF_ERROR(parse_entry(*it, fmt::format("safetensors {}: tensor \"{}\"", path, e.name), e));
    f.entries_.push_back(std::move(e));
  }

  // The entries must tile the data section exactly: sorted by offset, each starting where the
  // previous one ended, the last ending at the end of the file.
  const uint64_t data_size = size - 8 - n;
  std::stable_sort(f.entries_.begin(), f.entries_.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t expect = 0;
  const SafetensorsEntry* prev = nullptr;
  for (const SafetensorsEntry& e : f.entries_) {
    if (e.end > data_size) {
      return bad(fmt::format("tensor \"{}\": data_offsets [{}, {}] are outside the {}-byte data section", e.name,
                             e.begin, e.end, data_size));
    }
    if (e.begin < expect) {
      return bad(fmt::format("tensor \"{}\" [{}, {}] overlaps tensor \"{}\" [{}, {}]", e.name, e.begin, e.end,
                             prev->name, prev->begin, prev->end));
    }
    if (e.begin > expect) {
      return bad(fmt::format("bytes [{}, {}) before tensor \"{}\" belong to no tensor", expect, e.begin, e.name));
    }
    expect = e.end;
    prev = &e;
  }
  if (expect != data_size) {
    return bad(fmt::format("the tensors index {} bytes but the data section has {}", expect, data_size));
  }

  f.data_ = f.file_.data() + 8 + n;
  f.addr_.resize(f.entries_.size());
  for (size_t i = 0; i < f.entries_.size(); ++i) {
    const SafetensorsEntry& e = f.entries_[i];
    if (!f.index_.emplace(e.name, i).second) return bad(fmt::format("tensor \"{}\" appears twice", e.name));
    const uint8_t* p = f.data_ + e.begin;
    if (reinterpret_cast<uintptr_t>(p) % elem_size(e.dtype) != 0) {
      // A writer that did not pad its header: copy, so views are always element-aligned.
      const size_t bytes = size_t(e.end - e.begin);
      std::unique_ptr<uint64_t[]> copy(new (std::nothrow) uint64_t[bytes / 8 + 1]);
      if (copy == nullptr)
        return resource_exhausted(fmt::format("safetensors {}: cannot realign \"{}\"", path, e.name));
      std::memcpy(copy.get(), p, bytes);
      p = reinterpret_cast<const uint8_t*>(copy.get());
      f.realigned_.push_back(std::move(copy));
    }
    f.addr_[i] = p;
  }
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(std::string_view name) const {
  const auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

Tensor SafetensorsFile::view(const SafetensorsEntry& e) const {
  const size_t i = size_t(&e - entries_.data());
  KVB_ASSERT(i < entries_.size(), "view() of an entry from another file");
  Tensor t;
  t.dtype = e.dtype;
  t.n_dims = int(e.shape.size());
  for (size_t d = 0; d < e.shape.size(); ++d) t.shape[d] = e.shape[d];
  t.data = const_cast<void*>(addr_[i]);  // read-only mapping: the Tensor contract says so
  return t;
}

Result<Tensor> SafetensorsFile::tensor(std::string_view name) const {
  const SafetensorsEntry* e = find(name);
  if (e == nullptr) return not_found(fmt::format("safetensors {}: no tensor \"{}\"", path_, name));
  return view(*e);
}

// ---------------------------------------------------------------------------------------------
// Writer

SafetensorsWriter::~SafetensorsWriter() {
  if (f_ != nullptr) std::fclose(f_);
}

Status SafetensorsWriter::declare(std::string name, DType dtype, std::vector<int64_t> shape) {
  if (f_ != nullptr || !path_.empty()) return failed_precondition("safetensors writer: declare() after open()");
  if (name.empty() || name == "__metadata__")
    return invalid_argument(fmt::format("safetensors writer: bad name \"{}\"", name));
  if (safetensors_dtype_name(dtype).empty()) {
    return invalid_argument(
        fmt::format("safetensors writer: tensor \"{}\" has unsupported dtype {}", name, dtype_name(dtype)));
  }
  if (shape.size() > 4)
    return invalid_argument(fmt::format("safetensors writer: tensor \"{}\" has {} dims", name, shape.size()));
  int64_t numel = 1;
  for (int64_t d : shape) {
    if (d < 0 || d > kMaxDim || (d > 0 && numel > kMaxDim / d)) {
      return invalid_argument(fmt::format("safetensors writer: tensor \"{}\" has a bad shape", name));
    }
    numel *= d;
  }
  for (const SafetensorsEntry& e : entries_) {
    if (e.name == name) return invalid_argument(fmt::format("safetensors writer: tensor \"{}\" declared twice", name));
  }
  SafetensorsEntry e;
  e.name = std::move(name);
  e.dtype = dtype;
  e.shape = std::move(shape);
  e.begin = total_;
  e.end = total_ + uint64_t(numel) * elem_size(dtype);
  total_ = e.end;
  entries_.push_back(std::move(e));
  return Status::Ok();
}

Status SafetensorsWriter::open(const std::string& path) {
  if (f_ != nullptr || !path_.empty()) return failed_precondition("safetensors writer: open() twice");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata_.empty()) header["__metadata__"] = metadata_;
  for (const SafetensorsEntry& e : entries_) {
    header[e.name] = {
        {"dtype", safetensors_dtype_name(e.dtype)}, {"shape", e.shape}, {"data_offsets", {e.begin, e.end}}};
  }
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // a name that is not valid UTF-8
    return invalid_argument(fmt::format("safetensors writer: bad header: {}", e.what()));
  }
  text.resize((text.size() + kHeaderAlign - 1) / kHeaderAlign * kHeaderAlign, ' ');  // data section 8-aligned
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = uint8_t(uint64_t(text.size()) >> (8 * i));

  path_ = path;
  f_ = std::fopen(path.c_str(), "wb");
  if (f_ == nullptr)
    return unavailable(fmt::format("safetensors writer: cannot create {}: {}", path, std::strerror(errno)));
  if (std::fwrite(len, 1, 8, f_) != 8 || std::fwrite(text.data(), 1, text.size(), f_) != text.size()) {
    return unavailable(fmt::format("safetensors writer: cannot write {}: {}", path, std::strerror(errno)));
  }
  return Status::Ok();
}

Status SafetensorsWriter::write(const void* bytes, size_t n) {
  if (f_ == nullptr) return failed_precondition("safetensors writer: write() before open() or after finish()");
  if (n > total_ - written_) {
    return out_of_range(
        fmt::format("safetensors writer: {} bytes past the {} declared", written_ + n - total_, total_));
  }
  if (n > 0 && std::fwrite(bytes, 1, n, f_) != n) {
    return unavailable(fmt::format("safetensors writer: cannot write {}: {}", path_, std::strerror(errno)));
  }
  written_ += n;
  return Status::Ok();
}

Status SafetensorsWriter::finish() {
  if (f_ == nullptr) return failed_precondition("safetensors writer: finish() before open()");
  if (written_ != total_) {
    return failed_precondition(fmt::format("safetensors writer: {} of {} data bytes written", written_, total_));
  }
  const bool ok = std::fclose(f_) == 0;
  f_ = nullptr;
  if (!ok) return unavailable(fmt::format("safetensors writer: cannot close {}", path_));
  return Status::Ok();
}

Status write_safetensors(const std::string& path, std::span<const SafetensorsTensor> tensors,
                         const std::map<std::string, std::string>& metadata) {
  SafetensorsWriter w;
  for (const auto& [k, v] : metadata) w.set_metadata(k, v);
  for (const SafetensorsTensor& t : tensors) KVB_RETURN_IF_ERROR(w.declare(t.name, t.dtype, t.shape));
  KVB_RETURN_IF_ERROR(w.open(path));
  for (const SafetensorsTensor& t : tensors) {
    uint64_t bytes = elem_size(t.dtype);
    for (int64_t d : t.shape) bytes *= uint64_t(d);
    if (bytes > 0 && t.data == nullptr) {
      return invalid_argument(fmt::format("safetensors writer: tensor \"{}\" has no data", t.name));
    }
    KVB_RETURN_IF_ERROR(w.write(t.data, size_t(bytes)));
  }
  return w.finish();
}

}  // namespace kvb
