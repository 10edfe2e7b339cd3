// Differential tests of the CPU fuser ops (gelu, gate_add) against scalar double references, on
// every ISA and thread count this machine runs, with NaN-poisoned, guard-zoned outputs.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <limits>
#include <vector>

#include "kernels/cpu_test_util.h"
#include "kernels/registry.h"

namespace kvb::test {
namespace {

Tensor f32(float* p, std::initializer_list<int64_t> dims) { return Tensor::make(DType::kF32, p, dims); }

double gelu_ref(double x) { return 0.5 * x * (1.0 + std::erf(x / std::sqrt(2.0))); }

}  // namespace

TEST_CASE("cpu fuser op gelu matches the erf reference", "[kernels][fuser]") {
  struct Shape {
    int64_t rows, cols;
  };
  const Shape s = GENERATE(Shape{1, 1}, Shape{1, 7}, Shape{3, 257}, Shape{16, 1024}, Shape{100, 999}, Shape{256, 1024});
  const bool in_place = GENERATE(false, true);
  CAPTURE(s.rows, s.cols, in_place);
  const size_t n = size_t(s.rows * s.cols);
  std::vector<float> x = random_floats(n, 11, -6.0f, 6.0f);
  // The tails and the sign change, where an erf approximation is most likely to slip.
  const float specials[] = {0.0f, -0.0f, 1e-8f, -1e-8f, 0.5f,  -0.5f,  3.0f,   -3.0f,
                            5.5f, -5.5f, 9.0f,  -9.0f,  20.0f, -20.0f, 100.0f, -100.0f};
  for (size_t i = 0; i < std::size(specials) && i < n; ++i) x[i] = specials[i];
  std::vector<double> ref(n);
  for (size_t i = 0; i < n; ++i) ref[i] = gelu_ref(x[i]);

  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    Guarded xin(n), out(n);
    xin.fill(x);
    float* o = in_place ? xin.data() : out.data();
    REQUIRE(cfg.backend->gelu(f32(xin.data(), {s.rows, s.cols}), f32(o, {s.rows, s.cols})).ok());
    CHECK(normalized_error(o, ref) <= 1e-6);
    // Element-wise, relative to the value (absolute below 1e-6): the tanh approximation of GELU is
    // off by ~1e-3 here. The f32 rounding of z² in exp(-z²) grows the error in the left tail.
    double worst = 0;
    for (size_t i = 0; i < n; ++i)
      worst = std::max(worst, std::fabs(o[i] - ref[i]) / std::max(1e-6, std::fabs(ref[i])));
    CHECK(worst <= 1e-5);
    CHECK(xin.guards_intact());
    CHECK(out.guards_intact());
  }
}

TEST_CASE("cpu fuser op gelu keeps NaN and the limits", "[kernels][fuser]") {
  std::vector<float> x = {std::nanf(""), std::numeric_limits<float>::infinity(), 1e30f, -1e30f};
  std::vector<float> y(x.size(), 0.0f);
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    REQUIRE(cfg.backend->gelu(f32(x.data(), {4}), f32(y.data(), {4})).ok());
    CHECK(std::isnan(y[0]));
    CHECK(y[1] == std::numeric_limits<float>::infinity());
    CHECK(y[2] == 1e30f);
    CHECK(y[3] == 0.0f);
  }
}

