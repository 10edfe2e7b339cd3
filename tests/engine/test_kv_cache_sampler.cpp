// KvCache sequence operations and the Sampler.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstring>
#include <map>

#include "engine/kv_cache.h"
#include "engine/sampler.h"
#include "kernels/registry.h"

using namespace kvb;

namespace {

std::unique_ptr<KvCache> make_cache(int32_t n_ctx) {
  auto c = KvCache::create(cpu_device().buffer_type(), KvLayout{2, 2, 4, DType::kF32}, n_ctx);
  REQUIRE(c.ok());
  return std::move(c).value();
}

// Writes recognisable values into the planned cells: value = layer*1000 + cell*10 + (v ? 1 : 0).
void fill(KvCache& c, const KvPlan& p) {
  for (int32_t l = 0; l < c.layout().n_layer; ++l) {
    for (int32_t i = p.first_cell; i < p.first_cell + p.n; ++i) {
      for (int64_t e = 0; e < c.layout().cell_elems(); ++e) {
        c.k(l).as<float>()[i * c.layout().cell_elems() + e] = float(l * 1000 + i * 10);
        c.v(l).as<float>()[i * c.layout().cell_elems() + e] = float(l * 1000 + i * 10 + 1);
      }
    }
  }
}

}  // namespace

TEST_CASE("kv cache plan-then-apply, truncate, copy", "[kv]") {
  auto c = make_cache(8);
  CHECK(c->n_tokens() == 0);
  CHECK(c->bytes_allocated() == 2 * 2 * 8 * 2 * 4 * 4);

  auto p = c->plan_append(3);
  REQUIRE(p.ok());
  CHECK(p->first_cell == 0);
  CHECK(c->n_tokens() == 0);  // planning changes nothing
  fill(*c, *p);
  const std::vector<int32_t> t1{1, 2, 3};
  c->commit_append(*p, t1);
  CHECK(c->n_tokens() == 3);
  CHECK(c->positions() == std::vector<int32_t>{0, 1, 2});
  CHECK(c->bytes_used() == 3 * 2 * 2 * 8 * 4);

  SECTION("a full cache refuses without damage") {
    auto too_many = c->plan_append(6);
    REQUIRE_FALSE(too_many.ok());
    CHECK(too_many.status().code() == StatusCode::kResourceExhausted);
    CHECK(c->n_tokens() == 3);
    CHECK(c->plan_append(5).ok());
    CHECK(c->plan_append(0).status().code() == StatusCode::kInvalidArgument);
  }
  SECTION("truncate then append reuses cells") {
    REQUIRE(c->truncate(1).ok());
    CHECK(c->n_tokens() == 1);
    CHECK(c->truncate(2).code() == StatusCode::kOutOfRange);
    auto p2 = c->plan_append(2);
    REQUIRE(p2.ok());
    CHECK(p2->first_cell == 1);
    CHECK(p2->first_pos == 1);
  }
  SECTION("per-layer byte views are contiguous and in cell order") {
    const Tensor k1 = c->k_used(1);
    CHECK(k1.shape[0] == 3);
    CHECK(k1.nbytes() == 3 * 8 * 4);
    CHECK(k1.as<float>()[2 * 8] == 1020.0f);
    CHECK(c->v_used(0).as<float>()[8] == 11.0f);
  }
  SECTION("copy a prefix into another cache") {
    auto backend = cpu_device().create_backend();
    REQUIRE(backend.ok());
    auto d = make_cache(4);
    REQUIRE(d->copy_from(**backend, *c, 2).ok());
    CHECK(d->n_tokens() == 2);
    CHECK(std::vector<int32_t>(d->tokens().begin(), d->tokens().end()) == std::vector<int32_t>{1, 2});
    CHECK(d->k(1).as<float>()[8] == 1010.0f);
    CHECK(d->copy_from(**backend, *c, 4).code() == StatusCode::kOutOfRange);
    auto other = KvCache::create(cpu_device().buffer_type(), KvLayout{2, 1, 4, DType::kF32}, 8);
    REQUIRE(other.ok());
    CHECK((*other)->copy_from(**backend, *c, 1).code() == StatusCode::kInvalidArgument);
  }
  SECTION("copy_cache / clone_cache between host caches: a whole, exact round trip") {
    auto backend = cpu_device().create_backend();
    REQUIRE(backend.ok());
    REQUIRE(c->set_pos0(0).code() == StatusCode::kFailedPrecondition);  // holds tokens
    auto there = clone_cache(*c, cpu_device().buffer_type(), **backend);
    REQUIRE(there.ok());
    CHECK((*there)->n_ctx() == 3);  // exactly the tokens
    CHECK((*there)->bytes_allocated() == (*there)->bytes_used());
    auto back = make_cache(8);
    REQUIRE(back->set_pos0(5).ok());  // replaced, pos0 included
    REQUIRE(copy_cache(**there, *back, **backend).ok());
    CHECK(back->n_tokens() == 3);
    CHECK(back->pos0() == c->pos0());
    CHECK(std::equal(c->tokens().begin(), c->tokens().end(), back->tokens().begin(), back->tokens().end()));
    for (int32_t l = 0; l < 2; ++l) {
      for (const bool is_v : {false, true}) {
        const Tensor a = c->used_rows(l, is_v), b = back->used_rows(l, is_v);
        CHECK(std::memcmp(a.data, b.data, a.nbytes()) == 0);
      }
    }
    // A roomier copy keeps free cells; an empty source copies to an empty cache.
    auto roomy = clone_cache(*c, cpu_device().buffer_type(), **backend, 6);
    REQUIRE(roomy.ok());
    CHECK((*roomy)->n_ctx() == 6);
    CHECK((*roomy)->n_tokens() == 3);
    auto empty = make_cache(2);
    REQUIRE(copy_cache(*empty, *back, **backend).ok());
    CHECK(back->n_tokens() == 0);
    // Errors: too small, another layout, itself.
    auto small = make_cache(2);
    CHECK(copy_cache(*c, *small, **backend).code() == StatusCode::kResourceExhausted);
    auto other = KvCache::create(cpu_device().buffer_type(), KvLayout{2, 1, 4, DType::kF32}, 8);
    REQUIRE(other.ok());
    CHECK(copy_cache(*c, **other, **backend).code() == StatusCode::kInvalidArgument);
    CHECK(copy_cache(*c, *c, **backend).code() == StatusCode::kInvalidArgument);
  }
  SECTION("bad layouts") {
    CHECK(KvCache::create(cpu_device().buffer_type(), KvLayout{0, 2, 4}, 8).status().code() ==
          StatusCode::kInvalidArgument);
    CHECK(KvCache::create(cpu_device().buffer_type(), KvLayout{2, 2, 4}, 0).status().code() ==
          StatusCode::kInvalidArgument);
  }
}

