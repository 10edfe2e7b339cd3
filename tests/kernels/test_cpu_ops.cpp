// Differential tests of the CPU elementwise/row ops, embedding and convert against scalar double
// references, plus the device, buffer and validation contracts.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu_test_util.h"
#include "kernels/dtype.h"
#include "kernels/registry.h"

namespace kvb::test {
namespace {

constexpr double kTol = 1e-5;

Tensor f32(float* p, std::initializer_list<int64_t> dims) { return Tensor::make(DType::kF32, p, dims); }
Tensor f32(const float* p, std::initializer_list<int64_t> dims) { return f32(const_cast<float*>(p), dims); }

struct Rows {
  int64_t n, d;
};

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("cpu device, buffers and backend factory", "[kernels]") {
  const Device& dev = cpu_device();
  CHECK(dev.name() == "cpu");
  CHECK(dev.description().find(std::string(cpu::isa_name(cpu::detected_isa()))) != std::string::npos);
  CHECK(dev.memory().total > 0);
  CHECK(dev.memory().free <= dev.memory().total);
  CHECK(dev.supports_op(OpKind::kMatmul, DType::kQ8_0));
  CHECK(dev.supports_op(OpKind::kAttention, DType::kF16));
  CHECK_FALSE(dev.supports_op(OpKind::kAttention, DType::kQ8_0));
  CHECK_FALSE(dev.supports_op(OpKind::kMatmul, DType::kI32));

  const BufferType& bt = dev.buffer_type();
  CHECK(bt.is_host());
  CHECK(bt.alignment() == 64);
  auto buf = bt.alloc(1000);
  REQUIRE(buf.ok());
  CHECK(reinterpret_cast<uintptr_t>(buf.value()->data()) % 64 == 0);
  CHECK(buf.value()->size() == 1000);
  const char msg[] = "kvbridge";
  char back[sizeof(msg)] = {};
  CHECK(buf.value()->set(990, msg, 9).ok());
  CHECK(buf.value()->get(990, back, 9).ok());
  CHECK(std::string(back) == msg);
  CHECK(buf.value()->set(995, msg, 9).code() == StatusCode::kOutOfRange);
  CHECK(buf.value()->get(2000, back, 1).code() == StatusCode::kOutOfRange);

  auto b = dev.create_backend();
  REQUIRE(b.ok());
  CHECK(b.value()->n_threads() >= 1);
  CHECK(&b.value()->device() == &dev);
  CHECK(b.value()->synchronize().ok());
  CHECK(cpu::create_backend(cpu::Isa::kGeneric, 0).status().code() == StatusCode::kInvalidArgument);
  if (cpu::detected_isa() != cpu::Isa::kAvx512) {
    CHECK(cpu::create_backend(cpu::Isa::kAvx512, 1).status().code() == StatusCode::kInvalidArgument);
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cpu rms_norm matches a double reference", "[kernels]") {
  const Rows s = GENERATE(Rows{1, 1}, Rows{1, 768}, Rows{3, 17}, Rows{7, 100}, Rows{64, 288}, Rows{300, 129});
  const bool in_place = GENERATE(false, true);
  CAPTURE(s.n, s.d, in_place);
  const std::vector<float> x = random_floats(size_t(s.n * s.d), 1, -3.0f, 3.0f);
  const std::vector<float> w = random_floats(size_t(s.d), 2);
  const float eps = 1e-5f;
  std::vector<double> ref(x.size());
  for (int64_t i = 0; i < s.n; ++i) {
    double ss = 0;
    for (int64_t j = 0; j < s.d; ++j) ss += double(x[size_t(i * s.d + j)]) * x[size_t(i * s.d + j)];
    const double r = 1.0 / std::sqrt(ss / double(s.d) + eps);
    for (int64_t j = 0; j < s.d; ++j) ref[size_t(i * s.d + j)] = x[size_t(i * s.d + j)] * r * w[size_t(j)];
  }
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    Guarded y(x.size());
    Guarded xin(x.size());
    xin.fill(x);
    float* out = in_place ? xin.data() : y.data();
    REQUIRE(cfg.backend->rms_norm(f32(xin.data(), {s.n, s.d}), f32(w.data(), {s.d}), eps, f32(out, {s.n, s.d})).ok());
    CHECK(normalized_error(out, ref) <= kTol);
    CHECK(y.guards_intact());
    CHECK(xin.guards_intact());
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cpu rope matches a double reference (normal and NeoX, partial rotation)", "[kernels]") {
  struct RopeCase {
    int64_t n, n_heads, head_dim;
    int n_rot;
  };
  const RopeCase c = GENERATE(RopeCase{1, 1, 8, 8}, RopeCase{3, 4, 16, 16}, RopeCase{7, 2, 64, 32},
                              RopeCase{64, 12, 64, 64}, RopeCase{300, 2, 128, 128}, RopeCase{5, 3, 10, 6});
  const RopeType type = GENERATE(RopeType::kNormal, RopeType::kNeox);
  const float freq_scale = GENERATE(1.0f, 0.25f);
  const bool with_factors = GENERATE(false, true);  // per-frequency divisors (Llama 3 rope_freqs)
  CAPTURE(c.n, c.n_heads, c.head_dim, c.n_rot, int(type), freq_scale, with_factors);
  std::vector<float> factors = random_floats(size_t(c.n_rot / 2), 9, 1.0f, 32.0f);
  RopeParams p{type, c.n_rot, 10000.0f, freq_scale};
  if (with_factors) p.freq_factors = f32(factors.data(), {int64_t(factors.size())});
  const std::vector<float> x = random_floats(size_t(c.n * c.n_heads * c.head_dim), 3);
  std::vector<int32_t> pos(size_t(c.n));
  for (int64_t i = 0; i < c.n; ++i) pos[size_t(i)] = int32_t(i * 37 % 5000 + (i == 1 ? 70000 : 0));

  std::vector<double> ref(x.begin(), x.end());
  const int half = c.n_rot / 2;
  for (int64_t t = 0; t < c.n; ++t) {
    for (int64_t h = 0; h < c.n_heads; ++h) {
      double* v = ref.data() + (t * c.n_heads + h) * c.head_dim;
      for (int i = 0; i < half; ++i) {
        const double theta = double(pos[size_t(t)]) * freq_scale * std::pow(10000.0, -2.0 * i / c.n_rot) /
                             (with_factors ? double(factors[size_t(i)]) : 1.0);
        const int64_t a = type == RopeType::kNeox ? i : 2 * i;
        const int64_t b = type == RopeType::kNeox ? i + half : 2 * i + 1;
        const double x0 = v[a], x1 = v[b];
        v[a] = x0 * std::cos(theta) - x1 * std::sin(theta);
        v[b] = x0 * std::sin(theta) + x1 * std::cos(theta);
      }
    }
  }
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    Guarded y(x.size());
    y.fill(x);
    REQUIRE(
        cfg.backend->rope(f32(y.data(), {c.n, c.n_heads, c.head_dim}), Tensor::make(DType::kI32, pos.data(), {c.n}), p)
            .ok());
    CHECK(normalized_error(y.data(), ref) <= kTol);
    CHECK(y.guards_intact());
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cpu softmax matches a double reference", "[kernels]") {
  const Rows s = GENERATE(Rows{1, 1}, Rows{1, 32000}, Rows{3, 17}, Rows{7, 100}, Rows{64, 600}, Rows{300, 33});
  CAPTURE(s.n, s.d);
  std::vector<float> x = random_floats(size_t(s.n * s.d), 4, -20.0f, 20.0f);
  if (s.d > 4) x[2] = -std::numeric_limits<float>::infinity();  // a masked logit
  std::vector<double> ref(x.size());
  for (int64_t i = 0; i < s.n; ++i) {
    const float* r = x.data() + i * s.d;
    const double mx = *std::max_element(r, r + s.d);
    double sum = 0;
    for (int64_t j = 0; j < s.d; ++j) sum += std::exp(double(r[j]) - mx);
    for (int64_t j = 0; j < s.d; ++j) ref[size_t(i * s.d + j)] = std::exp(double(r[j]) - mx) / sum;
  }
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    Guarded y(x.size());
    y.fill(x);
    REQUIRE(cfg.backend->softmax(f32(y.data(), {s.n, s.d})).ok());
    CHECK(normalized_error(y.data(), ref) <= kTol);
    CHECK(y.guards_intact());
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cpu silu_mul and add match double references", "[kernels]") {
  const int64_t n = GENERATE(1, 7, 33, 768, 100003);
  const int alias = GENERATE(0, 1, 2);  // out is separate, aliases the first, or the second input
  CAPTURE(n, alias);
  const std::vector<float> g = random_floats(size_t(n), 5, -12.0f, 12.0f);
  const std::vector<float> u = random_floats(size_t(n), 6, -3.0f, 3.0f);
  std::vector<double> ref_silu(static_cast<size_t>(n)), ref_add(static_cast<size_t>(n));
  for (size_t i = 0; i < size_t(n); ++i) {
    ref_silu[i] = double(g[i]) / (1.0 + std::exp(-double(g[i]))) * u[i];
    ref_add[i] = double(g[i]) + double(u[i]);
  }
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    for (int op = 0; op < 2; ++op) {
      Guarded a(static_cast<size_t>(n)), b(static_cast<size_t>(n)), o(static_cast<size_t>(n));
      a.fill(g);
      b.fill(u);
      float* out = alias == 0 ? o.data() : alias == 1 ? a.data() : b.data();
      const Tensor ta = f32(a.data(), {n}), tb = f32(b.data(), {n}), to = f32(out, {n});
      if (op == 0) {
        REQUIRE(cfg.backend->silu_mul(ta, tb, to).ok());
        CHECK(normalized_error(out, ref_silu) <= kTol);
      } else {
        REQUIRE(cfg.backend->add(ta, tb, to).ok());
        CHECK(normalized_error(out, ref_add) <= 1e-7);
      }
      CHECK((a.guards_intact() && b.guards_intact() && o.guards_intact()));
    }
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cpu add broadcasts one row over every row (bias add)", "[kernels]") {
  const int64_t rows = GENERATE(1, 3, 300);
  const int64_t cols = GENERATE(1, 7, 64, 896);
  const bool in_place = GENERATE(false, true);
  const bool two_d = GENERATE(false, true);  // b as [cols] or [1][cols]
  CAPTURE(rows, cols, in_place, two_d);
  const std::vector<float> x = random_floats(size_t(rows * cols), 10, -4.0f, 4.0f);
  const std::vector<float> bias = random_floats(size_t(cols), 11, -1.0f, 1.0f);
  std::vector<double> ref(x.size());
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t j = 0; j < cols; ++j) ref[size_t(r * cols + j)] = double(x[size_t(r * cols + j)]) + bias[size_t(j)];
  }
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    Guarded a(x.size()), b(bias.size()), o(x.size());
    a.fill(x);
    b.fill(bias);
    float* out = in_place ? a.data() : o.data();
    const Tensor tb = two_d ? f32(b.data(), {1, cols}) : f32(b.data(), {cols});
    REQUIRE(cfg.backend->add(f32(a.data(), {rows, cols}), tb, f32(out, {rows, cols})).ok());
    CHECK(normalized_error(out, ref) <= 1e-7);
    CHECK((a.guards_intact() && b.guards_intact() && o.guards_intact()));
  }
  // The broadcast row may not be the output, nor a row of a wider b.
  Backend& be = *cpu_backends().front().backend;
  std::vector<float> a(size_t(4 * 8)), b(16);
  CHECK(be.add(f32(a.data(), {4, 8}), f32(a.data(), {8}), f32(a.data(), {4, 8})).code() ==
        StatusCode::kInvalidArgument);
  CHECK(be.add(f32(a.data(), {4, 8}), f32(b.data(), {16}), f32(a.data(), {4, 8})).code() ==
        StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cpu embedding gathers rows of every weight dtype", "[kernels]") {
  const DType t = GENERATE(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0);
  const int64_t n = GENERATE(1, 3, 300);
  CAPTURE(dtype_name(t), n);
  const int64_t vocab = 50, d = 96;
  const std::vector<float> f = random_floats(size_t(vocab * d), 8);
  std::vector<uint8_t> table(row_bytes(t, d) * size_t(vocab));
  from_f32(t, f.data(), table.data(), vocab * d);
  std::vector<float> deq(f.size());
  to_f32(t, table.data(), deq.data(), vocab * d);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int32_t((i * 7 + 3) % vocab);
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    Guarded out(size_t(n * d));
    REQUIRE(cfg.backend
                ->embedding(Tensor::make(t, table.data(), {vocab, d}), Tensor::make(DType::kI32, ids.data(), {n}),
                            f32(out.data(), {n, d}))
                .ok());
    bool same = true;
    for (int64_t i = 0; i < n; ++i) {
      same = same && std::memcmp(out.data() + i * d, deq.data() + ids[size_t(i)] * d, size_t(d) * 4) == 0;
    }
    CHECK(same);
    CHECK(out.guards_intact());

    for (int32_t bad : {-1, int32_t(vocab)}) {
      ids[0] = bad;
      CHECK(cfg.backend
                ->embedding(Tensor::make(t, table.data(), {vocab, d}), Tensor::make(DType::kI32, ids.data(), {n}),
                            f32(out.data(), {n, d}))
                .code() == StatusCode::kInvalidArgument);
      ids[0] = 3;
    }
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cpu convert matches the scalar conversions bit for bit", "[kernels]") {
  const int64_t n = GENERATE(32, 96, 1024, 100000 * 32 / 32 + 32 * 3);
  CAPTURE(n);
  std::vector<float> f = random_floats(size_t(n), 9, -70000.0f, 70000.0f);
  // Special values: zeros, subnormal halves, the f16 rounding boundary, infinities, tiny floats.
  const float specials[] = {0.0f,
                            -0.0f,
                            5.9604645e-08f,
                            2.9802322e-08f,
                            6.1035156e-05f,
                            65504.0f,
                            65520.0f,
                            std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            1e-30f,
                            1.0009765625f,
                            1.00048828125f};
  for (size_t i = 0; i < std::size(specials) && i < size_t(n); ++i) f[i] = specials[i];
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    for (DType t : {DType::kF16, DType::kBF16, DType::kQ8_0}) {
      CAPTURE(dtype_name(t));
      std::vector<uint8_t> want(row_bytes(t, n)), got(row_bytes(t, n), 0xcd);
      std::vector<float> src = f;
      if (t == DType::kQ8_0) {
        for (float& v : src) v = std::isfinite(v) ? v : 1.0f;  // q8_0 of inf is undefined
      }
      from_f32(t, src.data(), want.data(), n);
      REQUIRE(cfg.backend->convert(f32(src.data(), {n}), Tensor::make(t, got.data(), {n})).ok());
      CHECK(want == got);
      std::vector<float> back_want(static_cast<size_t>(n)), back_got(size_t(n), 1.0f);
      to_f32(t, want.data(), back_want.data(), n);
      REQUIRE(cfg.backend->convert(Tensor::make(t, want.data(), {n}), f32(back_got.data(), {n})).ok());
      CHECK(std::memcmp(back_want.data(), back_got.data(), size_t(n) * 4) == 0);
    }
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cpu ops reject bad shapes and dtypes with INVALID_ARGUMENT", "[kernels]") {
  Backend& be = *cpu_backends().back().backend;
  std::vector<float> a(64, 1.0f), b(64, 1.0f), c(64, 0.0f);
  std::vector<int32_t> ids(8, 0);
  constexpr auto kInvalid = StatusCode::kInvalidArgument;

  CHECK(be.rms_norm(f32(a.data(), {4, 16}), f32(b.data(), {15}), 1e-5f, f32(c.data(), {4, 16})).code() == kInvalid);
  CHECK(be.rms_norm(f32(a.data(), {4, 16}), f32(b.data(), {16}), 1e-5f, f32(c.data(), {2, 16})).code() == kInvalid);
  CHECK(be.rms_norm(f32(a.data(), {4, 16}), f32(b.data(), {16}), -1.0f, f32(c.data(), {4, 16})).code() == kInvalid);
  CHECK(be.rms_norm(f32(a.data(), {4, 16}), f32(b.data(), {16}), 1e-5f, f32(a.data() + 1, {4, 16})).code() == kInvalid);

  const Tensor pos = Tensor::make(DType::kI32, ids.data(), {4});
  CHECK(be.rope(f32(a.data(), {4, 2, 8}), pos, RopeParams{RopeType::kNormal, 7}).code() == kInvalid);   // odd
  CHECK(be.rope(f32(a.data(), {4, 2, 8}), pos, RopeParams{RopeType::kNormal, 10}).code() == kInvalid);  // > hd
  CHECK(be.rope(f32(a.data(), {4, 2, 8}), pos, RopeParams{RopeType::kNormal, 0}).code() == kInvalid);
  CHECK(be.rope(f32(a.data(), {4, 16}), pos, RopeParams{RopeType::kNormal, 8}).code() == kInvalid);  // not 3-d
  CHECK(be.rope(f32(a.data(), {4, 2, 8}), Tensor::make(DType::kI32, ids.data(), {3}), RopeParams{RopeType::kNormal, 8})
            .code() == kInvalid);
  CHECK(be.rope(f32(a.data(), {4, 2, 8}), f32(b.data(), {4}), RopeParams{RopeType::kNormal, 8}).code() == kInvalid);

  CHECK(be.softmax(Tensor::make(DType::kI32, ids.data(), {8})).code() == kInvalid);
  CHECK(be.softmax(f32(static_cast<float*>(nullptr), {4, 4})).code() == kInvalid);
  CHECK(be.softmax(f32(a.data(), {4, -4})).code() == kInvalid);

  CHECK(be.silu_mul(f32(a.data(), {64}), f32(b.data(), {63}), f32(c.data(), {64})).code() == kInvalid);
  CHECK(be.silu_mul(f32(a.data(), {32}), f32(b.data(), {32}), f32(a.data() + 1, {32})).code() == kInvalid);
  CHECK(be.add(f32(a.data(), {64}), Tensor::make(DType::kF16, b.data(), {64}), f32(c.data(), {64})).code() == kInvalid);
  CHECK(be.add(f32(a.data(), {8, 8}), f32(b.data(), {4, 16}), f32(c.data(), {8, 8})).code() == kInvalid);

  // embedding: out shape, table rank, a table dtype that is not a weight type.
  CHECK(
      be.embedding(f32(a.data(), {4, 16}), Tensor::make(DType::kI32, ids.data(), {2}), f32(c.data(), {3, 16})).code() ==
      kInvalid);
  CHECK(be.embedding(f32(a.data(), {64}), Tensor::make(DType::kI32, ids.data(), {2}), f32(c.data(), {2, 16})).code() ==
        kInvalid);
  CHECK(be.embedding(Tensor::make(DType::kI32, ids.data(), {2, 4}), Tensor::make(DType::kI32, ids.data(), {2}),
                     f32(c.data(), {2, 4}))
            .code() == kInvalid);

  // convert: numel mismatch, unsupported pair, q8_0 of a length that is not whole blocks, overlap.
  CHECK(be.convert(f32(a.data(), {64}), Tensor::make(DType::kF16, c.data(), {32})).code() == kInvalid);
  CHECK(be.convert(Tensor::make(DType::kF16, a.data(), {32}), Tensor::make(DType::kBF16, c.data(), {32})).code() ==
        kInvalid);
  CHECK(be.convert(f32(a.data(), {40}), Tensor::make(DType::kQ8_0, c.data(), {40})).code() == kInvalid);
  CHECK(be.convert(f32(a.data(), {32}), Tensor::make(DType::kF16, a.data() + 8, {32})).code() == kInvalid);
}

}  // namespace kvb::test
