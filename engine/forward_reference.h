// The reference forward pass: plain scalar C++, one token at a time, top to bottom.
//
// It is the CPU baseline every optimized path (engine/forward.h on any backend) is tested against,
// and it is deliberately simple: no threads, no packing, weights dequantized row by row. One block
// serves every family (engine/model.h Arch): the qwen2 biases, the qwen3 Q/K norms and the llama3
// RoPE frequency table are named steps of it, skipped where the arch has none.
#pragma once

#include <span>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"

namespace kvb {

// Appends `tokens` to `cache` (host memory, f32, the model's layout) and returns the logits after
// each of them: [tokens.size()][n_vocab]. INVALID_ARGUMENT for a token id outside the vocab or a
// cache of another layout; RESOURCE_EXHAUSTED when the tokens do not fit. On error the cache is
// unchanged.
Result<std::vector<float>> forward_reference(const Model& model, KvCache& cache, std::span<const int32_t> tokens);

}  // namespace kvb
