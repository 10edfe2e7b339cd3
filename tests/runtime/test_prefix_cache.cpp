// Automatic prefix caching (runtime/prefix_cache.h and the engine loop's use of it). References: a
// full prefill of the same tokens (logits, runner level) and the same requests on an engine
// without a prefix cache (greedy tokens).
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <future>
#include <thread>

#include "engine/forward.h"
#include "kernels/registry.h"
#include "runtime/engine_test_helpers.h"
#include "runtime/prefix_cache.h"
#include "support/test_support.h"

using namespace kvb;
using namespace kvb::runtime;
using namespace kvb::test::engine;

namespace {

const char* const kStories = "stories260K/stories260K.gguf";
const char* const kSmol = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

float max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  float d = 0;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
}

// Polls `pred` for up to 10 s (the engine updates its gauges after the step that ends a sequence).
template <class F>
bool eventually(F&& pred) {
  for (int i = 0; i < 1000; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return pred();
}

uint64_t block_bytes(const EngineLoop& e, int32_t block_tokens) {
  const KvLayout l = e.kv_layout();
  return uint64_t(block_tokens) * l.cell_bytes() * 2 * uint64_t(l.n_layer);
}

std::function<void(EngineOptions&)> with_prefix(int32_t block_tokens, uint64_t bytes, int32_t ctx = 256) {
  return [=](EngineOptions& o) {
    o.prefix_block_tokens = block_tokens;
    o.prefix_cache_bytes = bytes;
    o.ctx_size = ctx;
  };
}

}  // namespace

TEST_CASE("prefix cache: the hash chain is fixed, per model and per block size", "[prefix]") {
  const std::vector<int32_t> t = {1, 2, 3, 4};
  const std::vector<int32_t> swapped = {2, 1, 3, 4};
  const uint64_t root = prefix_root_hash(0x1234, 64);
  // Never salted per process: a constant pins the function (a change would orphan nothing on disk
  // today, but agents of one deployment must agree, so it changes only on purpose).
  CHECK(root == prefix_root_hash(0x1234, 64));
  CHECK(prefix_block_hash(root, t) == prefix_block_hash(prefix_root_hash(0x1234, 64), t));
  CHECK(root == 0x71e668aa2a93e898ULL);
  CHECK(prefix_root_hash(0x1235, 64) != root);
  CHECK(prefix_root_hash(0x1234, 32) != root);
  CHECK(prefix_block_hash(root, t) != prefix_block_hash(root, swapped));
  CHECK(prefix_block_hash(root, t) != prefix_block_hash(prefix_block_hash(root, t), t));
}

TEST_CASE("prefix cache: a hit gives the logits of a full prefill (runner, f32 cache)", "[prefix]") {
  std::vector<std::string> models = {kStories};
  if (std::filesystem::exists(kvb::test::model_path(kSmol))) models.push_back(kSmol);
  for (const std::string& path : models) {
    INFO(path);
    auto m = load(path);
    auto backend = cpu_device().create_backend();
    REQUIRE(backend.ok());
    Backend& be = **backend;
    RunnerOptions ro;
    ro.n_batch = 128;
    auto runner = ModelRunner::create(*m, be, ro);
    REQUIRE(runner.ok());
    ModelRunner& r = **runner;
    const int32_t V = m->config.n_vocab;
    const int32_t B = 16;
    PrefixCache pc(PrefixCacheOptions{B, uint64_t(1) << 30, 7}, r.kv_layout(DType::kF32), be.device().buffer_type());
    std::vector<float> logits(static_cast<size_t>(V));
    auto step = [&](KvCache& c, std::span<const std::shared_ptr<const KvCache>> prefix, std::span<const int32_t> t) {
      for (size_t at = 0; at < t.size(); at += 100) {  // within n_batch
        const auto chunk = t.subspan(at, std::min<size_t>(100, t.size() - at));
        const bool last = at + chunk.size() == t.size();
        const SeqStep s{&c, chunk, last ? logits.data() : nullptr, false, prefix};
        REQUIRE(r.forward_batch(std::span<const SeqStep>(&s, 1)).ok());
      }
      return logits;
    };
    auto full = [&](const std::vector<int32_t>& t) {
      auto c = r.new_cache(256);
      REQUIRE(c.ok());
      return step(**c, {}, t);
    };
    // Sequence A computes 150 tokens and leaves 9 blocks (144 tokens) in the cache.
    const std::vector<int32_t> a = prompt_ids(150, 1, V);
    {
      auto c = r.new_cache(256);
      REQUIRE(c.ok());
      step(**c, {}, a);
      const auto blocks = pc.insert(a, {}, **c, be);
      REQUIRE(blocks.size() == 9);
    }
    // B shares A's first 120 tokens: 7 whole blocks, then 8 cells of block 8 copied (copy-on-write).
    const std::vector<int32_t> b = concat({a.begin(), a.begin() + 120}, prompt_ids(40, 2, V));
    const PrefixMatch hit = pc.match(b, int32_t(b.size()) - 1);
    CHECK(hit.blocks.size() == 7);
    CHECK(hit.partial_n == 8);
    REQUIRE(hit.tokens() == 120);
    auto tail = KvCache::create(be.device().buffer_type(), r.kv_layout(DType::kF32), 256);
    REQUIRE(tail.ok());
    REQUIRE((*tail)->set_pos0(7 * B).ok());
    REQUIRE((*tail)->append_cells(be, *hit.partial, 0, hit.partial_n).ok());
    REQUIRE(be.synchronize().ok());
    const std::vector<int32_t> rest(b.begin() + 120, b.end());
    const std::vector<float> from_hit = step(**tail, hit.blocks, rest);
    const std::vector<float> from_scratch = full(b);
    CHECK(max_abs_diff(from_hit, from_scratch) <= 1e-4f);
    CHECK((*tail)->pos0() == 112);
    CHECK((*tail)->n_tokens() == 48);
    pc.refresh_gauges();
    const PrefixCacheStats st = pc.stats();
    CHECK(st.query_tokens == b.size() - 1);
    CHECK(st.hit_tokens == 120);
    CHECK(st.blocks_used == 9);
    CHECK(st.blocks_in_use == 8);  // `hit` holds 7 blocks and the partial one
  }
}

