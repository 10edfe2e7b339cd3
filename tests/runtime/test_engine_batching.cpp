// Continuous batching (runtime/engine_loop.h, ModelRunner::forward_batch): a sequence computes the
// same bits whatever shares its steps. The reference is always the same request run alone, one at
// a time, on the same engine code; the kernels' RowMode contract is checked in tests/kernels.
#include <catch2/catch.hpp>

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <future>
#include <mutex>
#include <thread>

#include "engine/forward.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "kernels/registry.h"
#include "runtime/engine_loop.h"
#include "runtime/engine_test_helpers.h"
#include "support/test_support.h"

using namespace kvb;
using namespace kvb::runtime;
using namespace kvb::test::engine;

namespace {

// ---- runner level ----

struct SeqState {
  std::unique_ptr<KvCache> cache;
  std::vector<float> logits;
};

// Runs `chunks` (per sequence: token runs, decode = a run of one sampled token) through
// forward_batch, either all sequences together step by step, or each sequence alone.
void check_runner_batches(const Model& m, std::string_view what) {
  INFO(what);
  Backend* be = nullptr;
  auto backend = cpu_device().create_backend();
  REQUIRE(backend.ok());
  be = backend->get();
  RunnerOptions ro;
  ro.n_batch = 64;
  auto runner = ModelRunner::create(m, *be, ro);
  REQUIRE(runner.ok());
  ModelRunner& r = **runner;
  const int32_t V = m.config.n_vocab;
  // Three sequences: a long prompt in chunks of 13, a short prompt then decodes, decodes of a
  // 1-token prompt. Steps mix them differently from how each runs alone.
  const std::vector<int32_t> p0 = prompt_ids(39, 1, V), p1 = prompt_ids(5, 2, V), p2 = prompt_ids(1, 3, V);
  struct Step {
    int seq;
    std::vector<int32_t> tokens;
    bool decode;
    bool logits;
  };
  std::vector<std::vector<Step>> batches = {
      {{0, {p0.begin(), p0.begin() + 13}, false, false}, {1, p1, false, true}, {2, p2, false, true}},
      {{0, {p0.begin() + 13, p0.begin() + 26}, false, false}, {1, {7}, true, true}, {2, {9}, true, true}},
      {{1, {11}, true, true}, {0, {p0.begin() + 26, p0.end()}, false, true}, {2, {12}, true, true}},
      {{0, {5}, true, true}, {1, {6}, true, true}},
      {{2, {8}, true, true}, {0, {4}, true, true}, {1, {10}, true, true}},
  };
  auto run = [&](bool together) {
    std::vector<SeqState> seqs(3);
    for (auto& s : seqs) {
      auto c = r.new_cache(128);
      REQUIRE(c.ok());
      s.cache = std::move(c).value();
      s.logits.assign(size_t(V), 0.0f);
    }
    std::vector<std::vector<float>> outs;  // every logits row returned, in step order
    for (const auto& batch : batches) {
      std::vector<SeqStep> steps;
      for (const Step& st : batch) {
        steps.push_back({seqs[size_t(st.seq)].cache.get(), st.tokens,
                         st.logits ? seqs[size_t(st.seq)].logits.data() : nullptr, st.decode});
      }
      if (together) {
        REQUIRE(r.forward_batch(steps).ok());
      } else {
        for (const SeqStep& st : steps) REQUIRE(r.forward_batch(std::span<const SeqStep>(&st, 1)).ok());
      }
      for (const Step& st : batch) {
        if (st.logits) outs.push_back(seqs[size_t(st.seq)].logits);
      }
    }
    return std::make_pair(std::move(seqs), std::move(outs));
  };
  auto [alone, alone_logits] = run(false);
  auto [together, together_logits] = run(true);
  REQUIRE(alone_logits.size() == together_logits.size());
  for (size_t i = 0; i < alone_logits.size(); ++i) {
    INFO("logits row " << i);
    CHECK(std::memcmp(alone_logits[i].data(), together_logits[i].data(), alone_logits[i].size() * 4) == 0);
  }
  for (size_t s = 0; s < 3; ++s) {
    const KvCache& a = *alone[s].cache;
    const KvCache& b = *together[s].cache;
    REQUIRE(a.n_tokens() == b.n_tokens());
    for (int32_t l = 0; l < m.config.n_layer; ++l) {
      INFO("sequence " << s << " layer " << l);
      CHECK(std::memcmp(a.k_used(l).data, b.k_used(l).data, a.k_used(l).nbytes()) == 0);
      CHECK(std::memcmp(a.v_used(l).data, b.v_used(l).data, a.v_used(l).nbytes()) == 0);
    }
  }
}

}  // namespace

