// GGUF block weights (Q4_0 ... Q6_K) on the CPU backend, for every ISA this machine has, 1 and 2
// threads:
//   * decode (n <= 4 rows, integer kernels on 8-bit activations) against a double reference that
//     quantizes x the same way (per 32 inputs, d = amax / 127, round to nearest) and dots it with the
//     dequantized weights, and loosely against the unquantized product;
//   * prefill (n > 4, f32 micro-kernels on widened tiles) against the double product;
//   * every ISA's activation quantizer against the portable one, bit for bit;
//   * the affine form the packer reads (decode_affine) against dequantize_row, and bad shapes.
// dequantize_row itself is checked bit for bit against gguf-py by tests/python/test_quant_blocks.py.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/quant_panel.h"
#include "kernels/cpu_test_util.h"
#include "kernels/dtype.h"
#include "kernels/quants.h"

namespace kvb::test {
namespace {

// Byte offsets of a block's f16 scale fields (d, then dmin or m where the type has one).
std::vector<size_t> scale_offsets(DType t) {
  switch (t) {
    case DType::kQ4_0:
    case DType::kQ5_0:
    case DType::kQ8_0: return {0};
    case DType::kQ4_1:
    case DType::kQ5_1:
    case DType::kQ4_K:
    case DType::kQ5_K: return {0, 2};
    case DType::kQ2_K: return {80, 82};
    case DType::kQ3_K: return {108};
    case DType::kQ6_K: return {208};
    default: return {};
  }
}

// Random blocks: random quant and sub-scale bytes, f16 scales of moderate size (so that rows have
// values of order 1, as trained weights do after their scales).
std::vector<uint8_t> random_blocks(DType t, int64_t n_blocks, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> b(size_t(n_blocks) * dtype_block_bytes(t));
  for (uint8_t& v : b) v = uint8_t(rng());
  std::uniform_real_distribution<float> scale(0.002f, 0.05f);
  for (int64_t i = 0; i < n_blocks; ++i) {
    for (size_t off : scale_offsets(t)) {
      const uint16_t h = fp32_to_fp16((rng() & 1 ? -1.0f : 1.0f) * scale(rng));
      std::memcpy(b.data() + size_t(i) * dtype_block_bytes(t) + off, &h, 2);
    }
  }
  return b;
}

// x as the decode kernels see it: per 32 inputs, q = round-to-nearest-even(x * 127 / amax) and
// x ~= f16(amax / 127) * q (llama.cpp's Q8_1 activations).
std::vector<float> quantized_x(const std::vector<float>& x) {
  std::vector<float> out(x.size());
  for (size_t g = 0; g < x.size(); g += 32) {
    float amax = 0;
    for (size_t j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[g + j]));
    const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
    const float d16 = fp16_to_fp32(fp32_to_fp16(d));
    for (size_t j = 0; j < 32; ++j) out[g + j] = d16 * std::nearbyint(x[g + j] * id);
  }
  return out;
}

std::vector<double> product(const std::vector<float>& x, const std::vector<float>& w, int64_t n, int64_t n_in,
                            int64_t n_out) {
  std::vector<double> y(size_t(n * n_out));
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t o = 0; o < n_out; ++o) {
      double s = 0;
      for (int64_t k = 0; k < n_in; ++k) s += double(x[size_t(i * n_in + k)]) * double(w[size_t(o * n_in + k)]);
      y[size_t(i * n_out + o)] = s;
    }
  }
  return y;
}

constexpr DType kTypes[] = {DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1, DType::kQ2_K,
                            DType::kQ3_K, DType::kQ4_K, DType::kQ5_K, DType::kQ6_K};

}  // namespace

