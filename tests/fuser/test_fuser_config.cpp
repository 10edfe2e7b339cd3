// config.json of a fuser directory: round trip, errors naming the bad key, and C2C's last_aligned map
// on the released pairs (notes §1a).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "fuser/fuser_config.h"

namespace kvb::fuser {
namespace {

FuserConfig qwen_pair() {
  FuserConfig c;
  c.sharer = {"Qwen/Qwen2.5-0.5B-Instruct", 24, 2, 64, 0x0123456789abcdefull};
  c.receiver = {"Qwen/Qwen3-0.6B", 28, 8, 128, 0};
  c.layer_map = last_aligned_map(24, 28);
  c.dtype = DType::kBF16;
  return c;
}

// Parses `cfg` after `edit` was applied to its JSON; expects INVALID_ARGUMENT mentioning `key`.
template <class Edit>
void expect_bad(Edit edit, const std::string& key) {
  nlohmann::json j = nlohmann::json::parse(fuser_config_to_json(qwen_pair()));
  edit(j);
  Result<FuserConfig> r = parse_fuser_config(j.dump());
  REQUIRE_FALSE(r.ok());
  INFO(r.status().to_string());
  CHECK(r.status().code() == StatusCode::kInvalidArgument);
  CHECK(r.status().message().find("\"" + key + "\"") != std::string::npos);
}

}  // namespace

TEST_CASE("fuser config: JSON round trip", "[fuser]") {
  FuserConfig c = qwen_pair();
  c.align_enabled = true;
  c.align_strategy = AlignStrategy::kLongest;
  c.num_layers = 4;
  const std::string text = fuser_config_to_json(c);
  CHECK(text.find("\"fingerprint\": \"0x0123456789abcdef\"") != std::string::npos);
  Result<FuserConfig> back = parse_fuser_config(text);
  REQUIRE(back.ok());
  CHECK(back.value() == c);

  // Optional keys take their defaults; layer_map is computed for last_aligned.
  const std::string minimal = R"({"format":"kvbridge-fuser","version":1,
    "sharer":{"n_layer":36,"n_head_kv":8,"head_dim":128},
    "receiver":{"n_layer":28,"n_head_kv":8,"head_dim":128},
    "projector":{"type":"C2CProjector","hidden_dim":1024,"intermediate_dim":1024,"num_layers":3}})";
  Result<FuserConfig> m = parse_fuser_config(minimal);
  REQUIRE(m.ok());
  CHECK(m->mapping == "last_aligned");
  CHECK(m->layer_map == last_aligned_map(36, 28));
  CHECK(m->dtype == DType::kF32);
  CHECK(m->weights_file == "model.safetensors");
  CHECK_FALSE(m->align_enabled);
  CHECK(m->sharer.fingerprint == 0);
  CHECK(m->receiver.kv_dim() == 1024);
}

