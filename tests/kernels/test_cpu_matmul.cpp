// Differential tests of the CPU matmul (gemv and micro-kernel paths) against a double-precision
// reference on the dequantized weights, for every ISA this machine has, 1 and 2 threads.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdint>
#include <vector>

#include "kernels/cpu_test_util.h"
#include "kernels/dtype.h"

namespace kvb::test {
namespace {

// A weight in its stored dtype and the f32 values it stands for.
struct HostWeight {
  DType dtype;
  int64_t n_out, n_in;
  std::vector<uint8_t> bytes;
  std::vector<float> dequant;

  Tensor tensor() { return Tensor::make(dtype, bytes.data(), {n_out, n_in}); }
};

HostWeight make_weight(DType t, int64_t n_out, int64_t n_in, uint32_t seed) {
  HostWeight w{t, n_out, n_in, {}, {}};
  const std::vector<float> f = random_floats(size_t(n_out * n_in), seed);
  w.bytes.resize(row_bytes(t, n_in) * size_t(n_out));
  from_f32(t, f.data(), w.bytes.data(), n_out * n_in);
  w.dequant.resize(f.size());
  to_f32(t, w.bytes.data(), w.dequant.data(), n_out * n_in);
  return w;
}

// y[i][o] = y0[i][o] + sum_k x[i][k] w[o][k], in double.
std::vector<double> reference(const std::vector<float>& x, const HostWeight& w, int64_t n,
                              const std::vector<float>* y0) {
  std::vector<double> y(size_t(n * w.n_out));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < w.n_out; ++o) {
      double s = y0 ? double((*y0)[size_t(i * w.n_out + o)]) : 0.0;
      const float* xr = x.data() + i * w.n_in;
      const float* wr = w.dequant.data() + o * w.n_in;
      for (int64_t k = 0; k < w.n_in; ++k) s += double(xr[k]) * double(wr[k]);
      y[size_t(i * w.n_out + o)] = s;
    }
  }
  return y;
}

struct Shape {
  int64_t n, n_in, n_out;
};

constexpr double kTol = 1e-5;

}  // namespace

TEST_CASE("cpu matmul matches a double reference for all ISAs, threads, dtypes and shapes", "[kernels]") {
  const DType t = GENERATE(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0);
  const Shape s =
      GENERATE(Shape{1, 32, 1}, Shape{1, 64, 33}, Shape{1, 768, 100}, Shape{2, 96, 64}, Shape{3, 45, 31},
               Shape{4, 128, 65}, Shape{5, 256, 96}, Shape{7, 33, 70}, Shape{29, 7, 5}, Shape{64, 288, 130},
               Shape{17, 1024, 32}, Shape{300, 64, 3}, Shape{300, 544, 70}, Shape{70, 1056, 40}, Shape{9, 2080, 33});
  if (t == DType::kQ8_0 && s.n_in % kQ8BlockSize != 0) return;
  CAPTURE(dtype_name(t), s.n, s.n_in, s.n_out);

  HostWeight w = make_weight(t, s.n_out, s.n_in, uint32_t(s.n * 1000 + s.n_in + s.n_out));
  std::vector<float> x = random_floats(size_t(s.n * s.n_in), 7);
  const std::vector<double> ref = reference(x, w, s.n, nullptr);
  const Tensor xt = Tensor::make(DType::kF32, x.data(), {s.n, s.n_in});

  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    auto uw = cfg.backend->upload_weight(w.tensor());
    REQUIRE(uw.ok());
    REQUIRE(uw.value()->n_out() == s.n_out);
    REQUIRE(uw.value()->n_in() == s.n_in);
    REQUIRE(uw.value()->dtype() == t);
    Guarded y(size_t(s.n * s.n_out));
    REQUIRE(cfg.backend->matmul(xt, *uw.value(), Tensor::make(DType::kF32, y.data(), {s.n, s.n_out})).ok());
    CHECK(normalized_error(y.data(), ref) <= kTol);
    CHECK(y.guards_intact());
  }
}