TEST_CASE("forward_batch: each sequence gets the bits it gets alone", "[batching]") {
  SECTION("stories260K (f32)") { check_runner_batches(*load("stories260K/stories260K.gguf"), "stories260K"); }
  for (DType t : {DType::kF16, DType::kQ8_0, DType::kQ4_0, DType::kQ4_1, DType::kQ5_1}) {
    DYNAMIC_SECTION("synthetic stories15M-shaped model, " << dtype_name(t)) {
      auto m = synth_model("stories15M:n_layer=2,n_vocab=512", t, 7);
      REQUIRE(m.ok());
      check_runner_batches(**m, dtype_name(t));
    }
  }
}

TEST_CASE("forward_batch: bad batches are refused and leave the caches alone", "[batching][bad-input]") {
  auto m = load("stories260K/stories260K.gguf");
  auto backend = cpu_device().create_backend();
  REQUIRE(backend.ok());
  RunnerOptions ro;
  ro.n_batch = 8;
  auto runner = ModelRunner::create(*m, **backend, ro);
  REQUIRE(runner.ok());
  auto c1 = (*runner)->new_cache(16);
  auto c2 = (*runner)->new_cache(4);
  REQUIRE((c1.ok() && c2.ok()));
  const std::vector<int32_t> five = {5, 6, 7, 8, 9}, two = {5, 6};
  auto refused = [&](std::vector<SeqStep> steps, StatusCode code) {
    const Status st = (*runner)->forward_batch(steps);
    CHECK(st.code() == code);
    CHECK((*c1)->n_tokens() == 0);
    CHECK((*c2)->n_tokens() == 0);
  };
  refused({}, StatusCode::kInvalidArgument);
  refused({{c1->get(), two, nullptr, true}}, StatusCode::kInvalidArgument);              // decode of 2 tokens
  refused({{c1->get(), five, nullptr, false}, {c1->get(), two, nullptr, false}}, StatusCode::kInvalidArgument);
  refused({{c1->get(), five, nullptr, false}, {c2->get(), five, nullptr, false}}, StatusCode::kInvalidArgument);
  refused({{c1->get(), two, nullptr, false}, {c2->get(), five, nullptr, false}}, StatusCode::kResourceExhausted);
  const std::vector<int32_t> bad = {5, 100000};
  refused({{c1->get(), bad, nullptr, false}}, StatusCode::kInvalidArgument);
}

// ---- engine level ----