TEST_CASE("cpu fuser op gate_add matches a double reference", "[kernels][fuser]") {
  struct Shape {
    int64_t n, heads, head_dim;
  };
  const Shape s = GENERATE(Shape{1, 1, 1}, Shape{1, 8, 128}, Shape{5, 2, 64}, Shape{33, 3, 7}, Shape{256, 8, 128},
                           Shape{300, 16, 64});
  enum class Alias { kNone, kReceiver, kProjected };
  const Alias alias = GENERATE(Alias::kNone, Alias::kReceiver, Alias::kProjected);
  const bool three_d = GENERATE(false, true);
  CAPTURE(s.n, s.heads, s.head_dim, int(alias), three_d);
  const int64_t row = s.heads * s.head_dim;
  const size_t n = size_t(s.n * row);
  const std::vector<float> r = random_floats(n, 21, -2.0f, 2.0f);
  const std::vector<float> p = random_floats(n, 22, -2.0f, 2.0f);
  std::vector<float> l = random_floats(size_t(s.n * s.heads), 23, -8.0f, 8.0f);
  if (l.size() > 2) {
    l[0] = -200.0f;  // weight exactly 0
    l[1] = 200.0f;   // weight exactly 1
  }
  std::vector<double> ref(n);
  for (int64_t t = 0; t < s.n; ++t) {
    for (int64_t h = 0; h < s.heads; ++h) {
      const double w = 1.0 / (1.0 + std::exp(-double(l[size_t(t * s.heads + h)])));
      for (int64_t d = 0; d < s.head_dim; ++d) {
        const size_t i = size_t(t * row + h * s.head_dim + d);
        ref[i] = double(r[i]) + w * double(p[i]);
      }
    }
  }
  auto view = [&](float* ptr) { return three_d ? f32(ptr, {s.n, s.heads, s.head_dim}) : f32(ptr, {s.n, row}); };
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    Guarded rin(n), pin(n), out(n), lin(l.size());
    rin.fill(r);
    pin.fill(p);
    lin.fill(l);
    float* o = alias == Alias::kReceiver ? rin.data() : alias == Alias::kProjected ? pin.data() : out.data();
    REQUIRE(cfg.backend->gate_add(view(rin.data()), f32(lin.data(), {s.n, s.heads}), view(pin.data()), view(o)).ok());
    CHECK(normalized_error(o, ref) <= 1e-6);
    CHECK(rin.guards_intact());
    CHECK(pin.guards_intact());
    CHECK(out.guards_intact());
    CHECK(lin.values() == l);
  }
}

TEST_CASE("cpu fuser ops reject bad shapes and dtypes with INVALID_ARGUMENT", "[kernels][fuser]") {
  Backend& be = *cpu_backends().front().backend;
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  std::vector<float> a(256, 1.0f), b(256, 1.0f), c(256, 1.0f), l(16, 0.0f);
  std::vector<uint16_t> h(256, 0);
  CHECK(be.gelu(f32(a.data(), {64}), f32(b.data(), {63})).code() == kInvalid);
  CHECK(be.gelu(Tensor::make(DType::kF16, h.data(), {64}), f32(b.data(), {64})).code() == kInvalid);
  CHECK(be.gelu(f32(a.data(), {32}), f32(a.data() + 1, {32})).code() == kInvalid);
  CHECK(be.gelu(f32(static_cast<float*>(nullptr), {32}), f32(b.data(), {32})).code() == kInvalid);
  // gate_add: 4 tokens x 2 heads x 8 dims.
  const Tensor r = f32(a.data(), {4, 16}), p = f32(b.data(), {4, 16}), o = f32(c.data(), {4, 16});
  CHECK(be.gate_add(r, f32(l.data(), {4, 2}), p, o).ok());
  CHECK(be.gate_add(r, f32(l.data(), {4, 3}), p, o).code() == kInvalid);  // 16 % 3 != 0
  CHECK(be.gate_add(r, f32(l.data(), {3, 2}), p, o).code() == kInvalid);  // token count
  CHECK(be.gate_add(r, f32(l.data(), {8}), p, o).code() == kInvalid);     // logits not 2-D
  CHECK(be.gate_add(r, f32(l.data(), {4, 2}), f32(b.data(), {4, 15}), o).code() == kInvalid);
  CHECK(be.gate_add(r, f32(l.data(), {4, 2}), p, f32(c.data(), {2, 32})).code() == kInvalid);
  CHECK(be.gate_add(r, Tensor::make(DType::kF16, h.data(), {4, 2}), p, o).code() == kInvalid);
  CHECK(be.gate_add(r, f32(l.data(), {4, 2}), p, f32(a.data() + 1, {4, 16})).code() == kInvalid);
  CHECK(be.gate_add(r, f32(l.data(), {4, 2}), p, f32(l.data(), {4, 2})).code() == kInvalid);
  CHECK(
      be.gate_add(f32(a.data(), {0, 16}), f32(l.data(), {0, 2}), f32(b.data(), {0, 16}), f32(c.data(), {0, 16})).ok());
  CHECK(cpu_device().supports_op(OpKind::kGelu, DType::kF32));
  CHECK(cpu_device().supports_op(OpKind::kGateAdd, DType::kF32));
  CHECK_FALSE(cpu_device().supports_op(OpKind::kGelu, DType::kF16));
}

}  // namespace kvb::test
