// What the transport conformance suite (transport_suite.h) and its factories share: the pair of
// endpoints, the buffers (host, or device for GPU factories), fault injection (SuiteOptions, Gate),
// stories260K caches, and small helpers that REQUIRE success.
#pragma once

#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "engine/forward.h"
#include "engine/model.h"
#include "kernels/registry.h"
#include "support/test_support.h"
#include "transport/kv_slices.h"
#include "transport/kv_transport.h"

namespace kvb::test::suite {

using namespace std::chrono_literals;
using transport::Clock;
using transport::KvRegion;
using transport::KvTransport;
using transport::MemoryHandle;
using transport::PollResult;
using transport::PostOptions;
using transport::Role;
using transport::Transfer;
using transport::TransferState;

// Fault injection a factory passes on to its data mover (copy thread, pipe, fake device).
struct SuiteOptions {
  std::chrono::milliseconds timeout{10000};  // default transfer deadline
  size_t chunk = size_t(1) << 20;            // bytes per chunk / frame
  std::chrono::microseconds chunk_delay{0};  // after each chunk
  std::function<void()> on_chunk;            // after each chunk (the mover's thread, no lock held)
};

struct Pair {
  std::unique_ptr<KvTransport> sharer, receiver;
  // The sharer dies without a goodbye (a crash; a broken stream). Null: destroy `sharer` instead.
  std::function<void()> kill_sharer;
  std::shared_ptr<void> keep;  // whatever must outlive the endpoints
};

// Memory one side can register: host memory for host transports, device memory for device ones.
class Buffer {
 public:
  virtual ~Buffer() = default;
  virtual KvRegion region() const = 0;
  virtual void write(size_t off, const void* src, size_t n) = 0;
  virtual void read(size_t off, void* dst, size_t n) const = 0;
  std::vector<char> all() const {
    std::vector<char> v(region().bytes);
    read(0, v.data(), v.size());
    return v;
  }
};

class HostBuffer final : public Buffer {
 public:
  explicit HostBuffer(size_t n, bool as_device = false) : mem_(n), as_device_(as_device) {}
  KvRegion region() const override {
    KvRegion r;
    r.ptr = const_cast<char*>(mem_.data());
    r.bytes = mem_.size();
    r.is_device = as_device_;  // the fake device transports take host memory described as device 0
    r.device = as_device_ ? 0 : -1;
    return r;
  }
  void write(size_t off, const void* src, size_t n) override { std::memcpy(mem_.data() + off, src, n); }
  void read(size_t off, void* dst, size_t n) const override { std::memcpy(dst, mem_.data() + off, n); }

 private:
  std::vector<char> mem_;
  bool as_device_;
};

inline std::vector<char> random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<char> v(n);
  for (char& c : v) c = char(rng() & 0xff);
  return v;
}

inline MemoryHandle must_register(KvTransport& t, const Buffer& b) {
  auto h = t.register_memory(b.region());
  INFO(h.status().to_string());
  REQUIRE(h.ok());
  return std::move(h).value();
}

inline Transfer must_post(Result<Transfer> r) {
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  return std::move(r).value();
}

inline void connect(Pair& p) {
  auto ms = p.sharer->metadata();
  auto mr = p.receiver->metadata();
  REQUIRE(ms.ok());
  REQUIRE(mr.ok());
  // The receiver asks first (its metadata travels in the request), the sharer answers.
  const Status a = p.sharer->connect(*mr);
  INFO(a.to_string());
  REQUIRE(a.ok());
  const Status b = p.receiver->connect(*ms);
  INFO(b.to_string());
  REQUIRE(b.ok());
}

// Waits for a final state (the transfer's deadline bounds it; this is a safety net).
inline PollResult finish(Transfer& t, std::chrono::milliseconds limit = 30000ms) {
  return t.wait(Clock::now() + limit);
}

inline void require_done(Transfer& t) {
  const PollResult r = finish(t);
  INFO(fmt::format("{} tag {:#x}: {}", t.is_send() ? "send" : "recv", t.tag(), r.status.to_string()));
  REQUIRE(r.done());
}

inline void require_error(Transfer& t, StatusCode code) {
  const PollResult r = finish(t);
  INFO(r.status.to_string());
  REQUIRE(r.error());
  CHECK(r.status.code() == code);
}

// A gate a test closes to freeze the data mover inside on_chunk, and opens to let it go.
class Gate {
 public:
  // Closes the gate; arrivals are counted from here.
  void close() {
    std::lock_guard<std::mutex> l(mu_);
    open_ = false;
    arrived_ = 0;
  }
  void open() {
    {
      std::lock_guard<std::mutex> l(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // Called by the mover: counts arrivals, blocks while closed.
  void pass() {
    std::unique_lock<std::mutex> l(mu_);
    ++arrived_;
    cv_.notify_all();
    cv_.wait(l, [&] { return open_; });
  }
  bool wait_arrival(int n, std::chrono::milliseconds limit = 10000ms) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, limit, [&] { return arrived_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool open_ = true;
  int arrived_ = 0;
};

// stories260K, a CPU runner, for caches with real values.
struct Stories {
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ModelRunner> runner;
};

inline Stories& stories() {
  static Stories s = [] {
    Stories r;
    auto m = load_model(test::model_path("stories260K/stories260K.gguf"), LoadOptions{});
    INFO(m.status().to_string());
    REQUIRE(m.ok());
    r.model = std::move(m).value();
    auto b = cpu_device().create_backend();
    REQUIRE(b.ok());
    r.backend = std::move(b).value();
    auto run = ModelRunner::create(*r.model, *r.backend);
    REQUIRE(run.ok());
    r.runner = std::move(run).value();
    return r;
  }();
  return s;
}

inline std::unique_ptr<KvCache> prefill(std::span<const int32_t> tokens, int32_t n_ctx, std::vector<float>* logits) {
  ModelRunner& runner = *stories().runner;
  auto c = runner.new_cache(n_ctx);
  REQUIRE(c.ok());
  std::unique_ptr<KvCache> cache = std::move(c).value();
  std::vector<float> out(size_t(runner.model().config.n_vocab));
  const Status s = runner.forward(*cache, tokens, out);
  INFO(s.to_string());
  REQUIRE(s.ok());
  if (logits) *logits = std::move(out);
  return cache;
}

}  // namespace kvb::test::suite

