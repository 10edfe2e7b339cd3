#include "rpc/metrics.h"

#include <fmt/format.h>
#include <httplib.h>

#include <chrono>

namespace kvb::rpc {

namespace {

const std::vector<double> kLatencyBuckets = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                             0.25,  0.5,    1,     2.5,  5,     10,   30, 60};

}  // namespace

void metric_header(std::string& out, std::string_view name, std::string_view type, std::string_view help) {
  out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
}

void metric_value(std::string& out, std::string_view name, std::string_view type, std::string_view help,
                  uint64_t value) {
  metric_header(out, name, type, help);
  out += fmt::format("{} {}\n", name, value);
}

std::string escape_label_value(std::string_view v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

// ---- Histogram ----

Histogram::Histogram(std::vector<double> upper_bounds)
    : bounds_(std::move(upper_bounds)), counts_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) counts_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double v) {
  size_t i = 0;
  while (i < bounds_.size() && v > bounds_[i]) ++i;
  counts_[i].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(v, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
}

void Histogram::render(std::string& out, std::string_view name, std::string_view labels) const {
  const std::string sep = labels.empty() ? "" : ",";
  // Read the buckets first and derive the count from them, so that _count equals the +Inf bucket
  // even while observations race with rendering.
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += counts_[i].load(std::memory_order_relaxed);
    const std::string le = i < bounds_.size() ? fmt::format("{}", bounds_[i]) : "+Inf";
    out += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, le, cumulative);
  }
  const std::string braces = labels.empty() ? "" : fmt::format("{{{}}}", labels);
  out += fmt::format("{}_sum{} {}\n", name, braces, sum_.load(std::memory_order_relaxed));
  out += fmt::format("{}_count{} {}\n", name, braces, cumulative);
}

// ---- CallMetrics ----

void CallMetrics::record_request(std::string_view method, StatusCode code, double seconds) {
  Histogram* h = nullptr;
  {
    std::lock_guard<std::mutex> lock(mu_);
    ++requests_[{std::string(method), std::string(status_code_name(code))}];
    auto& slot = durations_[std::string(method)];
    if (!slot) slot = std::make_unique<Histogram>(kLatencyBuckets);
    h = slot.get();  // histograms are never removed, so the pointer outlives the lock
  }
  h->observe(seconds);
}

void CallMetrics::render_requests(std::string& out) const {
  std::lock_guard<std::mutex> lock(mu_);
  metric_header(out, "kvbridge_requests_total", "counter", "gRPC calls by method and final gRPC code.");
  for (const auto& [key, n] : requests_) {
    out += fmt::format("kvbridge_requests_total{{method=\"{}\",code=\"{}\"}} {}\n", escape_label_value(key.first),
                       escape_label_value(key.second), n);
  }
  metric_header(out, "kvbridge_request_duration_seconds", "histogram", "gRPC call duration by method.");
  for (const auto& [method, h] : durations_) {
    h->render(out, "kvbridge_request_duration_seconds", fmt::format("method=\"{}\"", escape_label_value(method)));
  }
}

void CallMetrics::render_bytes(std::string& out) const {
  metric_header(out, "kvbridge_transport_bytes_sent_total", "counter", "Serialized message bytes sent, by transport.");
  out += fmt::format("kvbridge_transport_bytes_sent_total{{transport=\"grpc\"}} {}\n",
                     bytes_sent_.load(std::memory_order_relaxed));
  metric_header(out, "kvbridge_transport_bytes_received_total", "counter",
                "Serialized message bytes received, by transport.");
  out += fmt::format("kvbridge_transport_bytes_received_total{{transport=\"grpc\"}} {}\n",
                     bytes_received_.load(std::memory_order_relaxed));
}

std::string CallMetrics::render() const {
  std::string out;
  render_requests(out);
  render_bytes(out);
  return out;
}

// ---- MetricsEndpoint ----

MetricsEndpoint::MetricsEndpoint(std::function<std::string()> render) : render_(std::move(render)) {}

MetricsEndpoint::~MetricsEndpoint() { stop(); }

Status MetricsEndpoint::start(const HostPort& addr) {
  http_ = std::make_unique<httplib::Server>();
  http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(render_(), "text/plain; version=0.0.4; charset=utf-8");
  });
  std::string host = addr.host;
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  if (addr.port == 0) {
    port_ = http_->bind_to_any_port(host);
    if (port_ < 0) port_ = 0;
  } else if (http_->bind_to_port(host, addr.port)) {
    port_ = addr.port;
  }
  if (port_ == 0) {
    http_.reset();
    return unavailable(fmt::format("--metrics-listen {}: cannot bind", addr.to_string()));
  }
  thread_ = std::thread([this] { http_->listen_after_bind(); });
  return Status::Ok();
}

void MetricsEndpoint::stop() {
  if (http_ && thread_.joinable()) {
    // stop() is a no-op until the listener thread has entered its accept loop; wait for it.
    for (int i = 0; i < 2000 && !http_->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    http_->stop();
  }
  if (thread_.joinable()) thread_.join();
  http_.reset();
}

}  // namespace kvb::rpc
