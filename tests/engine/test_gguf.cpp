// GGUF reader/writer: real files, round trips, and malformed input.
#include <catch2/catch.hpp>

#include <fstream>

#include "engine/gguf.h"
#include "support/test_support.h"

using namespace kvb;

namespace {

std::string write_temp(const std::string& name, const std::string& bytes) {
  const std::string path = test::temp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

}  // namespace

TEST_CASE("gguf reads stories260K", "[gguf][model]") {
  auto f = GgufFile::open(test::model_path("stories260K/stories260K.gguf"));
  REQUIRE(f.ok());
  const GgufFile& g = **f;
  CHECK(g.version() == 3);
  CHECK(g.tensors().size() == 48);
  CHECK(g.metadata().size() == 19);
  CHECK(*g.get_string("general.architecture").value() == "llama");
  CHECK(*g.get_int("llama.block_count").value() == 5);
  CHECK(*g.get_int("llama.embedding_length").value() == 64);
  const GgufTensor* q = g.find_tensor("blk.0.attn_q.weight");
  REQUIRE(q != nullptr);
  CHECK(q->ne == std::vector<int64_t>{64, 64});
  CHECK(q->dtype == DType::kF32);
  const GgufTensor* k = g.find_tensor("blk.0.attn_k.weight");
  REQUIRE(k != nullptr);
  CHECK(k->ne == std::vector<int64_t>{64, 32});
  // Tensor data starts at byte 14176 (models README).
  const auto* base = static_cast<const uint8_t*>(g.tensors()[0].data) - g.tensors()[0].offset;
  const std::string bytes = test::read_file(test::model_path("stories260K/stories260K.gguf"));
  CHECK(std::string_view(reinterpret_cast<const char*>(base), 16) == std::string_view(bytes).substr(14176, 16));
  const GgufValue* tokens = g.find("tokenizer.ggml.tokens");
  REQUIRE(tokens != nullptr);
  CHECK(tokens->arr_str.size() == 512);
  CHECK(tokens->arr_str[1] == "<s>");
}

TEST_CASE("gguf reads f16 tensors of llama-2-tiny-random", "[gguf][model]") {
  auto f = GgufFile::open(test::model_path("llama-2-tiny-random/llama-2-tiny-random.gguf"));
  REQUIRE(f.ok());
  const GgufTensor* t = (*f)->find_tensor("token_embd.weight");
  REQUIRE(t != nullptr);
  CHECK(t->dtype == DType::kF16);
  CHECK(t->ne == std::vector<int64_t>{8, 32000});
  CHECK(t->nbytes == 8 * 32000 * 2);
}

TEST_CASE("gguf writer round trip", "[gguf]") {
  GgufWriter w;
  w.set_string("general.architecture", "llama");
  w.set_u32("llama.block_count", 3);
  w.set_f32("llama.rope.freq_base", 500000.f);
  w.set_bool("tokenizer.ggml.add_bos_token", true);
  w.set_string_array("tokenizer.ggml.tokens", {"a", "b", "<0x0A>"});
  w.set_f32_array("tokenizer.ggml.scores", {0.5f, -1.f, 0.f});
  w.set_i32_array("tokenizer.ggml.token_type", {1, 1, 6});
  std::vector<float> m(6 * 32);
  for (size_t i = 0; i < m.size(); ++i) m[i] = float(i) * 0.25f - 3.f;
  REQUIRE(w.add_tensor("a", DType::kF32, {32, 6}, std::string(reinterpret_cast<char*>(m.data()), m.size() * 4)).ok());
  std::string q8(row_bytes(DType::kQ8_0, 32) * 6, '\0');
  from_f32(DType::kQ8_0, m.data(), q8.data(), int64_t(m.size()));
  REQUIRE(w.add_tensor("b", DType::kQ8_0, {32, 6}, q8).ok());
  CHECK_FALSE(w.add_tensor("c", DType::kF32, {32, 6}, "short").ok());
  CHECK_FALSE(w.add_tensor("a", DType::kF32, {1}, std::string(4, '\0')).ok());
  const std::string path = test::temp_dir() + "/roundtrip.gguf";
  REQUIRE(w.write(path).ok());

  auto f = GgufFile::open(path);
  REQUIRE(f.ok());
  CHECK(*(*f)->get_int("llama.block_count").value() == 3);
  CHECK(*(*f)->get_float("llama.rope.freq_base").value() == 500000.0);
  CHECK(*(*f)->get_bool("tokenizer.ggml.add_bos_token").value());
  CHECK((*f)->find("tokenizer.ggml.tokens")->arr_str[2] == "<0x0A>");
  CHECK((*f)->find("tokenizer.ggml.token_type")->arr_i == std::vector<int64_t>{1, 1, 6});
  const GgufTensor* a = (*f)->find_tensor("a");
  REQUIRE(a != nullptr);
  CHECK(std::memcmp(a->data, m.data(), m.size() * 4) == 0);
  const GgufTensor* b = (*f)->find_tensor("b");
  REQUIRE(b != nullptr);
  CHECK(b->dtype == DType::kQ8_0);
  CHECK(std::memcmp(b->data, q8.data(), q8.size()) == 0);
  CHECK_FALSE((*f)->get_string("llama.block_count").ok());  // wrong type is an error, not a crash
}

TEST_CASE("gguf rejects malformed files with clear errors", "[gguf][bad-input]") {
  const std::string good = test::read_file(test::model_path("stories260K/stories260K.gguf"));

  SECTION("missing file") {
    auto f = GgufFile::open(test::temp_dir() + "/does-not-exist.gguf");
    REQUIRE_FALSE(f.ok());
    CHECK(f.status().code() == StatusCode::kNotFound);
  }
  SECTION("wrong magic") {
    std::string bad = good;
    bad[0] = 'X';
    auto f = GgufFile::open(write_temp("magic.gguf", bad));
    REQUIRE_FALSE(f.ok());
    CHECK(f.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(f.status().message(), Catch::Contains("bad magic"));
  }
  SECTION("unsupported version") {
    std::string bad = good;
    bad[4] = 1;
    auto f = GgufFile::open(write_temp("version.gguf", bad));
    REQUIRE_FALSE(f.ok());
    CHECK_THAT(f.status().message(), Catch::Contains("version 1"));
  }
  SECTION("every truncation is an error, never a crash") {
    // Cut inside the header, the metadata, the tensor table and the data section.
    for (size_t cut : {size_t(0), size_t(3), size_t(10), size_t(24), size_t(100), size_t(5000), size_t(14000),
                       size_t(14176), good.size() / 2, good.size() - 1}) {
      auto f = GgufFile::open(write_temp("trunc.gguf", good.substr(0, cut)));
      INFO("cut at " << cut);
      REQUIRE_FALSE(f.ok());
      CHECK(f.status().code() == StatusCode::kInvalidArgument);
    }
  }
  // A file with one [rows][cols] tensor written as f32, its ggml type then patched to `ggml_type`
  // and the last `cut` bytes of the file dropped.
  auto patched = [](const std::string& name, int ggml_type, int64_t cols, int64_t rows, size_t cut = 0) {
    GgufWriter w;
    w.set_string("general.architecture", "llama");
    const std::string data(size_t(cols * rows) * 4, '\0');
    REQUIRE(w.add_tensor("blk.0.attn_q.weight", DType::kF32, {cols, rows}, data).ok());
    const std::string path = test::temp_dir() + "/" + name;
    REQUIRE(w.write(path).ok());
    std::string bytes = test::read_file(path);
    const size_t name_at = bytes.find("blk.0.attn_q.weight");
    REQUIRE(name_at != std::string::npos);
    const size_t type_at = name_at + 19 + 4 + 2 * 8;  // name, n_dims, ne[0], ne[1]
    bytes[type_at] = char(ggml_type);
    return GgufFile::open(write_temp(name, bytes.substr(0, bytes.size() - cut)));
  };
  SECTION("unknown tensor type names the tensor") {
    auto f = patched("iq2.gguf", 16, 256, 1);  // ggml iq2_xxs: a real type kvbridge does not run
    REQUIRE_FALSE(f.ok());
    CHECK_THAT(f.status().message(), Catch::Contains("blk.0.attn_q.weight") && Catch::Contains("iq2_xxs"));
  }
  SECTION("quantized rows that are not whole blocks name the tensor") {
    auto f = patched("q4k_row.gguf", 12, 32, 4);  // q4_K: 256-element blocks, rows of 32
    REQUIRE_FALSE(f.ok());
    CHECK_THAT(f.status().message(), Catch::Contains("blk.0.attn_q.weight") && Catch::Contains("q4_k block size"));
  }
  SECTION("a quantized tensor that the file cannot hold") {
    // 64 rows of 256 q6_K elements are 64 * 210 = 13440 bytes; 1000 of the 65536 f32 bytes are left.
    auto f = patched("q6k_short.gguf", 14, 256, 64, 65536 - 1000);
    REQUIRE_FALSE(f.ok());
    CHECK_THAT(f.status().message(), Catch::Contains("blk.0.attn_q.weight"));
  }
  SECTION("quantized tensors are read with their block sizes") {
    auto f = patched("q4_1.gguf", 3, 64, 2);  // 2 rows x 2 blocks x 20 bytes
    REQUIRE(f.ok());
    const GgufTensor* t = (*f)->find_tensor("blk.0.attn_q.weight");
    REQUIRE(t != nullptr);
    CHECK(t->dtype == DType::kQ4_1);
    CHECK(t->nbytes == 80);
  }
  SECTION("tensor data out of bounds") {
    GgufWriter w;
    REQUIRE(w.add_tensor("t", DType::kF32, {8}, std::string(32, '\0')).ok());
    const std::string path = test::temp_dir() + "/oob.gguf";
    REQUIRE(w.write(path).ok());
    std::string bytes = test::read_file(path);
    const size_t name_at = bytes.find("t\x01\x00\x00\x00", 0, 5);
    REQUIRE(name_at != std::string::npos);
    const size_t offset_at = name_at + 1 + 4 + 8 + 4;
    const uint64_t far = 1 << 20;
    std::memcpy(bytes.data() + offset_at, &far, 8);
    auto f = GgufFile::open(write_temp("oob_patched.gguf", bytes));
    REQUIRE_FALSE(f.ok());
    CHECK_THAT(f.status().message(), Catch::Contains("outside the file"));
  }
  SECTION("huge counts are rejected before allocating") {
    std::string bad = good;
    const uint64_t huge = uint64_t(1) << 60;
    std::memcpy(bad.data() + 8, &huge, 8);  // tensor count
    auto f = GgufFile::open(write_temp("counts.gguf", bad));
    REQUIRE_FALSE(f.ok());
    CHECK_THAT(f.status().message(), Catch::Contains("implausible"));
  }
}
