// ModelRunner: the optimized forward pass of a Model on one Backend (CPU today, CUDA later).
//
// Batched: a prefill of N tokens runs every projection as one GEMM per ubatch (n_batch tokens),
// decode runs the same code with N = 1. Tested against forward_reference() on every backend.
// In the last layer only the rows whose logits are returned go past their K/V projections (the last
// token of a prompt, or none for an inner ubatch of a long one): the other rows' outputs feed
// nothing.
//
// Ownership: the runner borrows the Model and the Backend (both must outlive it) and owns the
// uploaded weights and its scratch buffers. Threading: one thread drives a runner at a time; the
// runner is reusable across any number of caches (sequences).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "engine/kv_cache.h"
#include "engine/model.h"
#include "kernels/backend.h"

namespace kvb {

struct RunnerOptions {
  int32_t n_batch = 512;  // tokens per ubatch; longer inputs are split
  bool profile = false;   // time ops by kind (synchronizes after each op; no graphs then)
  // Run each decode step (one token) as one op graph where the backend records them (CUDA graphs;
  // Backend::begin_graph). Results are bit-identical either way.
  bool graphs = true;
};

// How decode steps ran (RunnerOptions::graphs).
struct GraphStats {
  uint64_t graph_steps = 0;  // steps run as one recorded graph
  uint64_t fallbacks = 0;    // recordings that failed; the step ran op by op
  bool disabled = false;     // the backend has no graphs, or recordings kept failing
  std::string last_error;    // why the last recording failed
};

// Seconds spent per op kind since the last reset (only when RunnerOptions::profile).
struct OpProfile {
  double matmul_s = 0;
  double attention_s = 0;
  double other_s = 0;
  double total() const { return matmul_s + attention_s + other_s; }
};

// One sequence's part of a batched step (ModelRunner::forward_batch).
struct SeqStep {
  KvCache* cache = nullptr;          // this sequence's cache; each cache at most once per step
  std::span<const int32_t> tokens;   // appended to the cache
  float* logits = nullptr;           // host [n_vocab]: the last token's logits; null for none
  bool decode = false;               // one sampled token (decode kernels); else prompt rows
  // Cells before the cache's own, shared with other sequences and never written here (the prefix
  // blocks of runtime/prefix_cache.h): full, in order, from position 0 on; the cache continues
  // them (cache->pos0() == the prefix's tokens). Attention reads them in place.
  std::span<const std::shared_ptr<const KvCache>> prefix = {};
};

class ModelRunner {
 public:
  ~ModelRunner();
  // Uploads the weights. INVALID_ARGUMENT/UNIMPLEMENTED when the backend cannot hold them.
  static Result<std::unique_ptr<ModelRunner>> create(const Model& model, Backend& backend,
                                                     const RunnerOptions& opt = {});

  const Model& model() const { return model_; }
  Backend& backend() const { return backend_; }
  // The cache layout this runner reads and writes, for a cache element type (F32 or F16).
  KvLayout kv_layout(DType dtype = DType::kF32) const;

  // A new, empty cache in the backend's memory; n_ctx 0 means the model's training context.
  Result<std::unique_ptr<KvCache>> new_cache(int32_t n_ctx = 0, DType dtype = DType::kF32) const;

  // Appends `tokens` to `cache` and writes logits to host memory:
  //   all_logits == false: logits is [n_vocab], for the last token;
  //   all_logits == true:  logits is [tokens.size()][n_vocab].
  // INVALID_ARGUMENT for an out-of-vocab id, a wrong logits size or a cache of another layout;
  // RESOURCE_EXHAUSTED when the tokens do not fit. On any error the cache is left as it was.
  Status forward(KvCache& cache, std::span<const int32_t> tokens, std::span<float> logits, bool all_logits = false);

  // One forward over the tokens of several sequences together (continuous batching): the rows of
  // every sequence run through each projection as one matmul per weight (prompt rows and decode
  // rows as two, RowMode::kPrefill / kDecode), attention runs per sequence over its own cells.
  // On the CPU backend each sequence's cells and logits are bit for bit what the same step gives
  // it alone, whatever shares the batch (a sequence's outputs never depend on its neighbours).
  // INVALID_ARGUMENT for no sequences, an empty or decode-but-not-one-token sequence, a cache
  // twice, more than n_batch tokens in all, an out-of-vocab id, a cache or prefix block of another
  // layout, or a prefix whose positions the cache does not continue;
  // RESOURCE_EXHAUSTED when a sequence's tokens do not fit its cache. On error no cache changes.
  // A step of decode tokens only runs as one op graph where the backend records them.
  Status forward_batch(std::span<const SeqStep> seqs);
  int32_t n_batch() const { return opt_.n_batch; }

  const OpProfile& profile() const { return profile_; }
  void reset_profile() { profile_ = {}; }
  const GraphStats& graph_stats() const { return graphs_; }

 private:
  struct Impl;
  // Consecutive failed recordings after which graph_step stops trying.
  static constexpr int kMaxGraphFailuresInRow = 3;

  ModelRunner(const Model& model, Backend& backend, const RunnerOptions& opt);
  Status forward_ubatch(KvCache& cache, std::span<const int32_t> tokens, float* logits, bool all_logits);
  bool graph_step(KvCache& cache, const KvPlan& plan, int64_t n, int64_t logit_rows);
  struct BatchPlan;
  Status check_batch(std::span<const SeqStep> seqs, BatchPlan& bp) const;
  Status enqueue_batch(const BatchPlan& bp);
  // Runs `enqueue` as one recorded graph; false when it ran nothing (no graphs, or the recording
  // failed: the caller runs the ops directly).
  template <class F>
  bool run_as_graph(F&& enqueue);
  Status enqueue_ubatch(KvCache& cache, const KvPlan& plan, int64_t n, int64_t logit_rows);

  const Model& model_;
  Backend& backend_;
  RunnerOptions opt_;
  OpProfile profile_;
  GraphStats graphs_;
  int graph_failures_in_row_ = 0;  // recordings failed since the last one that ran
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvb
