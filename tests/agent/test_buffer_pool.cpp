// runtime/buffer_pool: reuse within the size tolerance, the idle budget, small buffers passing
// through, buffers outliving the pool, and concurrent use.
#include <catch2/catch.hpp>

#include <cstring>
#include <thread>
#include <vector>

#include "kernels/registry.h"
#include "runtime/buffer_pool.h"

using namespace kvb;
using namespace kvb::runtime;

namespace {

constexpr size_t kMiB = size_t(1) << 20;

std::unique_ptr<Buffer> must_alloc(const BufferType& t, size_t bytes) {
  auto b = t.alloc(bytes);
  REQUIRE(b.ok());
  return std::move(b).value();
}

}  // namespace

TEST_CASE("buffer pool reuses freed buffers of about the same size", "[server][buffer_pool]") {
  BufferPoolOptions o;
  o.max_idle_bytes = 64 * kMiB;
  o.min_pooled_bytes = kMiB;
  BufferPool pool(cpu_device().buffer_type(), o);
  CHECK(pool.is_host());
  CHECK(pool.alignment() == cpu_device().buffer_type().alignment());

  auto a = must_alloc(pool, 8 * kMiB);
  CHECK(a->size() == 8 * kMiB);
  std::memset(a->data(), 7, a->size());
  void* const first = a->data();
  a.reset();
  CHECK(pool.stats().idle_buffers == 1);
  CHECK(pool.stats().idle_bytes == 8 * kMiB);

  SECTION("the same size, or up to 1/8 smaller, gets it back; its size is its real size") {
    auto b = must_alloc(pool, 8 * kMiB - kMiB / 2);
    CHECK(b->data() == first);
    CHECK(b->size() == 8 * kMiB);
    CHECK(pool.stats().hits == 1);
    CHECK(pool.stats().idle_buffers == 0);
    CHECK(b->set(0, "x", 1).ok());
  }
  SECTION("larger, or much smaller, requests allocate anew") {
    auto big = must_alloc(pool, 8 * kMiB + 1);
    auto small = must_alloc(pool, 4 * kMiB);
    CHECK(big->data() != first);
    CHECK(small->data() != first);
    CHECK(pool.stats().idle_buffers == 1);
    CHECK(pool.stats().hits == 0);
  }
  SECTION("the smallest fitting idle buffer is taken") {
    auto c = must_alloc(pool, 7 * kMiB + kMiB / 2);  // 8 MiB is within 1/8: taken
    auto d = must_alloc(pool, 7 * kMiB + kMiB / 2);  // nothing idle now: new
    CHECK(c->data() == first);
    void* const second = d->data();
    c.reset();
    d.reset();
    auto e = must_alloc(pool, 7 * kMiB);  // both fit; 7.5 MiB is the smaller
    CHECK(e->data() == second);
  }
}

TEST_CASE("buffer pool keeps at most max_idle_bytes, oldest released first", "[server][buffer_pool]") {
  BufferPoolOptions o;
  o.max_idle_bytes = 10 * kMiB;
  BufferPool pool(cpu_device().buffer_type(), o);
  auto a = must_alloc(pool, 4 * kMiB);
  auto b = must_alloc(pool, 4 * kMiB);
  auto c = must_alloc(pool, 4 * kMiB);
  void* const pb = b->data();
  a.reset();
  b.reset();
  c.reset();  // 12 MiB idle > 10: the oldest (a) goes
  CHECK(pool.stats().idle_buffers == 2);
  CHECK(pool.stats().idle_bytes == 8 * kMiB);
  auto again = must_alloc(pool, 4 * kMiB);
  CHECK(again->data() == pb);  // the oldest still idle

  SECTION("a buffer over the whole budget is never kept") {
    auto huge = must_alloc(pool, 16 * kMiB);
    huge.reset();
    CHECK(pool.stats().idle_bytes <= 10 * kMiB);
  }
}

TEST_CASE("buffer pool: small buffers pass through, disabled pool, buffers outlive it", "[server][buffer_pool]") {
  {
    BufferPool pool(cpu_device().buffer_type(), {});
    auto s = must_alloc(pool, 4096);
    s.reset();
    CHECK(pool.stats().idle_buffers == 0);
    CHECK(pool.stats().misses == 0);
  }
  {
    BufferPoolOptions off;
    off.max_idle_bytes = 0;
    BufferPool pool(cpu_device().buffer_type(), off);
    must_alloc(pool, 8 * kMiB).reset();
    CHECK(pool.stats().idle_buffers == 0);
  }
  std::unique_ptr<Buffer> survivor;
  {
    BufferPool pool(cpu_device().buffer_type(), {});
    survivor = must_alloc(pool, 2 * kMiB);
  }
  std::memset(survivor->data(), 1, survivor->size());
  survivor.reset();  // returns to the pool's shared idle list, freed with it
}

TEST_CASE("buffer pool under concurrent alloc and free", "[server][buffer_pool]") {
  BufferPoolOptions o;
  o.max_idle_bytes = 16 * kMiB;
  BufferPool pool(cpu_device().buffer_type(), o);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&pool, t] {
      for (int i = 0; i < 200; ++i) {
        auto b = pool.alloc(kMiB * size_t(1 + (i + t) % 3));
        if (!b.ok()) continue;
        static_cast<char*>((*b)->data())[0] = char(i);
      }
    });
  }
  for (auto& th : threads) th.join();
  const auto st = pool.stats();
  CHECK(st.idle_bytes <= 16 * kMiB);
  CHECK(st.hits + st.misses == 800);
  CHECK(st.hits > 0);
}
