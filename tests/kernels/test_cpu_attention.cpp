// Differential tests of the CPU attention (decode and tiled prefill paths) against a plain
// double-precision causal GQA softmax attention, for f32 and f16 caches.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <vector>

#include "kernels/cpu_test_util.h"
#include "kernels/dtype.h"

namespace kvb::test {
namespace {

struct AttnShape {
  int64_t n, n_kv, n_head, n_head_kv, hd;
};

// A cache tensor in f32 or f16, with the f32 values it stands for.
struct Cache {
  DType dtype;
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};

Cache make_cache(DType t, size_t n, uint32_t seed) {
  Cache c{t, {}, random_floats(n, seed)};
  c.bytes.resize(n * dtype_block_bytes(t));
  from_f32(t, c.values.data(), c.bytes.data(), int64_t(n));
  to_f32(t, c.bytes.data(), c.values.data(), int64_t(n));
  return c;
}

std::vector<double> reference(const AttnShape& s, const std::vector<float>& q, const Cache& k, const Cache& v,
                              float scale) {
  const int64_t group = s.n_head / s.n_head_kv;
  std::vector<double> out(size_t(s.n * s.n_head * s.hd));
  std::vector<double> p(size_t(s.n_kv));
  for (int64_t i = 0; i < s.n; ++i) {
    for (int64_t h = 0; h < s.n_head; ++h) {
      const int64_t kvh = h / group, len = s.n_kv - s.n + i + 1;
      const float* qr = q.data() + (i * s.n_head + h) * s.hd;
      double mx = -INFINITY;
      for (int64_t j = 0; j < len; ++j) {
        const float* kr = k.values.data() + (j * s.n_head_kv + kvh) * s.hd;
        double d = 0;
        for (int64_t e = 0; e < s.hd; ++e) d += double(qr[e]) * double(kr[e]);
        p[size_t(j)] = d * scale;
        mx = std::max(mx, p[size_t(j)]);
      }
      double sum = 0;
      for (int64_t j = 0; j < len; ++j) sum += (p[size_t(j)] = std::exp(p[size_t(j)] - mx));
      double* o = out.data() + (i * s.n_head + h) * s.hd;
      for (int64_t j = 0; j < len; ++j) {
        const float* vr = v.values.data() + (j * s.n_head_kv + kvh) * s.hd;
        for (int64_t e = 0; e < s.hd; ++e) o[e] += p[size_t(j)] / sum * double(vr[e]);
      }
    }
  }
  return out;
}

}  // namespace

TEST_CASE("cpu attention matches a double reference (decode and prefill, GQA, f32/f16 cache)", "[kernels]") {
  const AttnShape s = GENERATE(
      AttnShape{1, 1, 1, 1, 8}, AttnShape{1, 600, 8, 2, 64}, AttnShape{2, 37, 4, 4, 16}, AttnShape{3, 130, 8, 2, 128},
      AttnShape{7, 7, 4, 1, 16}, AttnShape{4, 70, 2, 2, 8}, AttnShape{64, 100, 4, 2, 64}, AttnShape{300, 300, 2, 1, 64},
      AttnShape{300, 600, 2, 2, 16}, AttnShape{65, 200, 16, 4, 128}, AttnShape{9, 9, 12, 12, 64},
      AttnShape{130, 257, 6, 2, 40}, AttnShape{5, 83, 3, 1, 24});
  const DType kt = GENERATE(DType::kF32, DType::kF16);
  const DType vt = GENERATE(DType::kF32, DType::kF16);
  if (kt != vt && s.n > 7) return;  // mixed cache types: small shapes are enough
  CAPTURE(s.n, s.n_kv, s.n_head, s.n_head_kv, s.hd, dtype_name(kt), dtype_name(vt));

  const size_t q_elems = size_t(s.n * s.n_head * s.hd), kv_elems = size_t(s.n_kv * s.n_head_kv * s.hd);
  // Larger q spreads the scores so the softmax is not nearly uniform.
  const std::vector<float> q = random_floats(q_elems, 3, -2.0f, 2.0f);
  const Cache k = make_cache(kt, kv_elems, 4), v = make_cache(vt, kv_elems, 5);
  const float scale = 1.0f / std::sqrt(float(s.hd));
  const std::vector<double> ref = reference(s, q, k, v, scale);

  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    Guarded out(q_elems);
    auto st =
        cfg.backend->attention(Tensor::make(DType::kF32, const_cast<float*>(q.data()), {s.n, s.n_head, s.hd}),
                               Tensor::make(kt, const_cast<uint8_t*>(k.bytes.data()), {s.n_kv, s.n_head_kv, s.hd}),
                               Tensor::make(vt, const_cast<uint8_t*>(v.bytes.data()), {s.n_kv, s.n_head_kv, s.hd}),
                               Tensor::make(DType::kF32, out.data(), {s.n, s.n_head, s.hd}), scale);
    REQUIRE(st.ok());
    CHECK(normalized_error(out.data(), ref) <= 1e-5);
    CHECK(out.guards_intact());
  }
}

