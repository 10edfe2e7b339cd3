// Perplexity and KL-divergence runs (see perplexity_run.h).
#include "engine/perplexity_run.h"

#include <fmt/format.h>

#include <chrono>
#include <vector>

namespace kvb::ppl {

namespace {

using Clock = std::chrono::steady_clock;

// One window from an empty cache: logits[n_ctx][n_vocab] of every position.
class WindowEvaluator {
 public:
  static Result<WindowEvaluator> create(ModelRunner& runner, int32_t n_ctx) {
    KVB_ASSIGN_OR_RETURN(auto cache, runner.new_cache(n_ctx));
    return WindowEvaluator(runner, std::move(cache), n_ctx);
  }
  Status eval(std::span<const int32_t> window) {
    cache_->clear();
    return runner_.forward(*cache_, window, logits_, /*all_logits=*/true);
  }
  std::span<const float> row(int32_t pos) const {
    return std::span<const float>(logits_).subspan(size_t(pos) * n_vocab_, n_vocab_);
  }
  int32_t n_vocab() const { return int32_t(n_vocab_); }

 private:
  WindowEvaluator(ModelRunner& runner, std::unique_ptr<KvCache> cache, int32_t n_ctx)
      : runner_(runner),
        cache_(std::move(cache)),
        n_vocab_(size_t(runner.model().config.n_vocab)),
        logits_(size_t(n_ctx) * n_vocab_) {}

  ModelRunner& runner_;
  std::unique_ptr<KvCache> cache_;
  size_t n_vocab_;
  std::vector<float> logits_;
};

ChunkProgress progress(int32_t done, const WindowPlan& plan, Clock::time_point t0) {
  return {done, plan.n_chunk, int64_t(done) * plan.n_ctx, std::chrono::duration<double>(Clock::now() - t0).count()};
}

}  // namespace

Result<NllStats> run_perplexity(ModelRunner& runner, std::span<const int32_t> ids, const WindowPlan& plan,
                                const PplRunOptions& opt) {
  if (ids.size() < size_t(plan.n_chunk) * size_t(plan.n_ctx)) return invalid_argument("perplexity: fewer ids than the plan");
  KVB_ASSIGN_OR_RETURN(auto ev, WindowEvaluator::create(runner, plan.n_ctx));
  const auto t0 = Clock::now();
  NllStats stats;
  std::vector<uint16_t> rows;
  const size_t row_words = size_t(base_row_words(ev.n_vocab()));
  if (opt.save) rows.resize(size_t(plan.n_scored()) * row_words);
  for (int32_t c = 0; c < plan.n_chunk; ++c) {
    const std::vector<int32_t> window = window_ids(ids, plan, c, opt.bos);
    KVB_RETURN_IF_ERROR(ev.eval(window));
    // Row p predicts the original id p + 1 (the BOS substitution only touches id 0).
    const int32_t* next = ids.data() + size_t(c) * plan.n_ctx + 1;
    for (int32_t p = plan.first; p < plan.n_ctx - 1; ++p) {
      if (opt.save) {
        const size_t r = size_t(p - plan.first);
        stats.add(encode_base_row(ev.row(p), next[p], std::span<uint16_t>(rows).subspan(r * row_words, row_words)));
      } else {
        stats.add(token_nll(ev.row(p), next[p]));
      }
    }
    if (opt.save) KVB_RETURN_IF_ERROR(opt.save->append_chunk(rows));
    if (opt.on_chunk) opt.on_chunk(progress(c + 1, plan, t0), stats);
  }
  return stats;
}

Result<KldStats> run_kl_divergence(ModelRunner& runner, BaseReader& base, const KldRunOptions& opt) {
  const BaseHeader& h = base.header();
  const int32_t n_vocab = runner.model().config.n_vocab;
  if (h.n_vocab != n_vocab) {
    return failed_precondition(
        fmt::format("the base logits are over a vocabulary of {} ids, this model's has {}: not the same vocabulary",
                    h.n_vocab, n_vocab));
  }
  const WindowPlan plan{h.n_ctx, h.n_chunk, h.n_ctx / 2};
  KVB_ASSIGN_OR_RETURN(auto ev, WindowEvaluator::create(runner, plan.n_ctx));
  const auto t0 = Clock::now();
  const std::span<const int32_t> ids = base.ids();
  const size_t row_words = size_t(base_row_words(n_vocab));
  KldStats stats;
  stats.kld_values.reserve(size_t(plan.n_chunk) * size_t(plan.n_scored()));
  stats.p_diff_values.reserve(stats.kld_values.capacity());
  std::vector<uint16_t> rows;
  for (int32_t c = 0; c < plan.n_chunk; ++c) {
    KVB_RETURN_IF_ERROR(base.read_chunk(rows));
    KVB_RETURN_IF_ERROR(ev.eval(window_ids(ids, plan, c, opt.bos)));
    const int32_t* next = ids.data() + size_t(c) * plan.n_ctx + 1;
    for (int32_t p = plan.first; p < plan.n_ctx - 1; ++p) {
      const size_t r = size_t(p - plan.first);
      stats.add(ev.row(p), std::span<const uint16_t>(rows).subspan(r * row_words, row_words), next[p]);
    }
    if (opt.on_chunk) opt.on_chunk(progress(c + 1, plan, t0), stats);
  }
  return stats;
}

}  // namespace kvb::ppl
