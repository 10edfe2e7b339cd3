// Internal to engine/: the SentencePiece-style tokenizer and helpers shared with the vocab
// loaders. Not installed.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "engine/tokenizer.h"
#include "kernels/status.h"

namespace kvb {

// Builds the SPM tokenizer. Precondition: vocab.model == kSpm and Tokenizer::create's generic
// checks (sizes, ids, scores, types) passed. INVALID_ARGUMENT for SPM-specific inconsistencies.
Result<std::unique_ptr<Tokenizer>> create_spm_tokenizer(Vocab vocab);

// "<0xAB>" (exactly six characters, hex digits in either case) → 0xAB; nullopt otherwise.
std::optional<uint8_t> parse_byte_piece(std::string_view piece);
// 0xAB → "<0xAB>" (upper-case hex, the spelling SentencePiece and llama.cpp use).
std::string byte_piece(uint8_t b);

// U+2581 "▁", SentencePiece's visible space.
inline constexpr std::string_view kSpmSpace = "\xE2\x96\x81";

}  // namespace kvb
