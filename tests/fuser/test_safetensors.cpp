// The safetensors reader and writer: round trips, and hostile files that must each give a clear
// Status (never a crash).
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "engine/safetensors.h"
#include "support/test_support.h"

namespace kvb::fuser {
namespace {

std::string path_for(const std::string& name) { return test::temp_dir() + "/" + name; }

// Writes u64 LE header length (or `len_override`), the header text, then `data`.
std::string write_raw(const std::string& name, const std::string& header, const std::string& data,
                      uint64_t len_override = UINT64_MAX) {
  const std::string path = path_for(name);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  const uint64_t n = len_override == UINT64_MAX ? header.size() : len_override;
  for (int i = 0; i < 8; ++i) out.put(char(uint8_t(n >> (8 * i))));
  out << header << data;
  return path;
}

// Opens `path`, expects INVALID_ARGUMENT whose message contains `needle`.
void expect_invalid(const std::string& path, const std::string& needle) {
  Result<SafetensorsFile> f = SafetensorsFile::open(path);
  REQUIRE_FALSE(f.ok());
  INFO(f.status().to_string());
  CHECK(f.status().code() == StatusCode::kInvalidArgument);
  CHECK(f.status().message().find(needle) != std::string::npos);
}

std::string bytes(size_t n) { return std::string(n, '\x01'); }

}  // namespace

TEST_CASE("fuser safetensors: writer and reader round trip", "[fuser]") {
  const std::vector<float> a = {1.5f, -2.0f, 3.25f, 0.0f, 7.0f, -8.5f};
  const std::vector<uint16_t> b = {fp32_to_bf16(1.0f), fp32_to_bf16(-3.0f), fp32_to_bf16(0.5f)};
  const std::vector<uint16_t> c = {fp32_to_fp16(0.25f)};
  const float scalar = 42.0f;
  const std::vector<int32_t> ids = {1, -7, 49151};
  const std::vector<SafetensorsTensor> tensors = {
      {"layer.a", DType::kF32, {2, 3}, a.data()},
      {"layer.b_bf16", DType::kBF16, {3}, b.data()},  // 6 bytes: the next f32 tensor starts misaligned
      {"scalar", DType::kF32, {}, &scalar},
      {"empty", DType::kF32, {0, 4}, nullptr},
      {"half", DType::kF16, {1, 1, 1, 1}, c.data()},
      {"ids", DType::kI32, {3}, ids.data()},  // token ids (kvbridge fuser dump)
  };
  const std::string path = path_for("round_trip.safetensors");
  REQUIRE(write_safetensors(path, tensors, {{"format", "test"}, {"note", "x"}}).ok());

  Result<SafetensorsFile> f = SafetensorsFile::open(path);
  REQUIRE(f.ok());
  CHECK(f->metadata().at("format") == "test");
  CHECK(f->entries().size() == 6);
  CHECK(f->entries()[0].name == "layer.a");  // data order
  Result<Tensor> ta = f->tensor("layer.a");
  REQUIRE(ta.ok());
  CHECK(ta->dtype == DType::kF32);
  CHECK(ta->n_dims == 2);
  CHECK(ta->shape[0] == 2);
  CHECK(ta->shape[1] == 3);
  CHECK(std::memcmp(ta->data, a.data(), a.size() * 4) == 0);
  Result<Tensor> tb = f->tensor("layer.b_bf16");
  REQUIRE(tb.ok());
  CHECK(tb->dtype == DType::kBF16);
  CHECK(std::memcmp(tb->data, b.data(), b.size() * 2) == 0);
  Result<Tensor> ts = f->tensor("scalar");
  REQUIRE(ts.ok());
  CHECK(ts->n_dims == 0);
  CHECK(ts->numel() == 1);
  CHECK(*ts->as<const float>() == 42.0f);
  CHECK(reinterpret_cast<uintptr_t>(ts->data) % 4 == 0);  // realigned copy
  CHECK(f->tensor("empty")->numel() == 0);
  CHECK(f->tensor("half")->n_dims == 4);
  Result<Tensor> ti = f->tensor("ids");
  REQUIRE(ti.ok());
  CHECK(ti->dtype == DType::kI32);
  CHECK(std::memcmp(ti->data, ids.data(), ids.size() * 4) == 0);
  CHECK(f->tensor("missing").status().code() == StatusCode::kNotFound);
  CHECK(f->find("missing") == nullptr);

  // Views survive a move of the file object.
  const void* before = f->tensor("layer.a")->data;
  SafetensorsFile moved = std::move(f).value();
  CHECK(moved.tensor("layer.a")->data == before);
}

TEST_CASE("fuser safetensors: streaming writer checks its contract", "[fuser]") {
  SafetensorsWriter w;
  REQUIRE(w.declare("x", DType::kF32, {2}).ok());
  CHECK(w.declare("x", DType::kF32, {2}).code() == StatusCode::kInvalidArgument);
  CHECK(w.declare("q", DType::kQ8_0, {32}).code() == StatusCode::kInvalidArgument);
  CHECK(w.declare("neg", DType::kF32, {-1}).code() == StatusCode::kInvalidArgument);
  CHECK(w.declare("five", DType::kF32, {1, 1, 1, 1, 1}).code() == StatusCode::kInvalidArgument);
  CHECK(w.declare("", DType::kF32, {1}).code() == StatusCode::kInvalidArgument);
  REQUIRE(w.open(path_for("stream.safetensors")).ok());
  CHECK(w.declare("late", DType::kF32, {1}).code() == StatusCode::kFailedPrecondition);
  const float v[3] = {1, 2, 3};
  REQUIRE(w.write(v, 4).ok());
  CHECK(w.write(v, 8).code() == StatusCode::kOutOfRange);
  CHECK(w.finish().code() == StatusCode::kFailedPrecondition);  // 4 of 8 bytes
  REQUIRE(w.write(v + 1, 4).ok());
  REQUIRE(w.finish().ok());
  Result<SafetensorsFile> f = SafetensorsFile::open(path_for("stream.safetensors"));
  REQUIRE(f.ok());
  CHECK(f->tensor("x")->as<const float>()[1] == 2.0f);

  SafetensorsWriter bad_name;
  REQUIRE(bad_name.declare("\xff\xfe", DType::kF32, {1}).ok());
  CHECK(bad_name.open(path_for("bad_name.safetensors")).code() == StatusCode::kInvalidArgument);
}

TEST_CASE("fuser safetensors: hostile files give clear errors", "[fuser]") {
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

  SECTION("missing file") {
    CHECK(SafetensorsFile::open(path_for("nope.safetensors")).status().code() == StatusCode::kNotFound);
  }
  SECTION("shorter than the length field") {
    const std::string p = path_for("short.safetensors");
    std::ofstream(p, std::ios::binary) << "abc";
    expect_invalid(p, "too short");
  }
  SECTION("header length beyond the file") {
    expect_invalid(write_raw("len.safetensors", ok_header, bytes(8), 1000), "header length 1000");
  }
  SECTION("absurd header length") {
    expect_invalid(write_raw("huge.safetensors", ok_header, bytes(8), uint64_t(1) << 62), "header length");
  }
  SECTION("zero header length") { expect_invalid(write_raw("zero.safetensors", "", bytes(8), 0), "header length 0"); }
  SECTION("truncated data") {
    expect_invalid(write_raw("trunc.safetensors", ok_header, bytes(7)), "outside the 7-byte data section");
  }
  SECTION("trailing bytes") {
    expect_invalid(write_raw("trail.safetensors", ok_header, bytes(9)), "index 8 bytes but the data section has 9");
  }
  SECTION("bad JSON") { expect_invalid(write_raw("json.safetensors", "{\"a\": [1,", bytes(8)), "not valid JSON"); }
  SECTION("not an object") { expect_invalid(write_raw("arr.safetensors", "[1, 2]", ""), "start with '{'"); }
  SECTION("entry not an object") {
    expect_invalid(write_raw("ent.safetensors", R"({"a": 3})", ""), "\"a\": entry is not a JSON object");
  }
  SECTION("unsupported dtype names the tensor") {
    expect_invalid(write_raw("dt.safetensors", R"({"w.q":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", bytes(8)),
                   "tensor \"w.q\": unsupported dtype \"I64\"");
  }
  SECTION("missing dtype") {
    expect_invalid(write_raw("nodt.safetensors", R"({"a":{"shape":[2],"data_offsets":[0,8]}})", bytes(8)), "dtype");
  }
  SECTION("offsets out of bounds") {
    expect_invalid(
        write_raw("oob.safetensors", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[100,108]}})", bytes(8)),
        "outside");
  }
  SECTION("offsets inconsistent with the shape") {
    expect_invalid(write_raw("sz.safetensors", R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", bytes(8)),
                   "needs 12");
  }
  SECTION("reversed offsets") {
    expect_invalid(write_raw("rev.safetensors", R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", bytes(8)),
                   "reversed");
  }
  SECTION("negative offsets") {
    expect_invalid(
        write_raw("negoff.safetensors", R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", bytes(8)),
        "data_offsets");
  }
  SECTION("overlapping tensors") {
    expect_invalid(write_raw("ovl.safetensors",
                             R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                             R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                             bytes(12)),
                   "overlaps");
  }
  SECTION("a hole between tensors") {
    expect_invalid(write_raw("hole.safetensors",
                             R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                             R"("b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}})",
                             bytes(12)),
                   "belong to no tensor");
  }
  SECTION("negative dimension") {
    expect_invalid(
        write_raw("negdim.safetensors", R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", bytes(8)),
        "bad dimension");
  }
  SECTION("overflowing shape") {
    expect_invalid(
        write_raw("ovf.safetensors",
                  R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}})", bytes(8)),
        "too large");
  }
  SECTION("fractional dimension") {
    expect_invalid(
        write_raw("frac.safetensors", R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", bytes(8)),
        "bad dimension");
  }
  SECTION("too many dimensions") {
    expect_invalid(
        write_raw("dims.safetensors", R"({"a":{"dtype":"F32","shape":[1,1,1,1,2],"data_offsets":[0,8]}})", bytes(8)),
        "5 dims");
  }
  SECTION("metadata values must be strings") {
    expect_invalid(write_raw("meta.safetensors", R"({"__metadata__":{"k":1}})", ""), "not a string");
  }
}

}  // namespace kvb::fuser