TEST_CASE("prefix cache: a cache cell by cell — append_cells and drop_front keep cells and positions",
          "[prefix][kv]") {
  auto m = load(kStories);
  auto backend = cpu_device().create_backend();
  REQUIRE(backend.ok());
  Backend& be = **backend;
  auto runner = ModelRunner::create(*m, be, RunnerOptions{});
  REQUIRE(runner.ok());
  const std::vector<int32_t> t = prompt_ids(40, 3, m->config.n_vocab);
  auto src = (*runner)->new_cache(64);
  REQUIRE(src.ok());
  std::vector<float> logits(static_cast<size_t>(m->config.n_vocab));
  REQUIRE((*runner)->forward(**src, t, logits).ok());
  auto dst = (*runner)->new_cache(64);
  REQUIRE(dst.ok());
  REQUIRE((*dst)->append_cells(be, **src, 10, 20).ok());
  CHECK((*dst)->pos0() == 10);
  CHECK((*dst)->append_cells(be, **src, 31, 2).code() == StatusCode::kInvalidArgument);  // skips position 30
  CHECK((*dst)->append_cells(be, **src, 35, 10).code() == StatusCode::kOutOfRange);
  REQUIRE((*dst)->append_cells(be, **src, 30, 10).ok());
  REQUIRE((*dst)->drop_front(be, 7).ok());  // 23 cells move over 7: in four pieces
  REQUIRE(be.synchronize().ok());
  CHECK((*dst)->pos0() == 17);
  REQUIRE((*dst)->n_tokens() == 23);
  const size_t cell = (*src)->layout().cell_bytes();
  for (int32_t l = 0; l < m->config.n_layer; ++l) {
    CHECK(std::memcmp((*dst)->k(l).data, (*src)->k(l).slice_rows(17, 23).data, 23 * cell) == 0);
    CHECK(std::memcmp((*dst)->v(l).data, (*src)->v(l).slice_rows(17, 23).data, 23 * cell) == 0);
  }
  CHECK(std::equal((*dst)->tokens().begin(), (*dst)->tokens().end(), t.begin() + 17));
  CHECK((*dst)->drop_front(be, 24).code() == StatusCode::kOutOfRange);
}

