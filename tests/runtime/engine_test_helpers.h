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
  std::vector<TokenLogprobs> logprobs;  // one per token, when the request asked for them
  std::optional<Result<GenerateOutcome>> done;
  std::function<void(size_t)> on_each;  // called after each token with the count (engine thread)

  void on_token(int32_t id, std::string_view, const TokenLogprobs* lp) override {
    size_t n;
    {
      std::lock_guard<std::mutex> lock(mu);
      ids.push_back(id);
      if (lp != nullptr) logprobs.push_back(*lp);
      n = ids.size();
    }
    cv.notify_all();
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
  // Until n tokens have streamed (or the stream ended).
  void wait_tokens(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return ids.size() >= n || done.has_value(); });
  }
};

struct Request {
  std::vector<int32_t> prompt;
  int32_t max_tokens = 8;
};

// A greedy Generate of r (EOS ignored) into `sink` (a new one when null), which it returns.
inline std::shared_ptr<Collect> submit(EngineLoop& e, const Request& r, CancelTokenPtr cancel = nullptr,
                                       std::shared_ptr<Collect> sink = nullptr) {
  SessionInput in;
  in.tokens = r.prompt;
  in.cancel = cancel ? cancel : std::make_shared<CancelToken>();
  GenerateOptions g;
  g.max_tokens = r.max_tokens;
  g.ignore_eos = true;
  if (sink == nullptr) sink = std::make_shared<Collect>();
  e.submit_generate(std::move(in), g, sink);
  return sink;
}

// The same after one context cache (SessionInput::context_exact as given).
inline std::shared_ptr<Collect> submit_after(EngineLoop& e, std::shared_ptr<const KvCache> context, bool exact,
                                             const Request& r) {
  SessionInput in;
  in.context.push_back(std::move(context));
  in.context_exact = exact;
  in.tokens = r.prompt;
  in.cancel = std::make_shared<CancelToken>();
  GenerateOptions g;
  g.max_tokens = r.max_tokens;
  g.ignore_eos = true;
  auto sink = std::make_shared<Collect>();
  e.submit_generate(std::move(in), g, sink);
  return sink;
}

// Each request's tokens, run one at a time.
inline std::vector<std::vector<int32_t>> run_alone(EngineLoop& e, const std::vector<Request>& reqs) {
  std::vector<std::vector<int32_t>> out;
  for (const Request& r : reqs) {
    auto s = submit(e, r);
    REQUIRE(s->wait().ok());
    out.push_back(s->ids);
  }
  return out;
}

// Submits every request at once and checks each one's tokens against `alone`.
inline void check_all_at_once(EngineLoop& e, const std::vector<Request>& reqs,
                              const std::vector<std::vector<int32_t>>& alone) {
  std::vector<std::shared_ptr<Collect>> sinks;
  for (const Request& r : reqs) sinks.push_back(submit(e, r));
  for (size_t i = 0; i < reqs.size(); ++i) {
    INFO("request " << i);
    const auto& out = sinks[i]->wait();
    REQUIRE(out.ok());
    CHECK(out->n_generated == reqs[i].max_tokens);
    CHECK(sinks[i]->ids == alone[i]);
  }
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