TEST_CASE("cpu matmul on GGUF block weights matches references for all ISAs and threads", "[kernels]") {
  const DType t = GENERATE(from_range(std::begin(kTypes), std::end(kTypes)));
  // Every n runs through the integer kernels (x quantized to int8 per 32 inputs, as llama.cpp's
  // Q8_1), in row groups of 4. n_out covers partial panels.
  const int64_t n = GENERATE(1, 2, 3, 4, 5, 64, 300);
  const int64_t n_out = GENERATE(1, 33, 96);
  const int64_t n_in = dtype_block_size(t) == 32 ? GENERATE(32, 96, 1088) : GENERATE(256, 1536);
  CAPTURE(dtype_name(t), n, n_in, n_out);

  const std::vector<uint8_t> blocks = random_blocks(t, n_out * n_in / dtype_block_size(t), uint32_t(n_in + n_out));
  std::vector<float> w(size_t(n_out * n_in));
  to_f32(t, blocks.data(), w.data(), n_out * n_in);
  std::vector<float> x = random_floats(size_t(n * n_in), uint32_t(n));
  const std::vector<double> exact = product(x, w, n, n_in, n_out);
  const std::vector<double> ref = product(quantized_x(x), w, n, n_in, n_out);
  const Tensor xt = Tensor::make(DType::kF32, x.data(), {n, n_in});

  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    auto uw = cfg.backend->upload_weight(Tensor::make(t, const_cast<uint8_t*>(blocks.data()), {n_out, n_in}));
    REQUIRE(uw.ok());
    REQUIRE(uw.value()->dtype() == t);
    Guarded y(size_t(n * n_out));
    REQUIRE(cfg.backend->matmul(xt, *uw.value(), Tensor::make(DType::kF32, y.data(), {n, n_out})).ok());
    // f32 accumulation in another order (and Q6_K's s * q + m, see below) against double: a single
    // output of cancelling terms is the worst case.
    CHECK(normalized_error(y.data(), ref) <= 5e-5);
    // A sanity bound on the 8-bit activations: a few % of the output scale for a lone output.
    CHECK(normalized_error(y.data(), exact) <= (n_out == 1 ? 0.1 : 2e-2));
    CHECK(y.guards_intact());

    // accumulate adds to y.
    std::vector<float> y0 = random_floats(size_t(n * n_out), 3);
    y.fill(y0);
    const MatmulOut out{uw.value().get(), Tensor::make(DType::kF32, y.data(), {n, n_out}), true};
    REQUIRE(cfg.backend->matmul(xt, std::span<const MatmulOut>(&out, 1)).ok());
    std::vector<double> ref_acc = ref;
    for (size_t i = 0; i < ref_acc.size(); ++i) ref_acc[i] += y0[i];
    CHECK(normalized_error(y.data(), ref_acc) <= 5e-5);
  }
}

TEST_CASE("GGUF block weights share a dispatch with other dtypes", "[kernels]") {
  const int64_t n = GENERATE(1, 4, 40);
  const int64_t n_in = 512;
  CAPTURE(n);
  struct W {
    DType t;
    int64_t n_out;
    std::vector<uint8_t> bytes;
    std::vector<float> f;
  };
  std::vector<W> ws = {{DType::kQ4_K, 64, {}, {}}, {DType::kF16, 40, {}, {}}, {DType::kQ6_K, 35, {}, {}},
                       {DType::kQ5_0, 32, {}, {}}};
  for (W& w : ws) {
    if (w.t == DType::kF16) {
      const std::vector<float> f = random_floats(size_t(w.n_out * n_in), 9);
      w.bytes.resize(size_t(w.n_out * n_in) * 2);
      from_f32(w.t, f.data(), w.bytes.data(), w.n_out * n_in);
    } else {
      w.bytes = random_blocks(w.t, w.n_out * n_in / dtype_block_size(w.t), uint32_t(w.n_out));
    }
    w.f.resize(size_t(w.n_out * n_in));
    to_f32(w.t, w.bytes.data(), w.f.data(), w.n_out * n_in);
  }
  std::vector<float> x = random_floats(size_t(n * n_in), 5);
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    std::vector<std::unique_ptr<Weight>> uws;
    std::vector<Guarded> ys;
    std::vector<MatmulOut> outs;
    for (W& w : ws) {
      auto uw = cfg.backend->upload_weight(Tensor::make(w.t, w.bytes.data(), {w.n_out, n_in}));
      REQUIRE(uw.ok());
      uws.push_back(std::move(uw).value());
      ys.emplace_back(size_t(n * w.n_out));
    }
    for (size_t i = 0; i < ws.size(); ++i) {
      outs.push_back({uws[i].get(), Tensor::make(DType::kF32, ys[i].data(), {n, ws[i].n_out}), false});
    }
    REQUIRE(cfg.backend->matmul(Tensor::make(DType::kF32, x.data(), {n, n_in}), outs).ok());
    for (size_t i = 0; i < ws.size(); ++i) {
      CAPTURE(dtype_name(ws[i].t));
      // F16 sees the f32 x; block weights see 8-bit x at every n.
      const bool q8x = ws[i].t != DType::kF16;
      const auto ref = product(q8x ? quantized_x(x) : x, ws[i].f, n, n_in, ws[i].n_out);
      CHECK(normalized_error(ys[i].data(), ref) <= 1e-5);
    }
  }
}