TEST_CASE("prefix cache (engine): a hit streams a full prefill's tokens and two sessions hold one copy",
          "[prefix][engine]") {
  auto m = load(kStories);
  const int32_t V = m->config.n_vocab, B = 16;
  CacheStore store(CacheStoreOptions{});
  // P is 6 blocks; S1 and S2 differ from their first token, so each adds blocks of its own.
  const std::vector<int32_t> p = prompt_ids(96, 5, V);
  std::vector<int32_t> s1 = prompt_ids(20, 6, V), s2 = prompt_ids(20, 7, V);
  s2[0] = s1[0] == 3 ? 4 : 3;
  const Request r1{concat(p, s1), 60}, r2{concat(p, s2), 12};
  const auto refs = run_alone(*engine(*m, store, 1, 64), {r1, r2});
  const std::vector<int32_t>& ref1 = refs[0];
  const std::vector<int32_t>& ref2 = refs[1];
  auto e = engine(*m, store, 4, 64, 64, with_prefix(B, uint64_t(1) << 30));
  // r2 arrives once r1 streams, so r1's blocks are cached; r2 then runs beside r1.
  auto a = submit(*e, r1);
  a->wait_tokens(1);
  CHECK(e->load().prefix.blocks_used == 7);  // r1's 116 tokens: 7 whole blocks
  std::atomic<uint64_t> used_while_both{0}, in_use_while_both{0};
  auto b = std::make_shared<Collect>();
  b->on_each = [&](size_t n) {
    if (n == 2) {
      used_while_both = e->load().prefix.blocks_used;
      in_use_while_both = e->load().prefix.blocks_in_use;
    }
  };
  submit(*e, r2, nullptr, b);
  REQUIRE(b->wait().ok());
  REQUIRE(a->wait().ok());
  CHECK(a->ids == ref1);
  CHECK(b->ids == ref2);
  CHECK(a->wait()->n_cached == 0);
  CHECK(b->wait()->n_cached == 96);
  // Shared: P's 6 blocks once, then r1's and r2's own seventh block: 8, not 14.
  CHECK(used_while_both == 8);
  CHECK(in_use_while_both == 8);
  const PrefixCacheStats st = e->load().prefix;
  CHECK(st.hit_tokens == 96);
  CHECK(st.query_tokens == r1.prompt.size() - 1 + r2.prompt.size() - 1);
  CHECK(eventually([&] { return e->load().prefix.blocks_in_use == 0; }));
  // The same request again: every whole block and the start of none more (its last token is
  // always computed) — 112 of its 115 looked-up tokens.
  auto again = submit(*e, r2);
  REQUIRE(again->wait().ok());
  CHECK(again->ids == ref2);
  CHECK(e->load().prefix.hit_tokens == 96 + 112);
}

TEST_CASE("prefix cache (engine): greedy tokens with shared prefixes under batching equal the requests alone",
          "[prefix][engine][batching]") {
  std::vector<std::string> models = {kStories};
  if (std::filesystem::exists(kvb::test::model_path(kSmol))) models.push_back(kSmol);
  for (const std::string& path : models) {
    INFO(path);
    auto m = load(path);
    const int32_t V = std::min(m->config.n_vocab, 500);
    CacheStore store(CacheStoreOptions{});
    // Three families of prompts over two shared prefixes, of mixed lengths and max_tokens.
    const std::vector<int32_t> pa = prompt_ids(70, 20, V), pb = prompt_ids(33, 21, V);
    std::vector<Request> reqs;
    for (int i = 0; i < 6; ++i) {
      const auto& pre = i % 2 == 0 ? pa : pb;
      reqs.push_back({concat(pre, prompt_ids(1 + 9 * i, uint32_t(30 + i), V)), 4 + 3 * i});
    }
    reqs.push_back({pa, 6});
    const auto alone = run_alone(*engine(*m, store, 1, 64), reqs);
    auto e = engine(*m, store, 3, 24, 64, with_prefix(16, uint64_t(1) << 30));
    check_all_at_once(*e, reqs, alone);
    CHECK(e->load().prefix.hit_tokens > 0);
  }
}