TEST_CASE("fuser config: errors name the bad key", "[fuser]") {
  using J = nlohmann::json;
  CHECK(parse_fuser_config("{not json").status().code() == StatusCode::kInvalidArgument);
  CHECK(parse_fuser_config("[]").status().code() == StatusCode::kInvalidArgument);
  expect_bad([](J& j) { j.erase("format"); }, "format");
  expect_bad([](J& j) { j["format"] = "gguf"; }, "format");
  expect_bad([](J& j) { j["version"] = 2; }, "version");
  expect_bad([](J& j) { j.erase("sharer"); }, "sharer");
  expect_bad([](J& j) { j["sharer"]["n_layer"] = -1; }, "sharer.n_layer");
  expect_bad([](J& j) { j["receiver"]["head_dim"] = "128"; }, "receiver.head_dim");
  expect_bad([](J& j) { j["receiver"].erase("n_head_kv"); }, "receiver.n_head_kv");
  expect_bad([](J& j) { j["sharer"]["fingerprint"] = "0x123"; }, "sharer.fingerprint");
  expect_bad([](J& j) { j["sharer"]["fingerprint"] = "0xzz23456789abcdef"; }, "sharer.fingerprint");
  expect_bad([](J& j) { j["projector"]["type"] = "AllInOneProjector"; }, "projector.type");
  expect_bad([](J& j) { j["projector"]["num_layers"] = 1; }, "projector.num_layers");
  expect_bad([](J& j) { j["projector"]["hidden_dim"] = 0; }, "projector.hidden_dim");
  expect_bad([](J& j) { j["projector"].erase("intermediate_dim"); }, "projector.intermediate_dim");
  expect_bad([](J& j) { j["mapping"] = "k_nearest"; }, "mapping");
  expect_bad(
      [](J& j) {
        j["mapping"] = "explicit";
        j.erase("layer_map");
      },
      "layer_map");
  expect_bad([](J& j) { j["layer_map"].erase(0); }, "layer_map");  // 27 entries
  expect_bad(
      [](J& j) {
        j["mapping"] = "explicit";
        j["layer_map"][3] = 24;
      },
      "layer_map");                                              // out of range
  expect_bad([](J& j) { j["layer_map"][3] = 7; }, "layer_map");  // not last_aligned
  expect_bad([](J& j) { j["layer_map"][3] = "x"; }, "layer_map");
  expect_bad([](J& j) { j["alignment"]["strategy"] = "middle"; }, "alignment.strategy");
  expect_bad([](J& j) { j["alignment"]["enabled"] = 1; }, "alignment.enabled");
  expect_bad([](J& j) { j["weights"] = "../model.safetensors"; }, "weights");
  expect_bad([](J& j) { j["dtype"] = "q8_0"; }, "dtype");

  // An explicit map may be anything in range.
  nlohmann::json j = nlohmann::json::parse(fuser_config_to_json(qwen_pair()));
  j["mapping"] = "explicit";
  j["layer_map"][3] = 7;
  Result<FuserConfig> r = parse_fuser_config(j.dump());
  REQUIRE(r.ok());
  CHECK(r->layer_map[3] == 7);
}

TEST_CASE("fuser config: load_fuser_config reports a missing file", "[fuser]") {
  CHECK(load_fuser_config("/nonexistent/fuser").status().code() == StatusCode::kNotFound);
}

TEST_CASE("fuser last_aligned_map on the released C2C pairs", "[fuser]") {
  // Qwen3-0.6B <- Qwen2.5-0.5B: offset -4, targets 0-4 <- 0, then t <- t-4, t27 <- 23.
  std::vector<int32_t> m = last_aligned_map(24, 28);
  REQUIRE(m.size() == 28);
  for (int t = 0; t <= 4; ++t) CHECK(m[size_t(t)] == 0);
  for (int t = 5; t < 28; ++t) CHECK(m[size_t(t)] == t - 4);
  CHECK(m[27] == 23);
  // Qwen3-0.6B <- Qwen3-4B: offset +8, sharer layers 0-7 unused.
  m = last_aligned_map(36, 28);
  for (int t = 0; t < 28; ++t) CHECK(m[size_t(t)] == t + 8);
  // Qwen3-0.6B <- Llama-3.2-1B: offset -12, targets 0-12 <- 0, t27 <- 15.
  m = last_aligned_map(16, 28);
  for (int t = 0; t <= 12; ++t) CHECK(m[size_t(t)] == 0);
  CHECK(m[13] == 1);
  CHECK(m[27] == 15);
  // Identity (0.6B <- Math-1.5B, 1.7B <- Qwen2.5-1.5B) and Qwen3-8B <- Qwen2.5-7B (offset -8).
  m = last_aligned_map(28, 28);
  for (int t = 0; t < 28; ++t) CHECK(m[size_t(t)] == t);
  m = last_aligned_map(28, 36);
  for (int t = 0; t <= 8; ++t) CHECK(m[size_t(t)] == 0);
  CHECK(m[35] == 27);
  CHECK(last_aligned_map(0, 28).empty());
  CHECK(last_aligned_map(28, 0).empty());
}

}  // namespace kvb::fuser