TEST_CASE("decode_affine reproduces dequantize_row", "[kernels]") {
  const DType t = GENERATE(from_range(std::begin(kTypes), std::end(kTypes)));
  CAPTURE(dtype_name(t));
  const int bs = dtype_block_size(t);
  const std::vector<uint8_t> blocks = random_blocks(t, 64, 17);
  std::vector<float> ref(size_t(64 * bs));
  dequantize_row(t, blocks.data(), ref.data(), 64 * bs);
  for (int b = 0; b < 64; ++b) {
    uint8_t q[kQKK];
    float s[kQKK / kAffineSub], m[kQKK / kAffineSub];
    decode_affine(t, blocks.data() + size_t(b) * dtype_block_bytes(t), q, s, m);
    for (int i = 0; i < bs; ++i) {
      REQUIRE(q[i] < (1 << affine_bits(t)));
      const float v = s[i / kAffineSub] * float(q[i]) + m[i / kAffineSub];
      const float r = ref[size_t(b * bs + i)];
      // Exact, except where Q6_K's s * q needs more than 24 bits: then one rounding of s * q apart.
      CHECK(std::fabs(v - r) <= (t == DType::kQ6_K ? std::fabs(s[i / kAffineSub]) * 64 * 6e-8f : 0.0f));
    }
  }
}

TEST_CASE("GGUF block weights with rows that are not whole blocks are refused", "[kernels]") {
  Backend& be = *cpu_backends().front().backend;
  std::vector<uint8_t> bytes(4096);
  for (DType t : kTypes) {
    CAPTURE(dtype_name(t));
    const int64_t bad_in = dtype_block_size(t) + 16;
    auto r = be.upload_weight(Tensor::make(t, bytes.data(), {2, bad_in}));
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
  }
}

}  // namespace kvb::test

namespace kvb::test {

// RowMode (kernels/backend.h): with kDecode or kPrefill a row's result does not depend on the rows
// beside it, bit for bit — what lets the engine batch many sequences' rows (ModelRunner::
// forward_batch) without changing any sequence's numbers.
TEST_CASE("matmul RowMode: a row's bits do not depend on the rows beside it", "[kernels][batching]") {
  std::vector<DType> types(std::begin(kTypes), std::end(kTypes));
  for (DType t : {DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0}) types.push_back(t);
  const DType t = GENERATE_COPY(from_range(types));
  const int64_t n_in = dtype_block_size(t) == 256 ? 512 : 96, n_out = 70, n = 11;
  CAPTURE(dtype_name(t));
  std::vector<uint8_t> bytes;
  if (dtype_block_size(t) > 1 && t != DType::kQ8_0) {
    bytes = random_blocks(t, n_out * n_in / dtype_block_size(t), 5);
  } else {
    const std::vector<float> f = random_floats(size_t(n_out * n_in), 5);
    bytes.resize(row_bytes(t, n_in) * size_t(n_out));
    from_f32(t, f.data(), bytes.data(), n_out * n_in);
  }
  const std::vector<float> x = random_floats(size_t(n * n_in), 6);
  const std::vector<float> y0 = random_floats(size_t(n * n_out), 7);
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    auto w = cfg.backend->upload_weight(Tensor::make(t, bytes.data(), {n_out, n_in}));
    REQUIRE(w.ok());
    for (RowMode mode : {RowMode::kDecode, RowMode::kPrefill}) {
      for (bool acc : {false, true}) {
        CAPTURE(int(mode), acc);
        // All rows in one call, then rows [r0, r0 + m) alone for several splits.
        std::vector<float> all = y0;
        const MatmulOut o{w.value().get(), Tensor::make(DType::kF32, all.data(), {n, n_out}), acc};
        REQUIRE(cfg.backend->matmul(Tensor::make(DType::kF32, const_cast<float*>(x.data()), {n, n_in}),
                                    std::span<const MatmulOut>(&o, 1), mode)
                    .ok());
        for (auto [r0, m] : {std::pair<int64_t, int64_t>{0, 1}, {3, 1}, {1, 2}, {4, 3}, {2, 5}, {10, 1}}) {
          CAPTURE(r0, m);
          std::vector<float> part(y0.begin() + r0 * n_out, y0.begin() + (r0 + m) * n_out);
          const MatmulOut po{w.value().get(), Tensor::make(DType::kF32, part.data(), {m, n_out}), acc};
          REQUIRE(cfg.backend->matmul(Tensor::make(DType::kF32, const_cast<float*>(x.data()) + r0 * n_in, {m, n_in}),
                                      std::span<const MatmulOut>(&po, 1), mode)
                      .ok());
          CHECK(std::memcmp(part.data(), all.data() + r0 * n_out, part.size() * 4) == 0);
        }
      }
    }
  }
}

