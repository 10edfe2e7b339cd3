// The llama2.c reference vectors in ../shared/reference (prompt ids, greedy ids, logits from
// position 0), as the engine tests read them. Header-only; the including test links nlohmann_json.
#pragma once

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "support/test_support.h"

namespace kvb::test {

struct RefCase {
  std::string prompt;
  std::vector<int32_t> prompt_ids, greedy_ids;
  std::vector<std::vector<float>> logits;  // [len(prompt_ids) + 4][vocab]
};

// The cases of reference_dir()/file (e.g. "stories260K.llama2c-reference.json"); at least one.
inline std::vector<RefCase> load_reference(const std::string& file) {
  const auto j = nlohmann::json::parse(read_file(reference_dir() + "/" + file));
  std::vector<RefCase> cases;
  for (const auto& c : j.at("cases")) {
    RefCase r;
    r.prompt = c.at("prompt").get<std::string>();
    r.prompt_ids = c.at("prompt_ids").get<std::vector<int32_t>>();
    r.greedy_ids = c.at("greedy_ids").get<std::vector<int32_t>>();
    r.logits = c.at("logits_from_pos0").get<std::vector<std::vector<float>>>();
    cases.push_back(std::move(r));
  }
  REQUIRE(!cases.empty());
  return cases;
}

}  // namespace kvb::test
