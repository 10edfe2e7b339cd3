// Metrics shared by kvbridge's gRPC servers: Prometheus histograms, the per-call series every
// server records (CallMetrics), and the /metrics HTTP endpoint.
//
// The exposition text (format 0.0.4) is written here by hand: HELP and TYPE lines, histograms as
// cumulative `_bucket{le=...}` series ending in le="+Inf", then `_sum` and `_count`.
//
//   kvbridge_requests_total{method,code}                counter
//   kvbridge_request_duration_seconds{method}           histogram
//   kvbridge_transport_bytes_sent_total{transport}      counter (serialized messages)
//   kvbridge_transport_bytes_received_total{transport}  counter
//
// The agent adds its own series (agent/agent_metrics.h). Threading: every record method is
// thread-safe and cheap (atomics, or one short mutex for the labelled series); render may run
// concurrently with them.
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
#include "rpc/flags.h"

namespace httplib {
class Server;
}

namespace kvb::rpc {

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

// Appends a metric's "# HELP" and "# TYPE" lines.
void metric_header(std::string& out, std::string_view name, std::string_view type, std::string_view help);
// Appends an unlabelled counter or gauge: its header and its one sample line.
void metric_value(std::string& out, std::string_view name, std::string_view type, std::string_view help,
                  uint64_t value);

// The series of calls and their bytes, recorded by every kvbridge server.
class CallMetrics {
 public:
  CallMetrics() = default;
  virtual ~CallMetrics() = default;
  CallMetrics(const CallMetrics&) = delete;
  CallMetrics& operator=(const CallMetrics&) = delete;

  // One finished call of a service method, with its final code.
  void record_request(std::string_view method, StatusCode code, double seconds);
  void add_bytes_sent(uint64_t n) { bytes_sent_.fetch_add(n, std::memory_order_relaxed); }
  void add_bytes_received(uint64_t n) { bytes_received_.fetch_add(n, std::memory_order_relaxed); }

  // The call and byte series (kvbridge-fuser serves exactly these).
  std::string render() const;

 protected:
  void render_requests(std::string& out) const;
  void render_bytes(std::string& out) const;

 private:
  mutable std::mutex mu_;  // guards the maps (not the histograms inside, which are atomic)
  std::map<std::pair<std::string, std::string>, uint64_t> requests_;  // (method, code) → count
  std::map<std::string, std::unique_ptr<Histogram>> durations_;        // method → histogram
  std::atomic<uint64_t> bytes_sent_{0}, bytes_received_{0};
};

// The HTTP endpoint: GET /metrics serves what `render` returns. Owns its listener thread.
class MetricsEndpoint {
 public:
  // `render` is called on the listener thread, so it must be thread-safe and outlive stop().
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

}  // namespace kvb::rpc
