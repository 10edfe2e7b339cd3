// CacheStore: budget, LRU eviction of unpinned entries, TTL with an injected clock, pinning,
// RESOURCE_EXHAUSTED without damage, readers surviving eviction, concurrent access.
#include <catch2/catch.hpp>

#include <atomic>
#include <set>
#include <thread>

#include "engine/kv_cache.h"
#include "kernels/registry.h"
#include "runtime/cache_store.h"

using namespace kvb;
using namespace kvb::runtime;

namespace {

// As make_cache, without Catch2 assertions (which are not thread-safe); null on failure.
std::shared_ptr<const KvCache> make_cache_unchecked(int32_t n_tokens, float tag) {
  auto c = KvCache::create(cpu_device().buffer_type(), KvLayout{2, 2, 32, DType::kF32}, n_tokens);
  if (!c.ok()) return nullptr;
  auto plan = (*c)->plan_append(n_tokens);
  if (!plan.ok()) return nullptr;
  for (int32_t l = 0; l < 2; ++l) {
    float* k = (*c)->k(l).as<float>();
    for (int64_t i = 0; i < int64_t(n_tokens) * 64; ++i) k[i] = tag;
  }
  std::vector<int32_t> ids(static_cast<size_t>(n_tokens), 1);
  (*c)->commit_append(*plan, ids);
  return std::shared_ptr<const KvCache>(std::move(c).value());
}

// A host cache of n_tokens cells, exactly n_tokens * 1 KiB: 2 layers × (K, V) × 2 heads × 32 dims × f32
// = 1024 bytes per cell. Cell values are `tag` so a reader can check the cache was not touched.
std::shared_ptr<const KvCache> make_cache(int32_t n_tokens, float tag = 0) {
  auto c = KvCache::create(cpu_device().buffer_type(), KvLayout{2, 2, 32, DType::kF32}, n_tokens);
  REQUIRE(c.ok());
  auto plan = (*c)->plan_append(n_tokens);
  REQUIRE(plan.ok());
  for (int32_t l = 0; l < 2; ++l) {
    float* k = (*c)->k(l).as<float>();
    for (int64_t i = 0; i < int64_t(n_tokens) * 64; ++i) k[i] = tag;
  }
  std::vector<int32_t> ids(static_cast<size_t>(n_tokens), 1);
  (*c)->commit_append(*plan, ids);
  REQUIRE((*c)->bytes_allocated() == size_t(n_tokens) * 1024);
  return std::shared_ptr<const KvCache>(std::move(c).value());
}

struct FakeClock {
  std::atomic<int64_t> ms{1'700'000'000'000};
  CacheStore::Clock fn() {
    return [this] { return ms.load(); };
  }
};

CacheStoreOptions budget(uint64_t bytes, uint32_t ttl_s = 0) {
  CacheStoreOptions o;
  o.max_bytes = bytes;
  o.default_ttl_s = ttl_s;
  return o;
}

}  // namespace

TEST_CASE("cache store ids are unguessable 128-bit hex and well-formed", "[server][cache_store]") {
  CacheStore store(budget(1 << 20));
  std::set<std::string> ids;
  for (int i = 0; i < 50; ++i) {
    auto info = store.insert(make_cache(1), {});
    REQUIRE(info.ok());
    CHECK(info->id.size() == 32);
    CHECK(is_well_formed_cache_id(info->id));
    ids.insert(info->id);
  }
  CHECK(ids.size() == 50);
  CHECK_FALSE(is_well_formed_cache_id(""));
  CHECK_FALSE(is_well_formed_cache_id("0123456789ABCDEF0123456789abcdef"));
  CHECK_FALSE(is_well_formed_cache_id("0123456789abcdef0123456789abcde"));
  CHECK_FALSE(is_well_formed_cache_id("0123456789abcdef0123456789abcdeg"));
}