TEST_CASE("sampler", "[sampler]") {
  const std::vector<float> logits{1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  SECTION("greedy picks the max, lowest id on ties") {
    Sampler s(SamplingParams{});
    CHECK(s.sample(logits) == 1);
  }
  SECTION("top_k 1 and tiny top_p are greedy at any temperature") {
    Sampler k1(SamplingParams{2.0f, 1, 1.0f, 7});
    Sampler p0(SamplingParams{2.0f, 0, 1e-6f, 7});
    for (int i = 0; i < 50; ++i) {
      CHECK(k1.sample(logits) == 1);
      CHECK(p0.sample(logits) == 1);
    }
  }
  SECTION("same seed, same draws; other seed, other draws") {
    Sampler a(SamplingParams{1.0f, 0, 1.0f, 42}), b(SamplingParams{1.0f, 0, 1.0f, 42}), c(SamplingParams{1.0f, 0, 1.0f, 43});
    std::vector<int32_t> da, db, dc;
    for (int i = 0; i < 64; ++i) {
      da.push_back(a.sample(logits));
      db.push_back(b.sample(logits));
      dc.push_back(c.sample(logits));
    }
    CHECK(da == db);
    CHECK(da != dc);
  }
  SECTION("frequencies follow softmax(logits / T) within top_k") {
    Sampler s(SamplingParams{0.7f, 3, 1.0f, 1});
    std::map<int32_t, int> counts;
    const int n = 40000;
    for (int i = 0; i < n; ++i) counts[s.sample(logits)]++;
    // Top-3 are ids 1, 3 (logit 3) and 2 (logit 2); ids 0 and 4 are cut.
    const double e3 = std::exp(3.0 / 0.7), e2 = std::exp(2.0 / 0.7), z = 2 * e3 + e2;
    CHECK(counts[0] == 0);
    CHECK(counts[4] == 0);
    CHECK(double(counts[1]) / n == Approx(e3 / z).margin(0.01));
    CHECK(double(counts[3]) / n == Approx(e3 / z).margin(0.01));
    CHECK(double(counts[2]) / n == Approx(e2 / z).margin(0.01));
  }
  SECTION("top_p keeps the smallest prefix reaching the mass") {
    // probabilities at T=1: ids 1,3 ≈ 0.39 each, id 2 ≈ 0.14: top_p 0.7 keeps {1, 3}.
    Sampler s(SamplingParams{1.0f, 0, 0.7f, 3});
    for (int i = 0; i < 500; ++i) {
      const int32_t t = s.sample(logits);
      CHECK((t == 1 || t == 3));
    }
  }
  SECTION("validation") {
    CHECK(SamplingParams{-1.0f}.validate().code() == StatusCode::kInvalidArgument);
    CHECK(SamplingParams{1.0f, -1}.validate().code() == StatusCode::kInvalidArgument);
    CHECK(SamplingParams{1.0f, 0, 0.0f}.validate().code() == StatusCode::kInvalidArgument);
    CHECK(SamplingParams{1.0f, 0, 1.5f}.validate().code() == StatusCode::kInvalidArgument);
    CHECK(SamplingParams{0.8f, 40, 0.95f}.validate().ok());
  }
}