TEST_CASE("cpu matmul runs several weights in one dispatch, with accumulate", "[kernels]") {
  const int64_t n = GENERATE(1, 3, 7, 64);
  const int64_t n_in = 96;
  CAPTURE(n);
  // Q, K, V-like outputs of different sizes and dtypes; K accumulates.
  std::vector<HostWeight> ws;
  ws.push_back(make_weight(DType::kF32, 96, n_in, 1));
  ws.push_back(make_weight(DType::kQ8_0, 40, n_in, 2));
  ws.push_back(make_weight(DType::kF16, 72, n_in, 3));
  std::vector<float> x = random_floats(size_t(n * n_in), 11);
  const std::vector<float> y0 = random_floats(size_t(n * 40), 12);
  const Tensor xt = Tensor::make(DType::kF32, x.data(), {n, n_in});

  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    std::vector<std::unique_ptr<Weight>> uws;
    std::vector<Guarded> ys;
    std::vector<MatmulOut> outs;
    for (HostWeight& w : ws) {
      auto uw = cfg.backend->upload_weight(w.tensor());
      REQUIRE(uw.ok());
      uws.push_back(std::move(uw).value());
      ys.emplace_back(size_t(n * w.n_out));
    }
    ys[1].fill(y0);
    for (size_t i = 0; i < ws.size(); ++i) {
      outs.push_back({uws[i].get(), Tensor::make(DType::kF32, ys[i].data(), {n, ws[i].n_out}), i == 1});
    }
    REQUIRE(cfg.backend->matmul(xt, outs).ok());
    for (size_t i = 0; i < ws.size(); ++i) {
      CAPTURE(i);
      CHECK(normalized_error(ys[i].data(), reference(x, ws[i], n, i == 1 ? &y0 : nullptr)) <= kTol);
      CHECK(ys[i].guards_intact());
    }
  }
}

TEST_CASE("cpu backend thread count can change between ops", "[kernels]") {
  auto b = cpu::create_backend(cpu::detected_isa(), 1);
  REQUIRE(b.ok());
  Backend& be = *b.value();
  HostWeight w = make_weight(DType::kF16, 200, 128, 5);
  auto uw = be.upload_weight(w.tensor());
  REQUIRE(uw.ok());
  for (int threads : {1, 2, 3, 5, 2, 1, 4}) {
    be.set_n_threads(threads);
    CHECK(be.n_threads() == threads);
    for (int64_t n : {1, 37}) {
      std::vector<float> x = random_floats(size_t(n * 128), uint32_t(threads));
      Guarded y(size_t(n * 200));
      REQUIRE(be.matmul(Tensor::make(DType::kF32, x.data(), {n, 128}), *uw.value(),
                        Tensor::make(DType::kF32, y.data(), {n, 200}))
                  .ok());
      CHECK(normalized_error(y.data(), reference(x, w, n, nullptr)) <= kTol);
    }
  }
}