TEST_CASE("cache store get/drop/info, hits and misses", "[server][cache_store]") {
  FakeClock clock;
  CacheStore store(budget(64 * 1024, 0), clock.fn());
  auto a = store.insert(make_cache(4, 1.0f), InsertOptions{0, false, 0xabc});
  REQUIRE(a.ok());
  CHECK(a->n_tokens == 4);
  CHECK(a->bytes == 4096);
  CHECK(a->fingerprint == 0xabc);
  CHECK(a->expires_ms == 0);  // default TTL 0 = never

  auto e = store.get(a->id);
  REQUIRE(e.ok());
  CHECK(e->cache->n_tokens() == 4);
  CHECK(store.get("ffffffffffffffffffffffffffffffff").status().code() == StatusCode::kNotFound);
  CacheStoreStats st = store.stats();
  CHECK(st.hits == 1);
  CHECK(st.misses == 1);
  CHECK(st.bytes_used == 4096);
  CHECK(st.n_caches == 1);

  REQUIRE(store.drop(a->id).ok());
  CHECK(store.drop(a->id).code() == StatusCode::kNotFound);
  CHECK(store.get(a->id).status().code() == StatusCode::kNotFound);
  CHECK(store.stats().bytes_used == 0);
  // The reader that got the cache before the drop still holds valid data.
  CHECK(e->cache->k(0).as<float>()[0] == 1.0f);
}

TEST_CASE("cache store evicts least recently used unpinned entries under pressure", "[server][cache_store]") {
  FakeClock clock;
  CacheStore store(budget(10 * 1024), clock.fn());  // room for 10 cells
  auto a = store.insert(make_cache(3), {});
  clock.ms += 1;
  auto b = store.insert(make_cache(3), {});
  clock.ms += 1;
  auto c = store.insert(make_cache(3), {});
  REQUIRE((a.ok() && b.ok() && c.ok()));
  CHECK(store.stats().bytes_used == 9 * 1024);

  clock.ms += 1;
  REQUIRE(store.get(a->id).ok());  // a becomes the most recently used; b is now the oldest

  auto d = store.insert(make_cache(3), {});  // needs 2 KiB more than free: evicts b only
  REQUIRE(d.ok());
  CHECK(store.get(b->id).status().code() == StatusCode::kNotFound);
  CHECK(store.get(a->id).ok());
  CHECK(store.get(c->id).ok());
  CHECK(store.get(d->id).ok());
  CHECK(store.stats().evictions == 1);
  CHECK(store.stats().bytes_used == 9 * 1024);

  // list() is most recently used first.
  const auto l = store.list();
  REQUIRE(l.size() == 3);
  CHECK(l[0].id == d->id);
}

TEST_CASE("pinned entries survive pressure; an insert that cannot fit damages nothing", "[server][cache_store]") {
  FakeClock clock;
  CacheStore store(budget(10 * 1024), clock.fn());
  auto pinned = store.insert(make_cache(4, 7.0f), InsertOptions{0, /*pinned=*/true, 0});
  clock.ms += 1;
  auto loose = store.insert(make_cache(4, 8.0f), {});
  REQUIRE((pinned.ok() && loose.ok()));

  SECTION("too big even after evicting every unpinned entry: RESOURCE_EXHAUSTED, nothing evicted") {
    auto big = store.insert(make_cache(7), {});  // 4 pinned + 7 > 10
    REQUIRE_FALSE(big.ok());
    CHECK(big.status().code() == StatusCode::kResourceExhausted);
    CHECK(store.stats().evictions == 0);
    CHECK(store.stats().n_caches == 2);
    auto p = store.get(pinned->id);
    auto l = store.get(loose->id);
    REQUIRE((p.ok() && l.ok()));
    CHECK(p->cache->k(1).as<float>()[5] == 7.0f);
    CHECK(l->cache->k(1).as<float>()[5] == 8.0f);
  }
  SECTION("larger than the whole budget: RESOURCE_EXHAUSTED") {
    CHECK(store.insert(make_cache(11), {}).status().code() == StatusCode::kResourceExhausted);
    CHECK(store.stats().n_caches == 2);
  }
  SECTION("fits after evicting the unpinned entry: the pinned one stays") {
    auto reader = store.get(loose->id);  // a reader holds the entry that will be evicted
    REQUIRE(reader.ok());
    auto fits = store.insert(make_cache(6), {});
    REQUIRE(fits.ok());
    CHECK(store.get(pinned->id).ok());
    CHECK(store.get(loose->id).status().code() == StatusCode::kNotFound);
    CHECK(reader->cache->k(0).as<float>()[0] == 8.0f);  // never invalidated by eviction
  }
  SECTION("unpinning makes an entry evictable again") {
    auto info = store.set_pinned(pinned->id, false);
    REQUIRE(info.ok());
    CHECK_FALSE(info->pinned);
    clock.ms += 1;
    REQUIRE(store.get(loose->id).ok());  // the formerly pinned entry is now the oldest
    REQUIRE(store.insert(make_cache(6), {}).ok());
    CHECK(store.get(pinned->id).status().code() == StatusCode::kNotFound);
    CHECK(store.get(loose->id).ok());
  }
  CHECK(store.set_pinned("ffffffffffffffffffffffffffffffff", true).status().code() == StatusCode::kNotFound);
}

