// Tokenizer::create (generic vocab checks, then dispatch on Vocab::model) and Tokenizer::decode.
#include "engine/tokenizer.h"

#include <cmath>
#include <fmt/format.h>

#include "engine/tokenizer_bpe.h"
#include "engine/tokenizer_spm.h"

namespace kvb {

namespace {

Status check_vocab(const Vocab& v) {
  const size_t n = v.pieces.size();
  if (n == 0) return invalid_argument("vocab has no tokens");
  if (n > size_t(INT32_MAX)) return invalid_argument(fmt::format("vocab has {} tokens (too many)", n));
  if (v.scores.size() != n || v.types.size() != n) {
    return invalid_argument(fmt::format("vocab has {} pieces but {} scores and {} types", n,
                                        v.scores.size(), v.types.size()));
  }
  for (size_t i = 0; i < n; ++i) {
    if (std::isnan(v.scores[i])) return invalid_argument(fmt::format("token {} has a NaN score", i));
    const auto t = int32_t(v.types[i]);
    if (t < int32_t(TokenType::kUndefined) || t > int32_t(TokenType::kByte)) {
      return invalid_argument(fmt::format("token {} has token type {} (valid: 0..6)", i, t));
    }
  }
  const std::pair<const char*, int32_t> ids[] = {
      {"bos", v.bos}, {"eos", v.eos}, {"unk", v.unk}, {"pad", v.pad}};
  for (const auto& [name, id] : ids) {
    if (id < -1 || id >= v.n_vocab()) {
      return invalid_argument(fmt::format("{} token id {} is outside [-1, {})", name, id, v.n_vocab()));
    }
  }
  return ok_status();
}

}  // namespace

Result<std::unique_ptr<Tokenizer>> Tokenizer::create(Vocab vocab) {
  KVB_RETURN_IF_ERROR(check_vocab(vocab).with_context("tokenizer"));
  switch (vocab.model) {
    case Vocab::Model::kSpm:
      return create_spm_tokenizer(std::move(vocab));
    case Vocab::Model::kBpe:
      return create_bpe_tokenizer(std::move(vocab));
  }
  return invalid_argument("tokenizer: unknown vocab model");
}

std::string Tokenizer::decode(std::span<const int32_t> ids) const {
  std::string out;
  int32_t prev = -1;
  for (int32_t id : ids) {
    out += decode_token(id, prev);
    prev = id;
  }
  return out;
}

}  // namespace kvb