TEST_CASE("prefix cache (engine): eviction under a small budget never touches an in-use block; leaves go first",
          "[prefix][engine]") {
  auto m = load(kStories);
  const int32_t V = m->config.n_vocab, B = 16;
  CacheStore store(CacheStoreOptions{});
  auto probe = engine(*m, store, 1, 64);
  const uint64_t four_blocks = 4 * block_bytes(*probe, B);
  probe.reset();
  const Request r1{prompt_ids(81, 40, V), 80}, r2{prompt_ids(40, 41, V), 6};
  auto e = engine(*m, store, 2, 64, 64, with_prefix(B, four_blocks));
  REQUIRE(e->load().prefix.blocks_total == 4);
  auto a = submit(*e, r1);
  a->wait_tokens(1);
  // r1's 5 whole blocks do not fit: 4 are cached, all in use by r1.
  CHECK(e->load().prefix.blocks_used == 4);
  auto b = submit(*e, r2);  // 2 blocks of its own, no room: nothing may be evicted while r1 runs
  REQUIRE(b->wait().ok());
  PrefixCacheStats st = e->load().prefix;
  CHECK(st.evictions == 0);
  CHECK(st.blocks_used == 4);
  CHECK(st.blocks_in_use == 4);
  REQUIRE(a->wait().ok());
  REQUIRE(eventually([&] { return e->load().prefix.blocks_in_use == 0; }));
  // Now r2 again: its 2 blocks evict r1's two deepest blocks (leaves first).
  auto b2 = submit(*e, r2);
  REQUIRE(b2->wait().ok());
  CHECK(b2->ids == b->ids);
  st = e->load().prefix;
  CHECK(st.evictions == 2);
  CHECK(st.blocks_used == 4);
  // r1 again finds its first two blocks.
  const uint64_t hits = st.hit_tokens;
  auto a2 = submit(*e, {r1.prompt, 3});
  REQUIRE(a2->wait().ok());
  CHECK(e->load().prefix.hit_tokens - hits == 32);
}

TEST_CASE("prefix cache (engine): a cancelled sequence's blocks are released at once", "[prefix][engine]") {
  auto m = load(kStories);
  CacheStore store(CacheStoreOptions{});
  auto e = engine(*m, store, 2, 64, 64, with_prefix(16, uint64_t(1) << 30));
  auto cancel = std::make_shared<CancelToken>();
  auto s = submit(*e, {prompt_ids(64, 50, m->config.n_vocab), 150}, cancel);
  s->wait_tokens(1);
  CHECK(e->load().prefix.blocks_in_use == 4);  // the 64 prompt tokens' blocks, cached when the prompt was done
  cancel->cancel();
  const auto& out = s->wait();
  CHECK(out.status().code() == StatusCode::kCancelled);
  CHECK(eventually([&] { return e->load().prefix.blocks_in_use == 0 && e->load().active == 0; }));
  CHECK(e->load().prefix.blocks_used > 0);  // cached for later requests, only no longer in use
}

TEST_CASE("prefix cache (engine): a context cache passed in is a prefix like any other", "[prefix][engine]") {
  auto m = load(kStories);
  const int32_t V = m->config.n_vocab;
  CacheStore store(CacheStoreOptions{});
  const std::vector<int32_t> ctx = prompt_ids(70, 60, V), prompt = prompt_ids(5, 61, V);
  std::vector<int32_t> ref;
  {
    auto e = engine(*m, store, 1, 128);
    auto s = submit(*e, {concat(ctx, prompt), 10});
    REQUIRE(s->wait().ok());
    ref = s->ids;
  }
  // The context as a cache this agent received (a plain prefill on an engine without prefix
  // caching: as another agent would send it).
  std::shared_ptr<const KvCache> received;
  {
    auto e = engine(*m, store, 1, 128);
    std::promise<Result<PrefillOutcome>> p;
    SessionInput in;
    in.tokens = ctx;
    in.cancel = std::make_shared<CancelToken>();
    PrefillOptions po;
    po.hand_back = true;
    e->submit_prefill(std::move(in), po, [&](Result<PrefillOutcome> r) { p.set_value(std::move(r)); });
    auto out = p.get_future().get();
    REQUIRE(out.ok());
    received = std::shared_ptr<const KvCache>(std::move(out->owned));
  }
  auto e = engine(*m, store, 2, 64, 64, with_prefix(16, uint64_t(1) << 30));
  {
    // Cells that may not be what a prefill computes (fused, quantized on the wire, imported) are
    // used as they are and never cached.
    auto s = submit_after(*e, received, /*exact=*/false, {prompt, 10});
    REQUIRE(s->wait().ok());
    CHECK(s->ids == ref);
    CHECK(e->load().prefix.blocks_used == 0);
    CHECK(e->load().prefix.query_tokens == 0);
  }
  auto s = submit_after(*e, received, /*exact=*/true, {prompt, 10});  // computed by this model from tokens
  REQUIRE(s->wait().ok());
  CHECK(s->ids == ref);
  const PrefixCacheStats st = e->load().prefix;
  CHECK(st.query_tokens == 4);  // the context's tokens came with the request: only the input counts
  CHECK(st.hit_tokens == 0);
  // A plain request that starts with the context's tokens now finds its 4 whole blocks.
  auto plain = submit(*e, {concat(ctx, prompt), 10});
  REQUIRE(plain->wait().ok());
  CHECK(plain->ids == ref);
  CHECK(e->load().prefix.hit_tokens >= 64);
}
