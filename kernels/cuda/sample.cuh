// Token selection on the device: argmax and top-k over logits, so that a decode step copies a few
// ids (and the k candidates the sampler draws from) to the host instead of a whole vocabulary row.
//
// CUDA-only (the CPU sampler, engine/sampler.h, works on host rows directly). Host-includable: no
// CUDA types. `b` must be a backend created by a CUDA device (INVALID_ARGUMENT otherwise); tensors
// are its device memory (or pinned host memory). Both calls enqueue on b's stream and return at
// once: results are visible after b.synchronize(). Not thread-safe (the backend's rule).
//
// Ordering: a larger logit first, ties to the lower id — the candidate order of engine/sampler.cpp
// (and kvb::argmax's first-maximum rule). NaN logits are never selected.
#pragma once

#include <cstdint>

#include "kernels/backend.h"

namespace kvb::cuda {

// ids[r] = the id of the largest logit of row r. logits f32 [n_rows][n_vocab] (n_vocab >= 1),
// ids i32 [n_rows]. A row of NaNs gives id 0.
Status argmax(Backend& b, const Tensor& logits, const Tensor& ids);

inline constexpr int kMaxTopK = 256;

// The k largest logits of each row, in order: values f32 [n_rows][k], ids i32 [n_rows][k].
// 1 <= k <= min(kMaxTopK, n_vocab); n_vocab up to 16384² / k (UNIMPLEMENTED beyond). A row with
// fewer than k non-NaN logits is padded with (-inf, INT32_MAX).
Status top_k(Backend& b, const Tensor& logits, int k, const Tensor& values, const Tensor& ids);

}  // namespace kvb::cuda
