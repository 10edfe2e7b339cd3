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

}  // namespace

Metrics::Metrics() : ttft_(kTtftBuckets), tpot_(kTpotBuckets) {}

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

std::string Metrics::render(const runtime::CacheStoreStats& store) const {
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
  rpc::metric_header(out, "kvbridge_cache_store_bytes", "gauge", "Bytes held by the cache store.");
  out += fmt::format("kvbridge_cache_store_bytes {}\n", store.bytes_used);
  rpc::metric_header(out, "kvbridge_cache_store_budget_bytes", "gauge", "The cache store's byte budget.");
  out += fmt::format("kvbridge_cache_store_budget_bytes {}\n", store.bytes_budget);
  rpc::metric_header(out, "kvbridge_cache_store_entries", "gauge", "Caches held by the cache store.");
  out += fmt::format("kvbridge_cache_store_entries {}\n", store.n_caches);
  rpc::metric_header(out, "kvbridge_cache_hits_total", "counter", "Cache store lookups that found the cache.");
  out += fmt::format("kvbridge_cache_hits_total {}\n", store.hits);
  rpc::metric_header(out, "kvbridge_cache_misses_total", "counter", "Cache store lookups of unknown ids.");
  out += fmt::format("kvbridge_cache_misses_total {}\n", store.misses);
  rpc::metric_header(out, "kvbridge_cache_evictions_total", "counter",
                     "Caches evicted for space (LRU, unpinned only).");
  out += fmt::format("kvbridge_cache_evictions_total {}\n", store.evictions);
  rpc::metric_header(out, "kvbridge_cache_expirations_total", "counter", "Caches removed after their idle TTL.");
  out += fmt::format("kvbridge_cache_expirations_total {}\n", store.expirations);
  return out;
}

}  // namespace kvb::agent