TEST_CASE("matmul on GGUF block weights: every mode computes a row the same bits (mode_invariant)",
          "[kernels][batching]") {
  const DType t = GENERATE_COPY(from_range(std::vector<DType>(std::begin(kTypes), std::end(kTypes))));
  const int64_t n_in = dtype_block_size(t) == 256 ? 512 : 96, n_out = 70, n = 40;
  CAPTURE(dtype_name(t));
  std::vector<uint8_t> bytes = random_blocks(t, n_out * n_in / dtype_block_size(t), 8);
  const std::vector<uint8_t> q8w = random_blocks(DType::kQ8_0, n_out * n_in / kQ8BlockSize, 9);
  const std::vector<float> x = random_floats(size_t(n * n_in), 10);
  for (const BackendConfig& cfg : cpu_backends()) {
    CAPTURE(cfg.label);
    auto w = cfg.backend->upload_weight(Tensor::make(t, bytes.data(), {n_out, n_in}));
    auto wf = cfg.backend->upload_weight(Tensor::make(DType::kQ8_0, const_cast<uint8_t*>(q8w.data()), {n_out, n_in}));
    REQUIRE(w.ok());
    REQUIRE(wf.ok());
    CHECK((*w)->mode_invariant());
    CHECK_FALSE((*wf)->mode_invariant());
    const Tensor xt = Tensor::make(DType::kF32, const_cast<float*>(x.data()), {n, n_in});
    std::vector<std::vector<float>> ys;
    for (RowMode mode : {RowMode::kDecode, RowMode::kPrefill, RowMode::kAuto}) {
      ys.emplace_back(size_t(n * n_out));
      REQUIRE(cfg.backend->matmul(xt, **w, Tensor::make(DType::kF32, ys.back().data(), {n, n_out}), false, mode).ok());
    }
    CHECK(ys[0] == ys[1]);
    CHECK(ys[0] == ys[2]);
    // With a Q8_0 weight (not mode invariant) in the same call, each output is what its own call gives.
    std::vector<float> q_both(size_t(n * n_out)), f_both(size_t(n * n_out)), f_alone(size_t(n * n_out));
    const MatmulOut both[] = {{w->get(), Tensor::make(DType::kF32, q_both.data(), {n, n_out}), false},
                              {wf->get(), Tensor::make(DType::kF32, f_both.data(), {n, n_out}), false}};
    REQUIRE(cfg.backend->matmul(xt, both, RowMode::kPrefill).ok());
    REQUIRE(cfg.backend->matmul(xt, **wf, Tensor::make(DType::kF32, f_alone.data(), {n, n_out}), false,
                                RowMode::kPrefill)
                .ok());
    CHECK(q_both == ys[0]);
    CHECK(f_both == f_alone);
  }
}

TEST_CASE("every ISA quantizes activations to the bits of the portable quantize_rows", "[kernels]") {
  // Rows of ordinary values, tiny values (f16 scales in the subnormal range), an all-zero group, exact
  // halves after scaling (ties must round to even), and a row read with a stride (ldx > k).
  constexpr int kRows = 5;
  constexpr int64_t kK = 192, kLdx = 200;
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(kRows * kLdx));
  for (float& v : x) v = normal(rng);
  for (int64_t j = 0; j < kK; ++j) x[size_t(kLdx + j)] *= 1e-6f;
  for (int64_t j = 0; j < 32; ++j) x[size_t(2 * kLdx + j)] = 0.0f;
  for (int64_t j = 0; j < 32; ++j) x[size_t(3 * kLdx + j)] = j == 0 ? 127.0f : float(j % 9) - 4.5f;  // inv = 1
  const size_t bytes = cpu::quantized_rows_bytes(kRows, kK);
  std::vector<uint8_t> want_buf(bytes + 64), got_buf(bytes + 64);
  const auto aligned = [](std::vector<uint8_t>& b) {
    return reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(b.data()) + 63) / 64 * 64);
  };
  const cpu::QuantizedRows want = cpu::quantize_rows(x.data(), kLdx, kRows, kK, aligned(want_buf));
  for (cpu::Isa isa : {cpu::Isa::kGeneric, cpu::Isa::kAvx2, cpu::Isa::kAvx512}) {
    if (int(isa) > int(cpu::detected_isa())) continue;
    const cpu::QuantKernels& kern = cpu::quant_kernels_for(isa);
    INFO(kern.name);
    std::fill(got_buf.begin(), got_buf.end(), uint8_t(0xAB));
    const cpu::QuantizedRows got = kern.quantize(x.data(), kLdx, kRows, kK, aligned(got_buf));
    CHECK(std::memcmp(got.q, want.q, size_t(kRows * kK)) == 0);
    CHECK(std::memcmp(got.d, want.d, size_t(kRows * kK / 32) * sizeof(float)) == 0);
    CHECK(std::memcmp(got.sum16, want.sum16, size_t(kRows * kK / 16) * sizeof(float)) == 0);
  }
  // The ties really were ties, and rounded to even: -4.5 -> -4, -3.5 -> -4, 0.5 -> 0, 1.5 -> 2.
  const int8_t* q3 = want.q + 3 * kK;
  CHECK(int(q3[0]) == 127);
  CHECK(int(q3[9]) == -4);
  CHECK(int(q3[1]) == -4);
  CHECK(int(q3[5]) == 0);
  CHECK(int(q3[6]) == 2);
}

}  // namespace kvb::test
