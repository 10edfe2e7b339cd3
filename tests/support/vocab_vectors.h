// llama.cpp's tokenizer test vectors (tokenizer-tests/ggml-vocab-*.gguf.inp / .out in the models
// folder) as the tokenizer tests read them, and a printable form of test strings. Header-only.
//
// Format: the .inp holds the test strings, each followed by "\n__ggml_vocab_test__\n"; the .out
// holds one line per string with its ids, each written with a leading space (llama.cpp's
// test-tokenizer-0: no BOS, special tokens not parsed, SPM with the dummy prefix).
#pragma once

#include <catch2/catch.hpp>

#include <cstdint>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include "support/test_support.h"

namespace kvb::test {

struct VocabVector {
  std::string text;
  std::vector<int32_t> ids;
};

// The vectors of tokenizer-tests/<name>.inp/.out, e.g. name = "ggml-vocab-gpt-2.gguf". Fails the
// current test when the files are unreadable or their counts differ.
inline std::vector<VocabVector> load_vocab_vectors(const std::string& name) {
  const std::string dir = model_path("tokenizer-tests/");
  const std::string inp = read_file(dir + name + ".inp");
  const std::string out = read_file(dir + name + ".out");
  const std::string kSep = "\n__ggml_vocab_test__\n";
  std::vector<VocabVector> cases;
  size_t pos = 0;
  for (size_t hit; (hit = inp.find(kSep, pos)) != std::string::npos; pos = hit + kSep.size()) {
    cases.push_back({inp.substr(pos, hit - pos), {}});
  }
  REQUIRE(pos == inp.size());  // every input is followed by the separator
  std::istringstream lines(out);
  size_t i = 0;
  for (std::string line; std::getline(lines, line); ++i) {
    REQUIRE(i < cases.size());
    std::istringstream ids(line);
    for (int32_t id; ids >> id;) cases[i].ids.push_back(id);
  }
  REQUIRE(i == cases.size());
  return cases;
}

// `s` with newlines, tabs and other control bytes made visible ("\n", "\t", "\xNN"), for test
// names and INFO lines.
inline std::string printable(std::string_view s) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7F) out += {'\\', 'x', kHex[c >> 4], kHex[c & 15]};
    else out += char(c);
  }
  return out;
}

}  // namespace kvb::test