TEST_CASE("cpu attention rejects bad shapes", "[kernels]") {
  Backend& be = *cpu_backends().back().backend;
  std::vector<float> q(4 * 4 * 8), k(8 * 2 * 8), v(8 * 2 * 8), out(4 * 4 * 8);
  auto run = [&](std::initializer_list<int64_t> qs, std::initializer_list<int64_t> ks, float scale = 1.0f) {
    return be
        .attention(Tensor::make(DType::kF32, q.data(), qs), Tensor::make(DType::kF32, k.data(), ks),
                   Tensor::make(DType::kF32, v.data(), ks), Tensor::make(DType::kF32, out.data(), qs), scale)
        .code();
  };
  CHECK(run({4, 4, 8}, {8, 2, 8}) == StatusCode::kOk);
  CHECK(run({4, 3, 8}, {8, 2, 8}) == StatusCode::kInvalidArgument);  // 3 heads over 2 kv heads
  CHECK(run({4, 4, 8}, {3, 2, 8}) == StatusCode::kInvalidArgument);  // n_kv < n
  CHECK(run({4, 4, 8}, {4, 2, 4}) == StatusCode::kInvalidArgument);  // head_dim mismatch
  CHECK(run({4, 4, 8}, {8, 2, 8}, NAN) == StatusCode::kInvalidArgument);
  CHECK(run({4, 32}, {8, 2, 8}) == StatusCode::kInvalidArgument);  // q not 3-d
  // out overlapping q.
  CHECK(be.attention(Tensor::make(DType::kF32, q.data(), {4, 4, 8}), Tensor::make(DType::kF32, k.data(), {8, 2, 8}),
                     Tensor::make(DType::kF32, v.data(), {8, 2, 8}), Tensor::make(DType::kF32, q.data(), {4, 4, 8}),
                     1.0f)
            .code() == StatusCode::kInvalidArgument);
  // k of an unsupported dtype.
  CHECK(be.attention(Tensor::make(DType::kF32, q.data(), {4, 4, 8}), Tensor::make(DType::kBF16, k.data(), {8, 2, 8}),
                     Tensor::make(DType::kF32, v.data(), {8, 2, 8}), Tensor::make(DType::kF32, out.data(), {4, 4, 8}),
                     1.0f)
            .code() == StatusCode::kInvalidArgument);
}

