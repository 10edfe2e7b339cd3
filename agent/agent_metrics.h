// Metrics: the agent's Prometheus series — rpc::CallMetrics' call and byte series plus the
// generations, context pulls and the cache store:
//
//   kvbridge_time_to_first_token_seconds                histogram (Generate, pulls included)
//   kvbridge_time_per_output_token_seconds              histogram (Generate, after the first token)
//   kvbridge_context_pulls_total{requested,used}        counter (context caches pulled from agents)
//   kvbridge_cache_store_bytes, kvbridge_cache_store_entries      gauges
//   kvbridge_cache_hits_total, _misses_total, _evictions_total, _expirations_total  counters
//
// Threading: as rpc::CallMetrics — every record method is thread-safe; render may run concurrently.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <string_view>

#include "rpc/metrics.h"
#include "runtime/cache_store.h"

namespace kvb::agent {

class Metrics final : public rpc::CallMetrics {
 public:
  Metrics();

  void observe_time_to_first_token(double seconds) { ttft_.observe(seconds); }
  void observe_time_per_output_token(double seconds) { tpot_.observe(seconds); }
  // One context cache pulled from another agent: the request's transport choice and the one used
  // (transport/select.h names); requested != used (other than "auto") is a fallback.
  void record_pull(std::string_view requested, std::string_view used);

  // The whole exposition text, with the cache store's numbers taken from `store`.
  std::string render(const runtime::CacheStoreStats& store) const;

 private:
  void render_pulls(std::string& out) const;

  mutable std::mutex mu_;                                          // guards pulls_
  std::map<std::pair<std::string, std::string>, uint64_t> pulls_;  // (requested, used) → count
  rpc::Histogram ttft_;
  rpc::Histogram tpot_;
};

}  // namespace kvb::agent