TEST_CASE("engine: greedy tokens under batching equal the requests run one at a time", "[batching][engine]") {
  std::vector<std::unique_ptr<Model>> models;
  models.push_back(load("stories260K/stories260K.gguf"));
  const std::string smol = test::model_path("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
  if (std::filesystem::exists(smol)) models.push_back(load("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf"));
  for (const auto& mp : models) {
    const Model& m = *mp;
    INFO(m.path);
    CacheStore store(CacheStoreOptions{});
    const std::vector<Request> reqs = mixed_requests(std::min(m.config.n_vocab, 500));
    const auto alone = run_alone(*engine(m, store, 1, 64), reqs);
    // All at once: 4 slots (the rest queue and join as others leave), 24-token steps (long prompts
    // run in chunks beside the others' decode tokens).
    check_all_at_once(*engine(m, store, 4, 24), reqs, alone);
  }
}

TEST_CASE("engine: sessions join mid-stream and a cancelled one leaves at once", "[batching][engine]") {
  auto m = load("stories260K/stories260K.gguf");
  CacheStore store(CacheStoreOptions{});
  const std::vector<Request> reqs = mixed_requests(m->config.n_vocab);
  std::vector<std::vector<int32_t>> alone;
  {
    auto e = engine(*m, store, 1, 32);
    for (const Request& r : reqs) {
      auto s = submit(*e, r);
      REQUIRE(s->wait().ok());
      alone.push_back(s->ids);
    }
  }
  auto e = engine(*m, store, 8, 32);
  // A long generation; the others are submitted from its token callbacks, so they join while it
  // streams, and one of them is cancelled after its third token.
  Request longest{prompt_ids(9, 77, m->config.n_vocab), 60};
  auto first = std::make_shared<Collect>();
  std::vector<std::shared_ptr<Collect>> sinks(reqs.size());
  auto cancel = std::make_shared<CancelToken>();
  std::mutex mu;
  first->on_each = [&](size_t n) {
    if (n < 3 || n >= 3 + reqs.size()) return;
    const size_t i = n - 3;
    std::lock_guard<std::mutex> lock(mu);
    sinks[i] = submit(*e, reqs[i], i == 2 ? cancel : nullptr);
    if (i == 2) sinks[i]->on_each = [&](size_t k) {
        if (k == 3) cancel->cancel();
      };
  };
  {
    SessionInput in;
    in.tokens = longest.prompt;
    in.cancel = std::make_shared<CancelToken>();
    GenerateOptions g;
    g.max_tokens = longest.max_tokens;
    g.ignore_eos = true;
    e->submit_generate(std::move(in), g, first);
  }
  REQUIRE(first->wait().ok());
  for (size_t i = 0; i < reqs.size(); ++i) {
    INFO("request " << i);
    std::shared_ptr<Collect> s;
    {
      std::lock_guard<std::mutex> lock(mu);
      s = sinks[i];
    }
    REQUIRE(s != nullptr);
    const auto& out = s->wait();
    if (i == 2) {
      CHECK(out.status().code() == StatusCode::kCancelled);
      // Cancelled after its third token: at most one more step ran.
      CHECK(s->ids.size() <= 4);
      CHECK(std::equal(s->ids.begin(), s->ids.end(), alone[i].begin()));
    } else {
      REQUIRE(out.ok());
      CHECK(s->ids == alone[i]);
    }
  }
  // Slots are released at the end of the step that answered their last request.
  for (int i = 0; i < 200 && e->load().active != 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(e->load().active == 0);
}

TEST_CASE("engine: a full queue answers RESOURCE_EXHAUSTED naming the limits", "[batching][engine][bad-input]") {
  auto m = load("stories260K/stories260K.gguf");
  CacheStore store(CacheStoreOptions{});
  auto e = engine(*m, store, 1, 16, /*max_queue=*/1);
  // One running (long), one queued; the third is refused at once.
  auto a = submit(*e, {prompt_ids(4, 1, 500), 200});
  auto b = submit(*e, {prompt_ids(4, 2, 500), 2});
  auto c = submit(*e, {prompt_ids(4, 3, 500), 2});
  const auto& rc = c->wait();
  REQUIRE_FALSE(rc.ok());
  CHECK(rc.status().code() == StatusCode::kResourceExhausted);
  CHECK_THAT(rc.status().message(), Catch::Contains("--parallel 1") && Catch::Contains("--max-queue 1"));
  CHECK(a->wait().ok());
  CHECK(b->wait().ok());
  const EngineLoad load = e->load();
  CHECK(load.parallel == 1);
  CHECK(load.max_batch_tokens == 16);
  CHECK(load.max_queue == 1);
  CHECK(load.queued == 0);
}

TEST_CASE("engine: a prefill in chunks stores the cache a generation then continues exactly", "[batching][engine]") {
  auto m = load("stories260K/stories260K.gguf");
  CacheStore store(CacheStoreOptions{});
  const std::vector<int32_t> ctx = prompt_ids(70, 9, m->config.n_vocab), prompt = prompt_ids(4, 10, m->config.n_vocab);
  std::vector<int32_t> whole = ctx;
  whole.insert(whole.end(), prompt.begin(), prompt.end());
  // Reference: context and prompt as one input, alone.
  std::vector<int32_t> ref;
  {
    auto e = engine(*m, store, 1, 128);
    auto s = submit(*e, {whole, 10});
    REQUIRE(s->wait().ok());
    ref = s->ids;
  }
  auto e = engine(*m, store, 4, 16);  // the 70-token prefill takes 5 steps beside a running generation
  auto busy = submit(*e, {prompt_ids(3, 11, m->config.n_vocab), 40});
  std::promise<Result<PrefillOutcome>> p;
  SessionInput in;
  in.tokens = ctx;
  in.cancel = std::make_shared<CancelToken>();
  e->submit_prefill(std::move(in), PrefillOptions{}, [&](Result<PrefillOutcome> r) { p.set_value(std::move(r)); });
  auto pre = p.get_future().get();
  REQUIRE(pre.ok());
  CHECK(pre->cache.n_tokens == 70);
  auto cached = store.get(pre->cache.id);
  REQUIRE(cached.ok());
  auto sink = submit_after(*e, cached->cache, /*exact=*/false, {prompt, 10});
  REQUIRE(sink->wait().ok());
  // The context's cells were computed in chunks of at most 16 beside another sequence: the same
  // bits as in one piece, so the continuation is the same.
  CHECK(sink->ids == ref);
  CHECK(busy->wait().ok());
}

TEST_CASE("engine: beside generating sequences a prompt advances at most --prefill-chunk tokens a step",
          "[batching][engine]") {
  auto m = load("stories260K/stories260K.gguf");
  CacheStore store(CacheStoreOptions{});
  EngineOptions o;
  o.parallel = 4;
  o.max_batch_tokens = 64;
  o.prefill_chunk = 5;
  o.prefill_step_factor = 0;  // always 5 (the chunker's sizing is tested on its own below)
  o.ctx_size = 256;
  std::mutex mu;
  std::vector<StepInfo> steps;
  o.on_step = [&](const StepInfo& s) {
    std::lock_guard<std::mutex> lock(mu);
    steps.push_back(s);
  };
  auto e = EngineLoop::create(*m, store, o);
  REQUIRE(e.ok());
  auto gen = submit(**e, {prompt_ids(3, 1, 500), 40});
  auto big = submit(**e, {prompt_ids(100, 2, 500), 1});
  REQUIRE(gen->wait().ok());
  REQUIRE(big->wait().ok());
  std::lock_guard<std::mutex> lock(mu);
  bool chunked = false, whole = false;
  for (const StepInfo& s : steps) {
    const int32_t prompt = s.n_tokens - s.n_decode;
    if (s.n_decode > 0) {
      CHECK(prompt <= 5);
      chunked = chunked || prompt == 5;
    } else {
      CHECK(s.n_tokens <= 64);
      whole = whole || s.n_tokens > 5;
    }
  }
  CHECK(chunked);  // the long prompt ran in 5-token chunks beside the generation
  (void)whole;     // (the first prompt, alone, may have taken a whole step)
}

// The same checks on cuda:0 (exit 77, Skipped, without a usable GPU): continuous batching with
// decode steps as CUDA graphs of several shapes, and prefix hits through the gathered segments.
// cuBLAS may pick other algorithms for other row counts (RowMode is advisory there), so this
// asserts the greedy tokens, which such rounding differences do not move for this model.
TEST_CASE("engine on CUDA: greedy tokens under batching and prefix hits equal the requests run alone",
          "[gpu][batching][engine][prefix]") {
  auto dev = find_device("cuda:0");
  if (!dev.ok()) {
    std::printf("no CUDA device: %s; skipping\n", dev.status().to_string().c_str());
    std::fflush(stdout);
    std::exit(77);
  }
  auto m = load("stories260K/stories260K.gguf");
  const int32_t V = std::min(m->config.n_vocab, 500);
  CacheStore store(CacheStoreOptions{});
  std::vector<Request> reqs = mixed_requests(V);
  const std::vector<int32_t> shared = prompt_ids(80, 77, V);
  for (int i = 0; i < 3; ++i) {
    std::vector<int32_t> p = shared;
    const std::vector<int32_t> tail = prompt_ids(5 + i, uint32_t(78 + i), V);
    p.insert(p.end(), tail.begin(), tail.end());
    reqs.push_back({p, 6 + i});
  }
  auto on_gpu = [&](EngineOptions& o) { o.device = &**dev; };
  const auto alone = run_alone(*engine(*m, store, 1, 64, 64, on_gpu), reqs);
  auto e = engine(*m, store, 4, 24, 64, [&](EngineOptions& o) {
    on_gpu(o);
    o.prefix_cache_bytes = uint64_t(1) << 28;
    o.prefix_block_tokens = 16;
  });
  check_all_at_once(*e, reqs, alone);
  // The last request again: its 80 shared tokens come from the cache's blocks on the device.
  const uint64_t before = e->load().prefix.hit_tokens;
  auto again = submit(*e, reqs.back());
  REQUIRE(again->wait().ok());
  CHECK(again->ids == alone.back());
  CHECK(e->load().prefix.hit_tokens - before >= 80);
}

TEST_CASE("PrefillChunker sizes prompt chunks to keep mixed steps within the factor", "[batching]") {
  PrefillChunker off(32, 0);
  off.observe(4, 0, 0.010);
  off.observe(4, 32, 0.100);
  CHECK(off.chunk() == 32);
  PrefillChunker c(32, 2.0);
  CHECK(c.chunk() == 32);  // nothing measured yet
  c.observe(4, 32, 0.100);  // a mixed step before any decode-only one: no basis
  CHECK(c.chunk() == 32);
  c.observe(4, 0, 0.010);  // decode-only steps take 10 ms
  // 32 prompt tokens cost 90 ms beyond the decode rows: ~2.8 ms each; a 20 ms step has room for
  // ~3.6 of them. Smoothed halfway each step, the chunk converges there and stays within [1, 32].
  for (int i = 0; i < 20; ++i) c.observe(4, c.chunk(), 0.010 + 0.0028125 * c.chunk());
  CHECK(c.chunk() >= 3);
  CHECK(c.chunk() <= 4);
  // Cheap prompt tokens (early in a prompt): back up to the cap.
  for (int i = 0; i < 20; ++i) c.observe(4, c.chunk(), 0.010 + 0.0001 * c.chunk());
  CHECK(c.chunk() == 32);
  // A decode-only step that became slower (more sequences) leaves more room per step.
  for (int i = 0; i < 30; ++i) c.observe(8, 0, 0.040);
  for (int i = 0; i < 20; ++i) c.observe(8, c.chunk(), 0.040 + 0.0028125 * c.chunk());
  CHECK(c.chunk() >= 13);
  CHECK(c.chunk() <= 15);
}

TEST_CASE("PrefillChunker separates a mixed step's fixed cost from its per-token cost", "[batching]") {
  // F32/F16/Q8_0 prompt rows take the prefill GEMM, a second pass over the weights whatever the
  // chunk: here 13 ms, plus 0.15 ms a token, beside a 15 ms decode step. A per-token model charged
  // the 13 ms to each token and settled on 1 token a step (measured: 256-token prompts beside one
  // generation took 1 token per 28 ms step). The fitted line leaves room for (22.5 - 13) / 0.15 = 63.
  PrefillChunker c(256, 2.5);
  c.observe(1, 0, 0.015);
  for (int i = 0; i < 30; ++i) c.observe(1, c.chunk(), 0.015 + 0.013 + 0.00015 * c.chunk());
  CHECK(c.fixed_s() == Approx(0.013).epsilon(0.05));
  CHECK(c.per_token_s() == Approx(0.00015).epsilon(0.05));
  CHECK(c.chunk() >= 62);
  CHECK(c.chunk() <= 64);
  // A fixed cost beyond the room (30 ms against 22.5): no chunk meets the bound; the fewest such
  // steps (the largest chunk) cost the generating sequences least.
  PrefillChunker over(256, 2.5);
  over.observe(1, 0, 0.015);
  for (int i = 0; i < 30; ++i) over.observe(1, over.chunk(), 0.015 + 0.030 + 0.00015 * over.chunk());
  CHECK(over.chunk() >= 250);
}