// RoPE feeds attention its keys and queries; over runs of consecutive positions (a prefill) the
// CPU rope steps the angles by angle addition instead of calling sin/cos per row. Checked against
// exact angles, with large positions, runs broken mid-way and runs longer than the re-anchoring
// interval.
TEST_CASE("cpu rope over consecutive positions matches a double reference", "[kernels]") {
  const RopeType type = GENERATE(RopeType::kNormal, RopeType::kNeox);
  const int64_t n = 700, n_heads = 3, head_dim = 64;
  const RopeParams p{type, 64, 10000.0f, 1.0f};
  const std::vector<float> x = random_floats(size_t(n * n_heads * head_dim), 7);
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = int32_t(i < 450 ? 100000 + i : i - 450);
  pos[200] = 7;  // a break inside the first run
  std::vector<double> ref(x.begin(), x.end());
  const int half = p.n_rot / 2;
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t h = 0; h < n_heads; ++h) {
      double* v = ref.data() + (t * n_heads + h) * head_dim;
      for (int i = 0; i < half; ++i) {
        const double theta = double(pos[size_t(t)]) * std::pow(10000.0, -2.0 * i / p.n_rot);
        const int64_t a = type == RopeType::kNeox ? i : 2 * i;
        const int64_t b = type == RopeType::kNeox ? i + half : 2 * i + 1;
        const double x0 = v[a], x1 = v[b];
        v[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
        v[b] = x0 * std::sin(theta) + x1 * std::cos(theta);
      }
    }
  }
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label, int(type));
    Guarded y(x.size());
    y.fill(x);
    REQUIRE(cfg.backend->rope(Tensor::make(DType::kF32, y.data(), {n, n_heads, head_dim}),
                              Tensor::make(DType::kI32, pos.data(), {n}), p)
                .ok());
    CHECK(normalized_error(y.data(), ref) <= 1e-6);
    CHECK(y.guards_intact());
  }
}

}  // namespace kvb::test

namespace kvb::test {

// RowMode (kernels/backend.h): query row i of a call over n_kv cells computes the same bits as the
// same query in a call of fewer rows over the cells it sees — a prompt prefilled in any chunking,
// or a decode row batched beside others, gets its numbers alone.
TEST_CASE("attention RowMode: a query row's bits do not depend on the rows beside it", "[kernels][batching]") {
  const DType kt = GENERATE(DType::kF32, DType::kF16);
  const int64_t n = 150, n_head = 4, n_head_kv = 2, hd = 32;
  const size_t kv_elems = size_t(n * n_head_kv * hd);
  const std::vector<float> q = random_floats(size_t(n * n_head * hd), 3, -2.0f, 2.0f);
  const Cache k = make_cache(kt, kv_elems, 4), v = make_cache(kt, kv_elems, 5);
  const float scale = 1.0f / std::sqrt(float(hd));
  auto run = [&](Backend& b, int64_t r0, int64_t m, RowMode mode, std::vector<float>& out) {
    // Rows [r0, r0 + m) of the prompt over cells [0, r0 + m): the last m cells are theirs.
    out.assign(size_t(m * n_head * hd), 0.0f);
    const Status st = b.attention(
        Tensor::make(DType::kF32, const_cast<float*>(q.data()) + r0 * n_head * hd, {m, n_head, hd}),
        Tensor::make(kt, const_cast<uint8_t*>(k.bytes.data()), {r0 + m, n_head_kv, hd}),
        Tensor::make(kt, const_cast<uint8_t*>(v.bytes.data()), {r0 + m, n_head_kv, hd}),
        Tensor::make(DType::kF32, out.data(), {m, n_head, hd}), scale, mode);
    REQUIRE(st.ok());
  };
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label, dtype_name(kt));
    for (RowMode mode : {RowMode::kPrefill, RowMode::kDecode}) {
      CAPTURE(int(mode));
      std::vector<float> all, part;
      run(*cfg.backend, 0, n, mode, all);
      for (auto [r0, m] : {std::pair<int64_t, int64_t>{0, 1}, {0, 64}, {64, 13}, {77, 3}, {100, 50}, {149, 1}}) {
        CAPTURE(r0, m);
        run(*cfg.backend, r0, m, mode, part);
        CHECK(std::memcmp(part.data(), all.data() + r0 * n_head * hd, part.size() * 4) == 0);
      }
    }
  }
}

}  // namespace kvb::test

