// Catch2 helpers shared by the engine and fuser tests: comparing values and model configs, making
// tokenizers and looking up tokens.
// Header-only; include after <catch2/catch.hpp>.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <span>
#include <string_view>

#include "engine/model.h"
#include "engine/tokenizer.h"

namespace kvb::test {

// max_i |a[i] - b[i]|; fails the test if the sizes differ.
inline float max_abs_diff(std::span<const float> a, std::span<const float> b) {
  REQUIRE(a.size() == b.size());
  float d = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

enum class RopePairing { kCompare, kIgnore };

// Every hyper-parameter equal. kIgnore skips RoPE pairing, which follows each file's Q/K row
// order (a Hugging Face llama and its GGUF are the same model with different pairings).
inline void check_same_config(const ModelConfig& a, const ModelConfig& b,
                              RopePairing pairing = RopePairing::kCompare) {
  CHECK(a.arch == b.arch);
  CHECK(a.n_layer == b.n_layer);
  CHECK(a.n_embd == b.n_embd);
  CHECK(a.n_head == b.n_head);
  CHECK(a.n_head_kv == b.n_head_kv);
  CHECK(a.head_dim == b.head_dim);
  CHECK(a.n_ff == b.n_ff);
  CHECK(a.n_vocab == b.n_vocab);
  CHECK(a.n_ctx_train == b.n_ctx_train);
  CHECK(a.norm_eps == b.norm_eps);
  if (pairing == RopePairing::kCompare) CHECK(a.rope.type == b.rope.type);
  CHECK(a.rope.n_rot == b.rope.n_rot);
  CHECK(a.rope.theta_base == b.rope.theta_base);
  CHECK(a.rope.freq_scale == b.rope.freq_scale);
  CHECK(a.rope_freq_factors == b.rope_freq_factors);
  CHECK(a.tied_output == b.tied_output);
}

// A tokenizer over a loaded vocab; fails the test (with the message) if either step fails.
inline std::unique_ptr<Tokenizer> make_tokenizer(Result<Vocab> v) {
  INFO(v.status().to_string());
  REQUIRE(v.ok());
  auto t = Tokenizer::create(std::move(v).value());
  INFO(t.status().to_string());
  REQUIRE(t.ok());
  return std::move(t).value();
}

// The id of a vocab piece (spelled as stored: "▁Once", "Ġthe", "<0x0A>"); fails the test if absent.
inline int32_t id_of(const Tokenizer& t, std::string_view piece) {
  const auto& p = t.vocab().pieces;
  const auto it = std::find(p.begin(), p.end(), piece);
  REQUIRE(it != p.end());
  return int32_t(it - p.begin());
}

}  // namespace kvb::test
