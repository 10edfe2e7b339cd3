// Perplexity and KL-divergence runs of a ModelRunner over a tokenized text, the way llama.cpp's
// llama-perplexity runs them (windows and scoring: engine/perplexity.h; the base file:
// engine/perplexity_base.h). Each window is one batched forward of n_ctx ids from an empty cache,
// with the logits of every position (ModelRunner::forward all_logits).
//
// Threading: runs on the caller's thread, which owns the runner for the duration.
#pragma once

#include <cstdint>
#include <functional>
#include <span>

#include "engine/forward.h"
#include "engine/perplexity.h"
#include "engine/perplexity_base.h"

namespace kvb::ppl {

struct ChunkProgress {
  int32_t done = 0, total = 0;  // windows
  int64_t tokens = 0;           // ids evaluated so far (done · n_ctx)
  double elapsed_s = 0;         // since the run started
};

struct PplRunOptions {
  int32_t bos = -1;  // replaces each window's first id when >= 0 (the vocab adds a BOS)
  // Called after each window with the running NLL sums.
  std::function<void(const ChunkProgress&, const NllStats&)> on_chunk;
  // When set, each window's base rows are appended to it (the caller creates and finishes it).
  BaseWriter* save = nullptr;
};

// Evaluates plan.n_chunk windows of `ids` (ids.size() >= n_chunk · n_ctx). INVALID_ARGUMENT for
// an id outside the vocab; RESOURCE_EXHAUSTED when n_ctx cells cannot be allocated; errors of the
// forward pass or of the writer as they are.
Result<NllStats> run_perplexity(ModelRunner& runner, std::span<const int32_t> ids, const WindowPlan& plan,
                                const PplRunOptions& opt);

struct KldRunOptions {
  int32_t bos = -1;  // as PplRunOptions::bos
  std::function<void(const ChunkProgress&, const KldStats&)> on_chunk;
};

// Evaluates the base file's windows (its ids) and compares each scored position with its stored
// base row. FAILED_PRECONDITION when the base's n_vocab differs from the model's; other errors as
// run_perplexity. (Tokenizer checks are the caller's: it knows the text and the trailer.)
Result<KldStats> run_kl_divergence(ModelRunner& runner, BaseReader& base, const KldRunOptions& opt);

}  // namespace kvb::ppl
