#include "agent/agent_metrics.h"

#include <fmt/format.h>

#include <vector>

namespace kvb::agent {

namespace {

using rpc::metric_header;

const std::vector<double> kTtftBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                          0.25,  0.5,    1,     2.5,  5,     10,   30};
const std::vector<double> kTpotBuckets = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                          0.01,   0.025,   0.05,   0.1,   0.25,   0.5, 1};

const std::vector<double> kStepSeqBuckets = {1, 2, 4, 8, 16, 32, 64, 128};
const std::vector<double> kStepTokenBuckets = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048};

}  // namespace

Metrics::Metrics()
    : ttft_(kTtftBuckets),
      tpot_(kTpotBuckets),
      step_seqs_(kStepSeqBuckets),
      step_tokens_(kStepTokenBuckets),
      step_seconds_(kTtftBuckets) {}

void Metrics::record_step(const runtime::StepInfo& step) {
  step_seqs_.observe(step.n_seqs);
  step_tokens_.observe(step.n_tokens);
  step_seconds_.observe(step.seconds);
  decode_tokens_.fetch_add(uint64_t(step.n_decode), std::memory_order_relaxed);
  prompt_tokens_.fetch_add(uint64_t(step.n_tokens - step.n_decode), std::memory_order_relaxed);
}

void Metrics::render_engine(std::string& out, const runtime::EngineLoad& engine) const {
  rpc::metric_header(out, "kvbridge_engine_step_sequences", "histogram",
                     "Sequences batched in one engine step (decoding and prefilling).");
  step_seqs_.render(out, "kvbridge_engine_step_sequences", "");
  rpc::metric_header(out, "kvbridge_engine_step_tokens", "histogram",
                     "Tokens in one engine step: decode tokens plus prompt chunks.");
  step_tokens_.render(out, "kvbridge_engine_step_tokens", "");
  rpc::metric_header(out, "kvbridge_engine_step_seconds", "histogram", "The forward pass of one engine step.");
  step_seconds_.render(out, "kvbridge_engine_step_seconds", "");
  rpc::metric_value(out, "kvbridge_engine_decode_tokens_total", "counter", "Sampled tokens fed back (decode rows).",
                    decode_tokens_.load(std::memory_order_relaxed));
  rpc::metric_value(out, "kvbridge_engine_prompt_tokens_total", "counter", "Input tokens prefilled (prompt rows).",
                    prompt_tokens_.load(std::memory_order_relaxed));
  rpc::metric_value(out, "kvbridge_engine_active_sequences", "gauge", "Sequences holding a slot.",
                    uint64_t(engine.active));
  rpc::metric_value(out, "kvbridge_engine_queued_requests", "gauge", "Requests waiting for a slot.",
                    uint64_t(engine.queued));
  rpc::metric_value(out, "kvbridge_engine_parallel", "gauge", "Slots: sequences computed at once (--parallel).",
                    uint64_t(engine.parallel));
  const runtime::PrefixCacheStats& p = engine.prefix;
  rpc::metric_value(out, "kvbridge_prefix_cache_query_tokens_total", "counter",
                    "Input tokens looked up in the prefix cache.", p.query_tokens);
  rpc::metric_value(out, "kvbridge_prefix_cache_hit_tokens_total", "counter",
                    "Input tokens found in the prefix cache (not prefilled).", p.hit_tokens);
  rpc::metric_value(out, "kvbridge_prefix_cache_evictions_total", "counter",
                    "Prefix-cache blocks evicted to make room (least recently used, never in use).", p.evictions);
  rpc::metric_value(out, "kvbridge_kv_blocks_used", "gauge", "Prefix-cache KV blocks held.", p.blocks_used);
  rpc::metric_value(out, "kvbridge_kv_blocks_free", "gauge", "Prefix-cache KV blocks the budget still has room for.",
                    p.blocks_total > p.blocks_used ? p.blocks_total - p.blocks_used : 0);
  rpc::metric_value(out, "kvbridge_kv_blocks_in_use", "gauge",
                    "Prefix-cache KV blocks a running sequence attends to (never evicted).", p.blocks_in_use);
}

void Metrics::record_pull(std::string_view requested, std::string_view used) {
  std::lock_guard<std::mutex> lock(mu_);
  ++pulls_[{std::string(requested), std::string(used)}];
}

void Metrics::render_pulls(std::string& out) const {
  std::lock_guard<std::mutex> lock(mu_);
  rpc::metric_header(out, "kvbridge_context_pulls_total", "counter",
                     "Context caches pulled from other agents, by the transport asked for and the one used.");
  for (const auto& [key, n] : pulls_) {
    out += fmt::format("kvbridge_context_pulls_total{{requested=\"{}\",used=\"{}\"}} {}\n",
                       rpc::escape_label_value(key.first), rpc::escape_label_value(key.second), n);
  }
}

std::string Metrics::render(const runtime::CacheStoreStats& store, const runtime::EngineLoad& engine) const {
  std::string out;
  out.reserve(8192);
  render_requests(out);
  rpc::metric_header(out, "kvbridge_time_to_first_token_seconds", "histogram",
                     "Generate: from request arrival (context pulls included) to the first sampled token.");
  ttft_.render(out, "kvbridge_time_to_first_token_seconds", "");
  rpc::metric_header(out, "kvbridge_time_per_output_token_seconds", "histogram",
                     "Generate: mean time per output token after the first.");
  tpot_.render(out, "kvbridge_time_per_output_token_seconds", "");
  render_bytes(out);
  render_pulls(out);
  rpc::metric_value(out, "kvbridge_cache_store_bytes", "gauge", "Bytes held by the cache store.", store.bytes_used);
  rpc::metric_value(out, "kvbridge_cache_store_budget_bytes", "gauge", "The cache store's byte budget.",
                    store.bytes_budget);
  rpc::metric_value(out, "kvbridge_cache_store_entries", "gauge", "Caches held by the cache store.", store.n_caches);
  rpc::metric_value(out, "kvbridge_cache_hits_total", "counter", "Cache store lookups that found the cache.",
                    store.hits);
  rpc::metric_value(out, "kvbridge_cache_misses_total", "counter", "Cache store lookups of unknown ids.", store.misses);
  rpc::metric_value(out, "kvbridge_cache_evictions_total", "counter", "Caches evicted for space (LRU, unpinned only).",
                    store.evictions);
  rpc::metric_value(out, "kvbridge_cache_expirations_total", "counter", "Caches removed after their idle TTL.",
                    store.expirations);
  render_engine(out, engine);
  return out;
}

}  // namespace kvb::agent