TEST_CASE("cache store TTL: idle entries expire, use extends them, pinned ones too", "[server][cache_store]") {
  FakeClock clock;
  CacheStore store(budget(1 << 20, /*ttl_s=*/10), clock.fn());
  auto a = store.insert(make_cache(1), {});                         // default TTL 10 s
  auto b = store.insert(make_cache(1), InsertOptions{100, false, 0});  // per-entry TTL 100 s
  auto p = store.insert(make_cache(1), InsertOptions{0, true, 0});     // pinned, default TTL
  REQUIRE((a.ok() && b.ok() && p.ok()));
  CHECK(a->ttl_s == 10);
  CHECK(b->ttl_s == 100);
  CHECK(a->expires_ms == clock.ms + 10'000);

  clock.ms += 9'000;
  REQUIRE(store.get(a->id).ok());  // used at t+9 s: now expires at t+19 s
  clock.ms += 9'000;               // t+18 s
  CHECK(store.info(a->id).ok());
  CHECK(store.info(p->id).status().code() == StatusCode::kNotFound);  // pinned: TTL still applies
  clock.ms += 2'000;               // t+20 s
  CHECK(store.get(a->id).status().code() == StatusCode::kNotFound);
  CHECK(store.get(b->id).ok());
  CacheStoreStats st = store.stats();
  CHECK(st.expirations == 2);
  CHECK(st.n_caches == 1);
  CHECK(st.bytes_used == 1024);

  clock.ms += 100'001;
  CHECK(store.sweep() == 1);
  CHECK(store.stats().n_caches == 0);
}

TEST_CASE("cache store is safe under concurrent inserts, reads, pins and drops", "[server][cache_store]") {
  CacheStore store(budget(64 * 1024));  // 64 cells: constant eviction pressure
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::vector<std::string> mine;
      for (int i = 0; i < 200; ++i) {
        auto cache = make_cache_unchecked(1 + (i % 4), float(t));
        if (!cache) {
          ++failures;
          continue;
        }
        auto info = store.insert(std::move(cache), InsertOptions{0, (i % 50) == 0, 0});
        if (info.ok()) mine.push_back(info->id);
        if (!mine.empty()) {
          const std::string& id = mine[static_cast<size_t>(i) % mine.size()];
          auto e = store.get(id);
          // Evicted or not, a cache once read stays intact.
          if (e.ok() && e->cache->k(0).as<float>()[0] != float(t)) ++failures;
          if (i % 7 == 0) (void)store.set_pinned(id, false);
          if (i % 11 == 0) (void)store.drop(id);
        }
        (void)store.list();
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(failures == 0);
  const CacheStoreStats st = store.stats();
  CHECK(st.bytes_used <= st.bytes_budget);
  uint64_t sum = 0;
  for (const auto& c : store.list()) sum += c.bytes;
  CHECK(sum == st.bytes_used);
  CHECK(st.evictions > 0);
}