namespace kvb::test {

TEST_CASE("attention_batch gives each sequence its own call's bits", "[kernels][batching]") {
  const int64_t n_head = 6, n_head_kv = 2, hd = 16;
  const int64_t lens[] = {1, 9, 40, 130, 3};
  const RowMode mode = GENERATE(RowMode::kDecode, RowMode::kPrefill);
  std::vector<std::vector<float>> qs;
  std::vector<Cache> ks, vs;
  for (size_t i = 0; i < std::size(lens); ++i) {
    const int64_t rows = mode == RowMode::kDecode ? 1 : std::min<int64_t>(lens[i], 5);
    qs.push_back(random_floats(size_t(rows * n_head * hd), uint32_t(10 + i), -2.0f, 2.0f));
    ks.push_back(make_cache(DType::kF32, size_t(lens[i] * n_head_kv * hd), uint32_t(20 + i)));
    vs.push_back(make_cache(DType::kF16, size_t(lens[i] * n_head_kv * hd), uint32_t(30 + i)));
  }
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label, int(mode));
    std::vector<std::vector<float>> alone(std::size(lens)), batched(std::size(lens));
    std::vector<AttentionSeq> seqs;
    for (size_t i = 0; i < std::size(lens); ++i) {
      const int64_t rows = int64_t(qs[i].size()) / (n_head * hd);
      alone[i].assign(qs[i].size(), 0.0f);
      batched[i].assign(qs[i].size(), 1.0f);
      const Tensor q = Tensor::make(DType::kF32, qs[i].data(), {rows, n_head, hd});
      const Tensor k = Tensor::make(DType::kF32, ks[i].bytes.data(), {lens[i], n_head_kv, hd});
      const Tensor v = Tensor::make(DType::kF16, vs[i].bytes.data(), {lens[i], n_head_kv, hd});
      REQUIRE(cfg.backend->attention(q, k, v, Tensor::make(DType::kF32, alone[i].data(), {rows, n_head, hd}), 0.25f, mode)
                  .ok());
      seqs.push_back({q, k, v, Tensor::make(DType::kF32, batched[i].data(), {rows, n_head, hd})});
    }
    REQUIRE(cfg.backend->attention_batch(seqs, 0.25f, mode).ok());
    for (size_t i = 0; i < std::size(lens); ++i) {
      CAPTURE(i);
      CHECK(std::memcmp(alone[i].data(), batched[i].data(), alone[i].size() * 4) == 0);
    }
  }
}

}  // namespace kvb::test

