// Metrics: the agent's Prometheus series — rpc::CallMetrics' call and byte series plus the
// generations, context pulls and the cache store:
//
//   kvbridge_time_to_first_token_seconds                histogram (Generate, pulls included)
//   kvbridge_time_per_output_token_seconds              histogram (Generate, after the first token)
//   kvbridge_context_pulls_total{requested,used}        counter (context caches pulled from agents)
//   kvbridge_cache_store_bytes, kvbridge_cache_store_entries      gauges
//   kvbridge_cache_hits_total, _misses_total, _evictions_total, _expirations_total  counters
//   kvbridge_engine_step_sequences, kvbridge_engine_step_tokens   histograms (per engine step)
//   kvbridge_engine_step_seconds                        histogram (the step's forward pass)
//   kvbridge_engine_decode_tokens_total, _prompt_tokens_total      counters
//   kvbridge_engine_active_sequences, _queued_requests, _parallel  gauges
//
// Threading: as rpc::CallMetrics — every record method is thread-safe; render may run concurrently.
#pragma once

#include <atomic>
#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "rpc/metrics.h"
#include "runtime/cache_store.h"
#include "runtime/engine_loop.h"

namespace kvb::agent {

class Metrics final : public rpc::CallMetrics {
 public:
  Metrics();

  void observe_time_to_first_token(double seconds) { ttft_.observe(seconds); }
  void observe_time_per_output_token(double seconds) { tpot_.observe(seconds); }
  // One context cache pulled from another agent: the request's transport choice and the one used
  // (transport/select.h names); requested != used (other than "auto") is a fallback.
  void record_pull(std::string_view requested, std::string_view used);
  // One engine step (EngineOptions::on_step).
  void record_step(const runtime::StepInfo& step);

  // The whole exposition text, with the cache store's and the engine's numbers taken from `store`
  // and `engine`.
  std::string render(const runtime::CacheStoreStats& store, const runtime::EngineLoad& engine) const;

 private:
  void render_pulls(std::string& out) const;
  void render_engine(std::string& out, const runtime::EngineLoad& engine) const;

  mutable std::mutex mu_;                                          // guards pulls_
  std::map<std::pair<std::string, std::string>, uint64_t> pulls_;  // (requested, used) → count
  rpc::Histogram ttft_;
  rpc::Histogram tpot_;
  rpc::Histogram step_seqs_, step_tokens_, step_seconds_;
  std::atomic<uint64_t> decode_tokens_{0}, prompt_tokens_{0};
};

}  // namespace kvb::agent
