// Helpers for the engine loop's tests (test_engine_batching.cpp, test_prefix_cache.cpp): models,
// deterministic prompts, a sink that collects one Generate's stream, and small engines.
#pragma once

#include <catch2/catch.hpp>

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "engine/model.h"
#include "runtime/engine_loop.h"
#include "support/test_support.h"

namespace kvb::test::engine {

using namespace kvb::runtime;

inline std::unique_ptr<Model> load(const std::string& rel) {
  auto m = load_model(kvb::test::model_path(rel));
  REQUIRE(m.ok());
  return std::move(m).value();
}

// Deterministic token ids in [3, n_vocab) (no BOS/EOS), different per seed.
inline std::vector<int32_t> prompt_ids(int32_t n, uint32_t seed, int32_t n_vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(n));
  uint32_t x = seed * 2654435761u + 12345u;
  for (auto& id : ids) {
    x = x * 1664525u + 1013904223u;
    id = 3 + int32_t((x >> 8) % uint32_t(n_vocab - 3));
  }
  return ids;
}

// Collects one Generate's stream.
struct Collect final : GenerateSink {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<int32_t> ids;
  std::optional<Result<GenerateOutcome>> done;
  std::function<void(size_t)> on_each;  // called after each token with the count (engine thread)

  void on_token(int32_t id, std::string_view) override {
    size_t n;
    {
      std::lock_guard<std::mutex> lock(mu);
      ids.push_back(id);
      n = ids.size();
    }
    if (on_each) on_each(n);
  }
  void on_done(Result<GenerateOutcome> out) override {
    std::lock_guard<std::mutex> lock(mu);
    done = std::move(out);
    cv.notify_all();
  }
  const Result<GenerateOutcome>& wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done.has_value(); });
    return *done;
  }
};

struct Request {
  std::vector<int32_t> prompt;
  int32_t max_tokens = 8;
};

inline std::shared_ptr<Collect> submit(EngineLoop& e, const Request& r, CancelTokenPtr cancel = nullptr) {
  SessionInput in;
  in.tokens = r.prompt;
  in.cancel = cancel ? cancel : std::make_shared<CancelToken>();
  GenerateOptions g;
  g.max_tokens = r.max_tokens;
  g.ignore_eos = true;
  auto sink = std::make_shared<Collect>();
  e.submit_generate(std::move(in), g, sink);
  return sink;
}

inline std::vector<Request> mixed_requests(int32_t n_vocab) {
  std::vector<Request> rs;
  const int32_t lens[] = {1, 7, 60, 3, 33, 120, 2, 17};
  const int32_t max_tokens[] = {12, 5, 9, 20, 1, 7, 15, 10};
  for (int i = 0; i < 8; ++i) rs.push_back({prompt_ids(lens[i], uint32_t(100 + i), n_vocab), max_tokens[i]});
  return rs;
}

// An engine on the CPU with 256 cells per session; `tune` may change any option first.
inline std::unique_ptr<EngineLoop> engine(const Model& m, CacheStore& store, int parallel, int max_batch_tokens,
                                          int max_queue = 64, const std::function<void(EngineOptions&)>& tune = {}) {
  EngineOptions o;
  o.parallel = parallel;
  o.max_batch_tokens = max_batch_tokens;
  o.max_queue = max_queue;
  o.ctx_size = 256;
  if (tune) tune(o);
  auto e = EngineLoop::create(m, store, o);
  REQUIRE(e.ok());
  return std::move(e).value();
}

}  // namespace kvb::test::engine