namespace kvb::test {

// The cells of a sequence split over prefix segments (shared prefix blocks) must give the bits of
// the same cells in one piece, in both row modes, whatever the cut points.
TEST_CASE("attention over prefix segments gives the bits of one contiguous cache", "[kernels][batching][prefix]") {
  const DType kt = GENERATE(DType::kF32, DType::kF16);
  const int64_t n_kv = 150, n_head = 6, n_head_kv = 2, hd = 16;
  const int64_t cell = n_head_kv * hd;
  const size_t esz = kt == DType::kF16 ? 2 : 4;
  const Cache k = make_cache(kt, size_t(n_kv * cell), 41), v = make_cache(kt, size_t(n_kv * cell), 42);
  const std::vector<int64_t> cuts[] = {{64, 128}, {5, 69, 86}, {1}, {16, 32, 48, 64, 80, 96, 112, 128, 144}};
  for (const BackendConfig& cfg : cpu_backends()) {
    for (RowMode mode : {RowMode::kDecode, RowMode::kPrefill}) {
      for (const int64_t n : {int64_t(1), int64_t(3), int64_t(5)}) {
        CAPTURE(cfg.label, dtype_name(kt), int(mode), n);
        const std::vector<float> qv = random_floats(size_t(n * n_head * hd), uint32_t(50 + n), -2.0f, 2.0f);
        const Tensor q = Tensor::make(DType::kF32, const_cast<float*>(qv.data()), {n, n_head, hd});
        std::vector<float> whole(qv.size(), 0.0f);
        REQUIRE(cfg.backend
                    ->attention(q, Tensor::make(kt, const_cast<uint8_t*>(k.bytes.data()), {n_kv, n_head_kv, hd}),
                                Tensor::make(kt, const_cast<uint8_t*>(v.bytes.data()), {n_kv, n_head_kv, hd}),
                                Tensor::make(DType::kF32, whole.data(), {n, n_head, hd}), 0.25f, mode)
                    .ok());
        for (const auto& cut : cuts) {
          // Each segment in its own buffer; the last piece is the sequence's own k/v.
          std::vector<std::vector<uint8_t>> kb, vb;
          std::vector<int64_t> bounds = cut;
          bounds.insert(bounds.begin(), 0);
          bounds.push_back(n_kv);
          for (size_t i = 0; i + 1 < bounds.size(); ++i) {
            const size_t off = size_t(bounds[i] * cell) * esz, len = size_t((bounds[i + 1] - bounds[i]) * cell) * esz;
            kb.emplace_back(k.bytes.begin() + long(off), k.bytes.begin() + long(off + len));
            vb.emplace_back(v.bytes.begin() + long(off), v.bytes.begin() + long(off + len));
          }
          std::vector<KvSegment> prefix;
          for (size_t i = 0; i + 1 < kb.size(); ++i) {
            const int64_t rows = bounds[i + 1] - bounds[i];
            prefix.push_back({Tensor::make(kt, kb[i].data(), {rows, n_head_kv, hd}),
                              Tensor::make(kt, vb[i].data(), {rows, n_head_kv, hd})});
          }
          const int64_t own = n_kv - bounds[bounds.size() - 2];
          if (own < n) continue;  // the queries' cells must be the sequence's own
          std::vector<float> split(qv.size(), 1.0f);
          const AttentionSeq a{q, Tensor::make(kt, kb.back().data(), {own, n_head_kv, hd}),
                               Tensor::make(kt, vb.back().data(), {own, n_head_kv, hd}),
                               Tensor::make(DType::kF32, split.data(), {n, n_head, hd}), prefix};
          REQUIRE(cfg.backend->attention_batch(std::span<const AttentionSeq>(&a, 1), 0.25f, mode).ok());
          CHECK(std::memcmp(split.data(), whole.data(), whole.size() * 4) == 0);
        }
      }
    }
  }
}

TEST_CASE("attention refuses prefix segments of another shape", "[kernels][prefix][bad-input]") {
  const int64_t n_head = 4, n_head_kv = 2, hd = 8;
  std::vector<float> q(size_t(n_head * hd)), out(q.size()), kv(size_t(4 * n_head_kv * hd)), seg(size_t(4 * hd * 3));
  const Tensor kt = Tensor::make(DType::kF32, kv.data(), {4, n_head_kv, hd});
  const KvSegment wrong_heads{Tensor::make(DType::kF32, seg.data(), {4, 3, hd}),
                              Tensor::make(DType::kF32, seg.data(), {4, 3, hd})};
  const KvSegment wrong_dtype{Tensor::make(DType::kF16, seg.data(), {4, n_head_kv, hd}),
                              Tensor::make(DType::kF16, seg.data(), {4, n_head_kv, hd})};
  for (const BackendConfig& cfg : cpu_backends()) {
    for (const KvSegment& bad : {wrong_heads, wrong_dtype}) {
      const AttentionSeq a{Tensor::make(DType::kF32, q.data(), {1, n_head, hd}), kt, kt,
                           Tensor::make(DType::kF32, out.data(), {1, n_head, hd}), std::span<const KvSegment>(&bad, 1)};
      CHECK(cfg.backend->attention_batch(std::span<const AttentionSeq>(&a, 1), 0.25f, RowMode::kDecode).code() ==
            StatusCode::kInvalidArgument);
    }
  }
}

}  // namespace kvb::test
