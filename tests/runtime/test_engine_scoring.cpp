// Scoring in the engine (GenerateOptions::forced / logprobs / top_logprobs): teacher-forced tokens
// stream the log-probabilities a full forward over the same tokens gives (log_softmax of its
// logits, computed here in double), alone and beside other sequences, EOS included; bad ids are
// refused.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "engine/forward.h"
#include "engine/model.h"
#include "kernels/registry.h"
#include "runtime/engine_loop.h"
#include "runtime/engine_test_helpers.h"
#include "support/test_support.h"

namespace kvb::test::engine {
namespace {

struct Expected {
  std::vector<double> logprob;            // per forced token
  std::vector<std::vector<int32_t>> top;  // per forced token: the k most likely ids
};

// log_softmax over the runner's logits of prompt + forced, row len(prompt) - 1 + i for token i.
Expected reference(const Model& m, const std::vector<int32_t>& prompt, const std::vector<int32_t>& forced, int k) {
  auto backend = cpu_device().create_backend();
  REQUIRE(backend.ok());
  auto runner = ModelRunner::create(m, **backend);
  REQUIRE(runner.ok());
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), forced.begin(), forced.end());
  auto cache = (*runner)->new_cache(int32_t(all.size()));
  REQUIRE(cache.ok());
  const size_t nv = size_t(m.config.n_vocab);
  std::vector<float> logits(all.size() * nv);
  REQUIRE((*runner)->forward(**cache, all, logits, true).ok());
  Expected e;
  for (size_t i = 0; i < forced.size(); ++i) {
    const float* row = logits.data() + (prompt.size() - 1 + i) * nv;
    const double mx = *std::max_element(row, row + nv);
    double sum = 0;
    for (size_t j = 0; j < nv; ++j) sum += std::exp(double(row[j]) - mx);
    e.logprob.push_back(double(row[forced[i]]) - mx - std::log(sum));
    std::vector<int32_t> ids(nv);
    std::iota(ids.begin(), ids.end(), 0);
    std::stable_sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return row[a] > row[b]; });
    e.top.emplace_back(ids.begin(), ids.begin() + k);
  }
  return e;
}

std::shared_ptr<Collect> submit_forced(EngineLoop& e, const std::vector<int32_t>& prompt,
                                       const std::vector<int32_t>& forced, int top) {
  SessionInput in;
  in.tokens = prompt;
  in.cancel = std::make_shared<CancelToken>();
  GenerateOptions g;
  g.max_tokens = 3;  // ignored: the forced tokens set the length
  g.stop = {"a"};    // ignored for forced tokens
  g.forced = forced;
  g.top_logprobs = top;
  auto sink = std::make_shared<Collect>();
  e.submit_generate(std::move(in), g, sink);
  return sink;
}

}  // namespace

TEST_CASE("engine: forced tokens stream the log-probabilities of a full forward, alone and under batching",
          "[engine][scoring]") {
  auto m = load("stories260K/stories260K.gguf");
  CacheStore store(CacheStoreOptions{});
  const std::vector<int32_t> prompt = prompt_ids(37, 5, m->config.n_vocab);
  std::vector<int32_t> forced = prompt_ids(12, 6, m->config.n_vocab);
  forced[4] = 2;  // EOS: streamed and scored like any forced token, generation goes on
  constexpr int kTop = 3;
  const Expected want = reference(*m, prompt, forced, kTop);

  auto alone_engine = engine(*m, store, 1, 64);
  auto alone = submit_forced(*alone_engine, prompt, forced, kTop);
  const auto& out = alone->wait();
  REQUIRE(out.ok());
  CHECK(out->reason == FinishReason::kMaxTokens);
  CHECK(alone->ids == forced);
  REQUIRE(alone->logprobs.size() == forced.size());
  for (size_t i = 0; i < forced.size(); ++i) {
    CAPTURE(i);
    CHECK(std::abs(alone->logprobs[i].logprob - want.logprob[i]) <= 1e-4);
    REQUIRE(alone->logprobs[i].top.size() == size_t(kTop));
    std::vector<int32_t> top_ids;
    for (const auto& [id, lp] : alone->logprobs[i].top) top_ids.push_back(id);
    CHECK(top_ids == want.top[i]);
    CHECK(alone->logprobs[i].top[0].second >= alone->logprobs[i].logprob);
  }

  // Beside sampling sequences and another scorer, in 16-token steps: the same values, bit for bit.
  auto busy = engine(*m, store, 4, 16);
  std::vector<std::shared_ptr<Collect>> others;
  for (int i = 0; i < 3; ++i) others.push_back(submit(*busy, {prompt_ids(20 + 9 * i, uint32_t(50 + i), 500), 15}));
  auto batched = submit_forced(*busy, prompt, forced, kTop);
  REQUIRE(batched->wait().ok());
  for (auto& o : others) REQUIRE(o->wait().ok());
  CHECK(batched->ids == forced);
  REQUIRE(batched->logprobs.size() == forced.size());
  for (size_t i = 0; i < forced.size(); ++i) {
    CHECK(batched->logprobs[i].logprob == alone->logprobs[i].logprob);
    CHECK(batched->logprobs[i].top == alone->logprobs[i].top);
  }
  // Sampled tokens carry no log-probabilities unless asked for.
  CHECK(others[0]->logprobs.empty());
}

TEST_CASE("engine: a forced token outside the vocabulary is INVALID_ARGUMENT", "[engine][scoring][bad-input]") {
  auto m = load("stories260K/stories260K.gguf");
  CacheStore store(CacheStoreOptions{});
  auto e = engine(*m, store, 1, 64);
  auto s = submit_forced(*e, {1, 5, 9}, {7, m->config.n_vocab}, 0);
  const auto& out = s->wait();
  REQUIRE_FALSE(out.ok());
  CHECK(out.status().code() == StatusCode::kInvalidArgument);
  CHECK(s->ids.empty());
}

}  // namespace kvb::test::engine
