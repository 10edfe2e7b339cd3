// Metrics: Prometheus counters, gauges and histograms of one agent, and the /metrics endpoint.
//
// The exposition text (format 0.0.4) is written here by hand: HELP and TYPE lines, histograms as
// cumulative `_bucket{le=...}` series ending in le="+Inf", then `_sum` and `_count`.
//
//   kvbridge_requests_total{method,code}                counter
//   kvbridge_request_duration_seconds{method}           histogram
//   kvbridge_time_to_first_token_seconds                histogram (Generate, pulls included)
//   kvbridge_time_per_output_token_seconds              histogram (Generate, after the first token)
//   kvbridge_transport_bytes_sent_total{transport}      counter (serialized AgentService messages)
//   kvbridge_transport_bytes_received_total{transport}  counter
//   kvbridge_context_pulls_total{requested,used}        counter (context caches pulled from agents)
//   kvbridge_cache_store_bytes, kvbridge_cache_store_entries      gauges
//   kvbridge_cache_hits_total, _misses_total, _evictions_total, _expirations_total  counters
//
// Threading: every record method is thread-safe and cheap (atomics, or one short mutex for the
// labelled series); render() may run concurrently with them.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "kernels/status.h"
#include "server/agent_config.h"
#include "server/cache_store.h"

namespace httplib {
class Server;
}

namespace kvb::server {

// A fixed-bucket histogram. observe() is lock-free.
class Histogram {
 public:
  explicit Histogram(std::vector<double> upper_bounds);
  void observe(double v);
  // Appends the `name_bucket`, `name_sum`, `name_count` lines; `labels` is either empty or a
  // ready label list such as `method="Generate"` (no braces).
  void render(std::string& out, std::string_view name, std::string_view labels) const;

 private:
  std::vector<double> bounds_;                             // ascending, +Inf implied
  std::unique_ptr<std::atomic<uint64_t>[]> counts_;        // [bounds_.size() + 1], per bucket
  std::atomic<uint64_t> count_{0};
  std::atomic<double> sum_{0.0};
};

// Escapes a label value: backslash, double quote and newline.
std::string escape_label_value(std::string_view v);

class Metrics {
 public:
  Metrics();

  // One finished call of an AgentService method, with its final code.
  void record_request(std::string_view method, StatusCode code, double seconds);
  void observe_time_to_first_token(double seconds) { ttft_.observe(seconds); }
  void observe_time_per_output_token(double seconds) { tpot_.observe(seconds); }
  void add_bytes_sent(uint64_t n) { bytes_sent_.fetch_add(n, std::memory_order_relaxed); }
  void add_bytes_received(uint64_t n) { bytes_received_.fetch_add(n, std::memory_order_relaxed); }
  // One context cache pulled from another agent: the request's transport choice and the one used
  // (transport/select.h names); requested != used (other than "auto") is a fallback.
  void record_pull(std::string_view requested, std::string_view used);

  // The whole exposition text, with the cache store's numbers taken from `store`.
  std::string render(const CacheStoreStats& store) const;
  // Only the call and transport series (requests, durations, bytes): for a server without a cache
  // store or generations (kvbridge-fuser).
  std::string render() const;

 private:
  void render_requests(std::string& out) const;
  void render_transport(std::string& out) const;

  mutable std::mutex mu_;  // guards the maps (not the histograms inside, which are atomic)
  std::map<std::pair<std::string, std::string>, uint64_t> requests_;  // (method, code) → count
  std::map<std::pair<std::string, std::string>, uint64_t> pulls_;     // (requested, used) → count
  std::map<std::string, std::unique_ptr<Histogram>> durations_;        // method → histogram
  Histogram ttft_;
  Histogram tpot_;
  std::atomic<uint64_t> bytes_sent_{0}, bytes_received_{0};
};

// The HTTP endpoint: GET /metrics renders Metrics + the store's stats. Owns its listener thread.
class MetricsEndpoint {
 public:
  MetricsEndpoint(const Metrics& metrics, CacheStore& store);
  // Serves what `render` returns (called on the listener thread, so it must be thread-safe and
  // outlive the endpoint's stop()).
  explicit MetricsEndpoint(std::function<std::string()> render);
  ~MetricsEndpoint();  // stops and joins
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // Binds (port 0 = any free port) and starts serving on a thread. UNAVAILABLE when the address
  // cannot be bound.
  Status start(const HostPort& addr);
  int port() const { return port_; }
  void stop();

 private:
  std::function<std::string()> render_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace kvb::server