TEST_CASE("cpu matmul and upload_weight reject bad input", "[kernels]") {
  Backend& be = *cpu_backends().front().backend;
  HostWeight w = make_weight(DType::kF32, 8, 32, 1);
  auto uw = be.upload_weight(w.tensor());
  REQUIRE(uw.ok());
  std::vector<float> x(64, 1.0f), y(64, 0.0f);

  // x columns do not match n_in; y has the wrong shape; x has the wrong dtype.
  CHECK(
      be.matmul(Tensor::make(DType::kF32, x.data(), {2, 31}), *uw.value(), Tensor::make(DType::kF32, y.data(), {2, 8}))
          .code() == StatusCode::kInvalidArgument);
  CHECK(
      be.matmul(Tensor::make(DType::kF32, x.data(), {2, 32}), *uw.value(), Tensor::make(DType::kF32, y.data(), {2, 9}))
          .code() == StatusCode::kInvalidArgument);
  CHECK(
      be.matmul(Tensor::make(DType::kF16, x.data(), {2, 32}), *uw.value(), Tensor::make(DType::kF32, y.data(), {2, 8}))
          .code() == StatusCode::kInvalidArgument);
  // y aliasing x; a null x.
  CHECK(be.matmul(Tensor::make(DType::kF32, x.data(), {1, 32}), *uw.value(),
                  Tensor::make(DType::kF32, x.data() + 4, {1, 8}))
            .code() == StatusCode::kInvalidArgument);
  CHECK(be.matmul(Tensor::make(DType::kF32, nullptr, {2, 32}), *uw.value(), Tensor::make(DType::kF32, y.data(), {2, 8}))
            .code() == StatusCode::kInvalidArgument);

  // A weight that this backend did not pack.
  struct ForeignWeight : Weight {
    int64_t n_out() const override { return 8; }
    int64_t n_in() const override { return 32; }
    DType dtype() const override { return DType::kF32; }
    size_t nbytes() const override { return 0; }
  } foreign;
  CHECK(be.matmul(Tensor::make(DType::kF32, x.data(), {2, 32}), foreign, Tensor::make(DType::kF32, y.data(), {2, 8}))
            .code() == StatusCode::kInvalidArgument);

  // upload_weight: unsupported dtype, bad rank, q8_0 rows that are not whole blocks, null data.
  std::vector<int32_t> ints(64);
  CHECK(be.upload_weight(Tensor::make(DType::kI32, ints.data(), {8, 8})).status().code() == StatusCode::kUnimplemented);
  CHECK(be.upload_weight(Tensor::make(DType::kF32, x.data(), {64})).status().code() == StatusCode::kInvalidArgument);
  CHECK(be.upload_weight(Tensor::make(DType::kQ8_0, x.data(), {1, 33})).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(be.upload_weight(Tensor::make(DType::kF32, nullptr, {8, 8})).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("cpu matmul on F32/F16/BF16 weights: every mode computes a row the same bits (mode_invariant)",
          "[kernels][batching]") {
  // The decode kernels (gemv, <= 4 rows) and the blocked GEMM (micro-kernel over k blocks of
  // 1024) must run each output as one multiply-add chain in k order that starts from y when
  // accumulating, so that the engine may put prompt and decode rows in one call. Q8_0 is the
  // exception (its gemv scales each 32-block's sum; its GEMM widens the block to f32 first).
  const DType t = GENERATE(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0);
  const int64_t n_in = GENERATE(96, 2080);  // 2080 > one k block: the GEMM's chains resume from y
  const int64_t n_out = 70, n = 40;
  CAPTURE(dtype_name(t), n_in);
  HostWeight w = make_weight(t, n_out, n_in, uint32_t(n_in));
  std::vector<float> x = random_floats(size_t(n * n_in), 21);
  const std::vector<float> y0 = random_floats(size_t(n * n_out), 22);
  const Tensor xt = Tensor::make(DType::kF32, x.data(), {n, n_in});
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    auto uw = cfg.backend->upload_weight(w.tensor());
    REQUIRE(uw.ok());
    CHECK(uw.value()->mode_invariant() == (t != DType::kQ8_0));
    for (bool acc : {false, true}) {
      CAPTURE(acc);
      std::vector<std::vector<float>> ys;  // all n rows in one call, per mode
      for (RowMode mode : {RowMode::kDecode, RowMode::kPrefill, RowMode::kAuto}) {
        ys.push_back(y0);
        REQUIRE(cfg.backend->matmul(xt, *uw.value(), Tensor::make(DType::kF32, ys.back().data(), {n, n_out}), acc,
                                    mode)
                    .ok());
      }
      // One row alone (the decode kernels) against the same row among 40 (the GEMM).
      for (int64_t r : {0, 5, 39}) {
        std::vector<float> one(y0.begin() + r * n_out, y0.begin() + (r + 1) * n_out);
        REQUIRE(cfg.backend->matmul(Tensor::make(DType::kF32, x.data() + r * n_in, {1, n_in}), *uw.value(),
                                    Tensor::make(DType::kF32, one.data(), {1, n_out}), acc, RowMode::kAuto)
                    .ok());
        if (t != DType::kQ8_0) CHECK(std::equal(one.begin(), one.end(), ys[1].begin() + r * n_out));
      }
      if (t != DType::kQ8_0) {
        CHECK(ys[0] == ys[1]);
        CHECK(ys[0] == ys[2]);
      }
    }
  }
}

}  // namespace kvb::test
