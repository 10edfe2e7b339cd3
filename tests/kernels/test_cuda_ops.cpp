// Differential tests of the CUDA backend (kernels/cuda) against its CPU twin: every op on random
// inputs of many shapes and dtypes, outputs NaN-poisoned and fenced by guard bytes, errors
// normalized by max|ref| (f32 ops 1e-5; GEMMs with 16-bit activations 2e-3 for f16, 1e-2 for
// bf16); conversions bit for bit against kernels/dtype.cpp.
//
// [gpu] cases start with gpu(): without a usable GPU it prints one line and exits with 77, which
// CTest reports as Skipped. The registry case has no [gpu] tag: it runs everywhere and checks
// what discovery says about this machine.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu_test_util.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/dtype.h"
#include "kernels/registry.h"

namespace kvb::test {
namespace {

// The CUDA backend on cuda:0, or exit(77) (Skipped) when this machine has no usable GPU.
Backend& gpu() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    std::printf("no CUDA device: %s; skipping\n",
                e != cudaSuccess ? cudaGetErrorString(e) : "the driver reports no GPU");
    std::fflush(stdout);
    std::exit(77);
  }
  static std::unique_ptr<Backend> backend = [] {
    auto d = find_device("cuda:0");
    if (!d.ok()) {  // e.g. a GPU older than sm_80
      std::printf("no CUDA device: %s; skipping\n", d.status().to_string().c_str());
      std::fflush(stdout);
      std::exit(77);
    }
    auto b = d.value()->create_backend();
    REQUIRE(b.ok());
    return std::move(b).value();
  }();
  return *backend;
}

// The reference: the CPU backend at this machine's best ISA.
Backend& cpu() { return *cpu_backends().back().backend; }

// A device tensor inside a larger buffer, fenced by guard bytes on both sides. The body starts
// poisoned (f32: NaN; other types: 0xff bytes) unless filled.
class GpuTensor {
 public:
  GpuTensor(Backend& g, DType dt, std::initializer_list<int64_t> dims) : t_(Tensor::make(dt, nullptr, dims)) {
    bytes_ = t_.nbytes();
    auto b = g.device().buffer_type().alloc(bytes_ + 2 * kGuard);
    REQUIRE(b.ok());
    buf_ = std::move(b).value();
    std::vector<uint8_t> init(bytes_ + 2 * kGuard, kGuardByte);
    if (dt == DType::kF32) {
      const float nan = std::numeric_limits<float>::quiet_NaN();
      for (size_t i = 0; i < bytes_ / 4; ++i) std::memcpy(init.data() + kGuard + 4 * i, &nan, 4);
    } else {
      std::fill(init.begin() + kGuard, init.begin() + ptrdiff_t(kGuard + bytes_), uint8_t(0xff));
    }
    REQUIRE(buf_->set(0, init.data(), init.size()).ok());
    t_.data = static_cast<char*>(buf_->data()) + kGuard;
  }
  GpuTensor(Backend& g, DType dt, std::initializer_list<int64_t> dims, const void* host) : GpuTensor(g, dt, dims) {
    REQUIRE(buf_->set(kGuard, host, bytes_).ok());
  }

  const Tensor& t() const { return t_; }
  // The body's bytes (after synchronizing the backend `g`).
  std::vector<uint8_t> bytes(Backend& g) const {
    REQUIRE(g.synchronize().ok());
    std::vector<uint8_t> out(bytes_);
    REQUIRE(buf_->get(kGuard, out.data(), bytes_).ok());
    return out;
  }
  template <class T>
  std::vector<T> values(Backend& g) const {
    const std::vector<uint8_t> b = bytes(g);
    std::vector<T> out(b.size() / sizeof(T));
    std::memcpy(out.data(), b.data(), out.size() * sizeof(T));
    return out;
  }
  bool guards_intact() const {
    std::vector<uint8_t> all(bytes_ + 2 * kGuard);
    REQUIRE(buf_->get(0, all.data(), all.size()).ok());
    for (size_t i = 0; i < kGuard; ++i) {
      if (all[i] != kGuardByte || all[kGuard + bytes_ + i] != kGuardByte) return false;
    }
    return true;
  }

 private:
  static constexpr size_t kGuard = 256;  // keeps the body 256-byte aligned
  static constexpr uint8_t kGuardByte = 0xa5;
  Tensor t_;
  size_t bytes_ = 0;
  std::unique_ptr<Buffer> buf_;
};

std::vector<double> as_double(const std::vector<float>& v) { return {v.begin(), v.end()}; }

Tensor host(DType dt, const void* p, std::initializer_list<int64_t> dims) {
  return Tensor::make(dt, const_cast<void*>(p), dims);
}

// Random values of type t: the encoded bytes and the f32 values they decode to.
struct Encoded {
  std::vector<uint8_t> bytes;
  std::vector<float> values;
};
Encoded random_encoded(DType t, size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  Encoded e{{}, random_floats(n, seed, lo, hi)};
  e.bytes.resize(row_bytes(t, int64_t(n)));
  from_f32(t, e.values.data(), e.bytes.data(), int64_t(n));
  to_f32(t, e.bytes.data(), e.values.data(), int64_t(n));
  return e;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda registry agrees with the driver (no GPU: unavailable, empty list)", "[kernels][cuda]") {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  const cuda::Discovery& found = cuda::discover();
  auto d0 = find_device("cuda:0");
  if (e != cudaSuccess || n == 0) {
    INFO("cudaGetDeviceCount: " << cudaGetErrorString(e) << ", " << n << " devices");
    CHECK(found.devices.empty());
    CHECK_FALSE(found.problem.empty());
    CHECK(available_devices().size() == 1);
    REQUIRE_FALSE(d0.ok());
    CHECK((d0.status().code() == StatusCode::kUnavailable || d0.status().code() == StatusCode::kNotFound));
    CHECK(d0.status().message().find("cuda:0") != std::string::npos);
    if (e != cudaSuccess) CHECK(d0.status().message().find(cudaGetErrorString(e)) != std::string::npos);
    CHECK(find_device("cuda").status().code() == d0.status().code());
    CHECK(find_device("cuda:3").status().code() == d0.status().code());
  } else {
    CHECK(available_devices().size() == 1 + found.devices.size());
    for (const Device* d : found.devices) {
      auto f = find_device(d->name());
      REQUIRE(f.ok());
      CHECK(f.value() == d);
      CHECK(cuda::host_buffer_type(*d) != nullptr);
    }
    CHECK(find_device("cuda:999").status().code() == StatusCode::kNotFound);
  }
  CHECK(cuda::host_buffer_type(cpu_device()) == nullptr);
  CHECK(find_device("cuda:x").status().code() == StatusCode::kNotFound);
  CHECK(find_device("cuda:").status().code() == StatusCode::kNotFound);
  CHECK(find_device("cuda:-1").status().code() == StatusCode::kNotFound);
  CHECK(find_device("cpu").ok());
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda device, buffers and stream copies", "[gpu][cuda]") {
  Backend& g = gpu();
  const Device& dev = g.device();
  CHECK(dev.name() == "cuda:0");
  CHECK_FALSE(dev.description().empty());
  CHECK(dev.memory().total > 0);
  CHECK(dev.memory().free <= dev.memory().total);
  CHECK(dev.supports_op(OpKind::kMatmul, DType::kQ8_0));
  CHECK(dev.supports_op(OpKind::kAttention, DType::kF16));
  CHECK_FALSE(dev.supports_op(OpKind::kAttention, DType::kQ8_0));
  CHECK_FALSE(dev.supports_op(OpKind::kRmsNorm, DType::kF16));
  CHECK(g.n_threads() == 1);

  const BufferType& bt = dev.buffer_type();
  CHECK_FALSE(bt.is_host());
  auto buf = bt.alloc(1000);
  REQUIRE(buf.ok());
  CHECK(reinterpret_cast<uintptr_t>(buf.value()->data()) % bt.alignment() == 0);
  CHECK(buf.value()->size() == 1000);
  CHECK_FALSE(buf.value()->is_host());
  const char msg[] = "kvbridge";
  char back[sizeof(msg)] = {};
  CHECK(buf.value()->set(990, msg, 9).ok());
  CHECK(buf.value()->get(990, back, 9).ok());
  CHECK(std::string(back) == msg);
  CHECK(buf.value()->set(995, msg, 9).code() == StatusCode::kOutOfRange);
  CHECK(buf.value()->get(2000, back, 1).code() == StatusCode::kOutOfRange);

  // host → device → device → pinned host → host, all on the stream.
  const BufferType* pinned_t = cuda::host_buffer_type(dev);
  REQUIRE(pinned_t != nullptr);
  CHECK(pinned_t->is_host());
  auto pinned = pinned_t->alloc(4096);
  REQUIRE(pinned.ok());
  CHECK(pinned.value()->is_host());
  auto other = bt.alloc(4096);
  REQUIRE(other.ok());
  std::vector<uint8_t> src(4096);
  for (size_t i = 0; i < src.size(); ++i) src[i] = uint8_t(i * 7 + 3);
  auto a = bt.alloc(4096);
  REQUIRE(a.ok());
  REQUIRE(g.copy_from_host(a.value()->data(), src.data(), src.size()).ok());
  REQUIRE(g.copy(other.value()->data(), a.value()->data(), src.size()).ok());
  REQUIRE(g.copy_to_host(pinned.value()->data(), other.value()->data(), src.size()).ok());
  REQUIRE(g.synchronize().ok());
  CHECK(std::memcmp(pinned.value()->data(), src.data(), src.size()) == 0);
  CHECK(g.copy(nullptr, src.data(), 4).code() == StatusCode::kInvalidArgument);

  auto b2 = dev.create_backend();  // a second stream on the same device
  REQUIRE(b2.ok());
  CHECK(&b2.value()->device() == &dev);
  CHECK(b2.value()->synchronize().ok());
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda rms_norm matches the cpu backend", "[gpu][cuda]") {
  Backend& g = gpu();
  struct Rows {
    int64_t n, d;
  };
  const Rows s = GENERATE(Rows{1, 1}, Rows{1, 768}, Rows{3, 17}, Rows{7, 100}, Rows{64, 288}, Rows{300, 129},
                          Rows{5, 8192});
  const bool in_place = GENERATE(false, true);
  CAPTURE(s.n, s.d, in_place);
  const std::vector<float> x = random_floats(size_t(s.n * s.d), 1, -3.0f, 3.0f);
  const std::vector<float> w = random_floats(size_t(s.d), 2);
  std::vector<float> ref(x.size());
  REQUIRE(cpu().rms_norm(host(DType::kF32, x.data(), {s.n, s.d}), host(DType::kF32, w.data(), {s.d}), 1e-5f,
                         host(DType::kF32, ref.data(), {s.n, s.d}))
              .ok());

  GpuTensor gx(g, DType::kF32, {s.n, s.d}, x.data()), gw(g, DType::kF32, {s.d}, w.data()), gy(g, DType::kF32, {s.n, s.d});
  const GpuTensor& out = in_place ? gx : gy;
  REQUIRE(g.rms_norm(gx.t(), gw.t(), 1e-5f, out.t()).ok());
  CHECK(normalized_error(out.values<float>(g).data(), as_double(ref)) <= 1e-5);
  CHECK(out.guards_intact());
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda rope matches the cpu backend (normal and NeoX, partial rotation)", "[gpu][cuda]") {
  Backend& g = gpu();
  struct RopeCase {
    int64_t n, n_heads, head_dim;
    int n_rot;
  };
  const RopeCase c = GENERATE(RopeCase{1, 1, 8, 8}, RopeCase{3, 4, 16, 16}, RopeCase{7, 2, 64, 32},
                              RopeCase{64, 12, 64, 64}, RopeCase{300, 2, 128, 128}, RopeCase{5, 3, 10, 6},
                              RopeCase{700, 4, 128, 128});
  const RopeType type = GENERATE(RopeType::kNormal, RopeType::kNeox);
  const float freq_scale = GENERATE(1.0f, 0.25f);
  const bool with_factors = GENERATE(false, true);  // per-frequency divisors (Llama 3 rope_freqs)
  CAPTURE(c.n, c.n_heads, c.head_dim, c.n_rot, int(type), freq_scale, with_factors);
  std::vector<float> factors = random_floats(size_t(c.n_rot / 2), 9, 1.0f, 32.0f);
  RopeParams p{type, c.n_rot, 10000.0f, freq_scale};
  if (with_factors) p.freq_factors = host(DType::kF32, factors.data(), {int64_t(factors.size())});
  std::vector<float> ref = random_floats(size_t(c.n * c.n_heads * c.head_dim), 3);
  const std::vector<float> x = ref;
  std::vector<int32_t> pos(size_t(c.n));
  for (int64_t i = 0; i < c.n; ++i) pos[size_t(i)] = int32_t(i < c.n / 2 ? 100000 + i : i * 37 % 5000);  // runs and jumps
  REQUIRE(cpu().rope(host(DType::kF32, ref.data(), {c.n, c.n_heads, c.head_dim}), host(DType::kI32, pos.data(), {c.n}),
                     p)
              .ok());

  GpuTensor gx(g, DType::kF32, {c.n, c.n_heads, c.head_dim}, x.data()), gp(g, DType::kI32, {c.n}, pos.data());
  GpuTensor gf(g, DType::kF32, {int64_t(factors.size())}, factors.data());
  if (with_factors) p.freq_factors = gf.t();
  REQUIRE(g.rope(gx.t(), gp.t(), p).ok());
  CHECK(normalized_error(gx.values<float>(g).data(), as_double(ref)) <= 1e-5);
  CHECK(gx.guards_intact());
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda softmax matches the cpu backend (masked logits, masked rows)", "[gpu][cuda]") {
  Backend& g = gpu();
  struct Rows {
    int64_t n, d;
  };
  const Rows s = GENERATE(Rows{1, 1}, Rows{1, 32000}, Rows{3, 17}, Rows{7, 100}, Rows{64, 600}, Rows{300, 33});
  CAPTURE(s.n, s.d);
  std::vector<float> x = random_floats(size_t(s.n * s.d), 4, -20.0f, 20.0f);
  if (s.d > 4) x[2] = -std::numeric_limits<float>::infinity();
  if (s.n > 2) std::fill(x.begin() + s.d, x.begin() + 2 * s.d, -std::numeric_limits<float>::infinity());  // row 1
  std::vector<float> ref = x;
  REQUIRE(cpu().softmax(host(DType::kF32, ref.data(), {s.n, s.d})).ok());

  GpuTensor gx(g, DType::kF32, {s.n, s.d}, x.data());
  REQUIRE(g.softmax(gx.t()).ok());
  CHECK(normalized_error(gx.values<float>(g).data(), as_double(ref)) <= 1e-5);
  CHECK(gx.guards_intact());
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda elementwise ops (add, silu_mul, gelu, gate_add) match the cpu backend", "[gpu][cuda]") {
  Backend& g = gpu();
  const int64_t rows = GENERATE(1, 3, 300);
  const int64_t cols = GENERATE(1, 7, 128, 1000);
  const int alias = GENERATE(0, 1, 2);  // out separate, or aliasing the first / second input
  CAPTURE(rows, cols, alias);
  const std::vector<float> a = random_floats(size_t(rows * cols), 5, -6.0f, 6.0f);
  const std::vector<float> b = random_floats(size_t(rows * cols), 6, -6.0f, 6.0f);
  const auto dims = {rows, cols};

  auto check_binary = [&](const char* name, auto&& op) {
    INFO(name);
    std::vector<float> ref(a.size());
    REQUIRE(op(cpu(), host(DType::kF32, a.data(), dims), host(DType::kF32, b.data(), dims),
               host(DType::kF32, ref.data(), dims))
                .ok());
    GpuTensor ga(g, DType::kF32, dims, a.data()), gb(g, DType::kF32, dims, b.data()), go(g, DType::kF32, dims);
    const GpuTensor& out = alias == 1 ? ga : (alias == 2 ? gb : go);
    REQUIRE(op(g, ga.t(), gb.t(), out.t()).ok());
    CHECK(normalized_error(out.values<float>(g).data(), as_double(ref)) <= 1e-5);
    CHECK(out.guards_intact());
  };
  check_binary("add", [](Backend& be, const Tensor& x, const Tensor& y, const Tensor& o) { return be.add(x, y, o); });
  if (alias != 2) {
    // add with b one row broadcast over a's rows (a bias); out may alias a but not b.
    INFO("add, broadcast row");
    std::vector<float> ref(a.size());
    REQUIRE(cpu().add(host(DType::kF32, a.data(), dims), host(DType::kF32, b.data(), {cols}),
                      host(DType::kF32, ref.data(), dims))
                .ok());
    GpuTensor ga(g, DType::kF32, dims, a.data()), gb(g, DType::kF32, {cols}, b.data()), go(g, DType::kF32, dims);
    const GpuTensor& out = alias == 1 ? ga : go;
    REQUIRE(g.add(ga.t(), gb.t(), out.t()).ok());
    CHECK(normalized_error(out.values<float>(g).data(), as_double(ref)) <= 1e-5);
    CHECK((out.guards_intact() && gb.guards_intact()));
  }
  check_binary("silu_mul",
               [](Backend& be, const Tensor& x, const Tensor& y, const Tensor& o) { return be.silu_mul(x, y, o); });

  {
    INFO("gelu");
    std::vector<float> ref(a.size());
    REQUIRE(cpu().gelu(host(DType::kF32, a.data(), dims), host(DType::kF32, ref.data(), dims)).ok());
    GpuTensor ga(g, DType::kF32, dims, a.data()), go(g, DType::kF32, dims);
    const GpuTensor& out = alias != 0 ? ga : go;
    REQUIRE(g.gelu(ga.t(), out.t()).ok());
    CHECK(normalized_error(out.values<float>(g).data(), as_double(ref)) <= 1e-5);
    CHECK(out.guards_intact());
  }
  if (cols % 2 == 0 || cols == 7) {
    // gate_add over H heads: 2 heads of cols/2 (or 7 heads of 1).
    INFO("gate_add");
    const int64_t h = cols % 2 == 0 ? 2 : 7;
    const std::vector<float> logits = random_floats(size_t(rows * h), 7, -8.0f, 8.0f);
    std::vector<float> ref(a.size());
    REQUIRE(cpu().gate_add(host(DType::kF32, a.data(), dims), host(DType::kF32, logits.data(), {rows, h}),
                           host(DType::kF32, b.data(), dims), host(DType::kF32, ref.data(), dims))
                .ok());
    GpuTensor ga(g, DType::kF32, dims, a.data()), gl(g, DType::kF32, {rows, h}, logits.data()),
        gb(g, DType::kF32, dims, b.data()), go(g, DType::kF32, dims);
    const GpuTensor& out = alias == 1 ? ga : (alias == 2 ? gb : go);
    REQUIRE(g.gate_add(ga.t(), gl.t(), gb.t(), out.t()).ok());
    CHECK(normalized_error(out.values<float>(g).data(), as_double(ref)) <= 1e-5);
    CHECK(out.guards_intact());
  }
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda embedding gathers rows of every weight dtype", "[gpu][cuda]") {
  Backend& g = gpu();
  const DType t = GENERATE(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0);
  const int64_t n = GENERATE(1, 3, 300);
  const int64_t vocab = 257, d = 96;
  CAPTURE(dtype_name(t), n);
  const Encoded table = random_encoded(t, size_t(vocab * d), 8);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int32_t((i * 101 + 7) % vocab);
  ids[0] = int32_t(vocab - 1);

  GpuTensor gt(g, t, {vocab, d}, table.bytes.data()), gi(g, DType::kI32, {n}, ids.data()), go(g, DType::kF32, {n, d});
  REQUIRE(g.embedding(gt.t(), gi.t(), go.t()).ok());
  const std::vector<float> out = go.values<float>(g);
  for (int64_t i = 0; i < n; ++i) {
    INFO("row " << i);
    CHECK(std::memcmp(out.data() + i * d, table.values.data() + ids[size_t(i)] * d, size_t(d) * 4) == 0);
  }
  CHECK(go.guards_intact());
}

TEST_CASE("cuda embedding reports an out-of-range id at synchronize", "[gpu][cuda]") {
  Backend& g = gpu();
  const int64_t vocab = 10, d = 32;
  const std::vector<float> table = random_floats(size_t(vocab * d), 9);
  const std::vector<int32_t> ids = {1, int32_t(vocab + 5), 2};
  GpuTensor gt(g, DType::kF32, {vocab, d}, table.data()), gi(g, DType::kI32, {3}, ids.data()),
      go(g, DType::kF32, {3, d});
  REQUIRE(g.embedding(gt.t(), gi.t(), go.t()).ok());  // ids are only visible on the device
  const Status st = g.synchronize();
  CHECK(st.code() == StatusCode::kInvalidArgument);
  CHECK(st.message().find("token id 15 at 1") != std::string::npos);
  CHECK(g.synchronize().ok());  // reported once
  std::vector<float> out(size_t(3 * d));
  REQUIRE(g.copy_to_host(out.data(), go.t().data, out.size() * 4).ok());
  REQUIRE(g.synchronize().ok());
  CHECK(std::all_of(out.begin() + d, out.begin() + 2 * d, [](float v) { return v == 0.0f; }));
  CHECK(std::memcmp(out.data(), table.data() + d, size_t(d) * 4) == 0);
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda convert matches the scalar conversions bit for bit", "[gpu][cuda]") {
  Backend& g = gpu();
  const int64_t n = GENERATE(32, 96, 1024, 100032);
  const DType t = GENERATE(DType::kF16, DType::kBF16, DType::kQ8_0);
  CAPTURE(n, dtype_name(t));
  std::vector<float> x = random_floats(size_t(n), 10, -70000.0f, 70000.0f);
  // Edge values: rounding ties, subnormals, overflow, signed zero, inf, NaN.
  const float specials[] = {0.0f, -0.0f, 1e-8f, -3e-7f, 6.1e-5f, 65504.0f, 65520.0f, 1e30f, -1e-40f,
                            1.0f + 0x1p-11f, 1.0f + 0x1p-8f, std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN()};
  if (t != DType::kQ8_0) std::copy(std::begin(specials), std::end(specials), x.begin());
  for (int64_t i = 0; i < n; i += 7) x[size_t(i)] *= 1e-6f;  // small magnitudes too

  // f32 → t
  std::vector<uint8_t> want(row_bytes(t, n));
  from_f32(t, x.data(), want.data(), n);
  GpuTensor gx(g, DType::kF32, {n}, x.data()), gq(g, t, {n});
  REQUIRE(g.convert(gx.t(), gq.t()).ok());
  CHECK(gq.bytes(g) == want);
  CHECK(gq.guards_intact());

  // t → f32
  std::vector<float> back(static_cast<size_t>(n));
  to_f32(t, want.data(), back.data(), n);
  GpuTensor gs(g, t, {n}, want.data()), gf(g, DType::kF32, {n});
  REQUIRE(g.convert(gs.t(), gf.t()).ok());
  const std::vector<uint8_t> got = gf.bytes(g);
  CHECK(std::memcmp(got.data(), back.data(), got.size()) == 0);
  CHECK(gf.guards_intact());
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda matmul matches the cpu backend for every weight dtype and shape", "[gpu][cuda]") {
  Backend& g = gpu();
  struct Shape {
    int64_t n, n_in, n_out;
  };
  const DType t = GENERATE(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0);
  const Shape s = GENERATE(Shape{1, 32, 1}, Shape{1, 768, 100}, Shape{3, 96, 31}, Shape{17, 288, 288},
                           Shape{64, 1024, 200}, Shape{300, 256, 768}, Shape{1, 4096, 512});
  CAPTURE(dtype_name(t), s.n, s.n_in, s.n_out);
  const Encoded w = random_encoded(t, size_t(s.n_out * s.n_in), 11);
  const std::vector<float> x = random_floats(size_t(s.n * s.n_in), 12);
  auto cw = cpu().upload_weight(host(t, w.bytes.data(), {s.n_out, s.n_in}));
  REQUIRE(cw.ok());
  std::vector<float> ref(size_t(s.n * s.n_out));
  REQUIRE(cpu().matmul(host(DType::kF32, x.data(), {s.n, s.n_in}), *cw.value(),
                       host(DType::kF32, ref.data(), {s.n, s.n_out}))
              .ok());

  auto gw = g.upload_weight(host(t, w.bytes.data(), {s.n_out, s.n_in}));
  REQUIRE(gw.ok());
  CHECK(gw.value()->n_out() == s.n_out);
  CHECK(gw.value()->n_in() == s.n_in);
  CHECK(gw.value()->dtype() == (t == DType::kQ8_0 ? DType::kF16 : t));
  GpuTensor gx(g, DType::kF32, {s.n, s.n_in}, x.data()), gy(g, DType::kF32, {s.n, s.n_out});
  REQUIRE(g.matmul(gx.t(), *gw.value(), gy.t()).ok());
  // x is rounded to the weight's 16-bit type on the GPU (the CPU keeps it f32).
  const double tol = t == DType::kF32 ? 1e-5 : (t == DType::kBF16 ? 1e-2 : 2e-3);
  CHECK(normalized_error(gy.values<float>(g).data(), as_double(ref)) <= tol);
  CHECK(gy.guards_intact());
}

TEST_CASE("cuda matmul widens GGUF block weights to F16 at upload", "[gpu][cuda]") {
  Backend& g = gpu();
  const DType t = GENERATE(DType::kQ4_0, DType::kQ4_1, DType::kQ5_0, DType::kQ5_1);
  const int64_t n = GENERATE(1, 64);
  const int64_t n_in = 768, n_out = 100;
  CAPTURE(dtype_name(t), n);
  const Encoded w = random_encoded(t, size_t(n_out * n_in), 21);
  const std::vector<float> x = random_floats(size_t(n * n_in), 22);
  auto cw = cpu().upload_weight(host(t, w.bytes.data(), {n_out, n_in}));
  REQUIRE(cw.ok());
  std::vector<float> ref(size_t(n * n_out));
  REQUIRE(cpu().matmul(host(DType::kF32, x.data(), {n, n_in}), *cw.value(), host(DType::kF32, ref.data(), {n, n_out}))
              .ok());
  auto gw = g.upload_weight(host(t, w.bytes.data(), {n_out, n_in}));
  REQUIRE(gw.ok());
  CHECK(gw.value()->dtype() == DType::kF16);
  GpuTensor gx(g, DType::kF32, {n, n_in}, x.data()), gy(g, DType::kF32, {n, n_out});
  REQUIRE(g.matmul(gx.t(), *gw.value(), gy.t()).ok());
  // The GPU rounds x to f16; the CPU's decode (n = 1) quantizes x to 8 bits, its prefill keeps f32.
  CHECK(normalized_error(gy.values<float>(g).data(), as_double(ref)) <= (n == 1 ? 2e-2 : 2e-3));
}

TEST_CASE("cuda matmul runs several weights in one call, with accumulate", "[gpu][cuda]") {
  Backend& g = gpu();
  const int64_t n = GENERATE(1, 3, 64);
  const int64_t n_in = 256;
  CAPTURE(n);
  const Encoded w0 = random_encoded(DType::kF32, size_t(48 * n_in), 13);
  const Encoded w1 = random_encoded(DType::kF16, size_t(40 * n_in), 14);
  const Encoded w2 = random_encoded(DType::kBF16, size_t(33 * n_in), 15);
  const std::vector<float> x = random_floats(size_t(n * n_in), 16);
  const std::vector<float> y1_init = random_floats(size_t(n * 40), 17);
  const int64_t outs_n[3] = {48, 40, 33};
  const DType types[3] = {DType::kF32, DType::kF16, DType::kBF16};
  const Encoded* ws[3] = {&w0, &w1, &w2};

  std::vector<std::unique_ptr<Weight>> cws, gws;
  for (int i = 0; i < 3; ++i) {
    auto c = cpu().upload_weight(host(types[i], ws[i]->bytes.data(), {outs_n[i], n_in}));
    auto gg = g.upload_weight(host(types[i], ws[i]->bytes.data(), {outs_n[i], n_in}));
    REQUIRE(c.ok());
    REQUIRE(gg.ok());
    cws.push_back(std::move(c).value());
    gws.push_back(std::move(gg).value());
  }
  std::vector<std::vector<float>> ref = {std::vector<float>(size_t(n * 48)), y1_init, std::vector<float>(size_t(n * 33))};
  const MatmulOut couts[3] = {{cws[0].get(), host(DType::kF32, ref[0].data(), {n, 48}), false},
                              {cws[1].get(), host(DType::kF32, ref[1].data(), {n, 40}), true},
                              {cws[2].get(), host(DType::kF32, ref[2].data(), {n, 33}), false}};
  REQUIRE(cpu().matmul(host(DType::kF32, x.data(), {n, n_in}), couts).ok());

  GpuTensor gx(g, DType::kF32, {n, n_in}, x.data()), y0(g, DType::kF32, {n, 48}),
      y1(g, DType::kF32, {n, 40}, y1_init.data()), y2(g, DType::kF32, {n, 33});
  const MatmulOut gouts[3] = {{gws[0].get(), y0.t(), false}, {gws[1].get(), y1.t(), true}, {gws[2].get(), y2.t(), false}};
  REQUIRE(g.matmul(gx.t(), gouts).ok());
  CHECK(normalized_error(y0.values<float>(g).data(), as_double(ref[0])) <= 1e-5);
  CHECK(normalized_error(y1.values<float>(g).data(), as_double(ref[1])) <= 2e-3);
  CHECK(normalized_error(y2.values<float>(g).data(), as_double(ref[2])) <= 1e-2);
  CHECK((y0.guards_intact() && y1.guards_intact() && y2.guards_intact()));

  // A CPU weight, overlapping outputs and a bad dtype are rejected before anything runs.
  CHECK(g.matmul(gx.t(), *cws[0], y0.t()).code() == StatusCode::kInvalidArgument);
  const MatmulOut twice[2] = {{gws[0].get(), y0.t(), false}, {gws[0].get(), y0.t(), false}};
  CHECK(g.matmul(gx.t(), twice).code() == StatusCode::kInvalidArgument);
  CHECK(g.upload_weight(host(DType::kI32, x.data(), {2, 2})).status().code() == StatusCode::kUnimplemented);
}

// ---------------------------------------------------------------------------------------------
TEST_CASE("cuda attention matches the cpu backend (prefill, decode, split-K, GQA, f32/f16 cache)", "[gpu][cuda]") {
  Backend& g = gpu();
  struct AttnShape {
    int64_t n, n_kv, n_head, n_head_kv, hd;
  };
  const AttnShape s = GENERATE(
      // decode: one to three rows, short and long (split-K) contexts, GQA ratios 1, 2, 4, 8, 32
      AttnShape{1, 1, 1, 1, 8}, AttnShape{1, 600, 8, 2, 64}, AttnShape{1, 5000, 8, 2, 128},
      AttnShape{1, 4096, 8, 8, 128}, AttnShape{2, 3000, 16, 4, 64}, AttnShape{3, 1030, 32, 4, 128},
      AttnShape{1, 700, 32, 1, 64}, AttnShape{1, 2000, 4, 1, 256}, AttnShape{2, 37, 4, 4, 16},
      // prefill: whole prompts and chunks after a cached prefix; odd head sizes
      AttnShape{7, 7, 4, 1, 16}, AttnShape{4, 70, 2, 2, 8}, AttnShape{64, 100, 4, 2, 64},
      AttnShape{300, 300, 2, 1, 64}, AttnShape{300, 600, 2, 2, 16}, AttnShape{65, 200, 16, 4, 128},
      AttnShape{9, 9, 12, 12, 64}, AttnShape{37, 37, 8, 8, 80}, AttnShape{17, 40, 6, 3, 96},
      AttnShape{40, 1000, 8, 2, 256}, AttnShape{128, 128, 32, 8, 128});
  const DType kt = GENERATE(DType::kF32, DType::kF16);
  const DType vt = GENERATE(DType::kF32, DType::kF16);
  if (kt != vt && s.n > 7) return;  // mixed cache types: small shapes are enough
  CAPTURE(s.n, s.n_kv, s.n_head, s.n_head_kv, s.hd, dtype_name(kt), dtype_name(vt));

  const size_t q_elems = size_t(s.n * s.n_head * s.hd), kv_elems = size_t(s.n_kv * s.n_head_kv * s.hd);
  const std::vector<float> q = random_floats(q_elems, 18, -2.0f, 2.0f);
  const Encoded k = random_encoded(kt, kv_elems, 19), v = random_encoded(vt, kv_elems, 20);
  const float scale = 1.0f / std::sqrt(float(s.hd));
  std::vector<float> ref(q_elems);
  REQUIRE(cpu().attention(host(DType::kF32, q.data(), {s.n, s.n_head, s.hd}),
                          host(kt, k.bytes.data(), {s.n_kv, s.n_head_kv, s.hd}),
                          host(vt, v.bytes.data(), {s.n_kv, s.n_head_kv, s.hd}),
                          host(DType::kF32, ref.data(), {s.n, s.n_head, s.hd}), scale)
              .ok());

  GpuTensor gq(g, DType::kF32, {s.n, s.n_head, s.hd}, q.data());
  GpuTensor gk(g, kt, {s.n_kv, s.n_head_kv, s.hd}, k.bytes.data()), gv(g, vt, {s.n_kv, s.n_head_kv, s.hd}, v.bytes.data());
  GpuTensor go(g, DType::kF32, {s.n, s.n_head, s.hd});
  REQUIRE(g.attention(gq.t(), gk.t(), gv.t(), go.t(), scale).ok());
  CHECK(normalized_error(go.values<float>(g).data(), as_double(ref)) <= 2e-5);
  CHECK(go.guards_intact());
}

TEST_CASE("cuda ops reject what the cpu ops reject", "[gpu][cuda]") {
  Backend& g = gpu();
  GpuTensor q(g, DType::kF32, {4, 4, 8}), k(g, DType::kF32, {8, 2, 8}), out(g, DType::kF32, {4, 4, 8});
  auto attn = [&](const Tensor& qq, const Tensor& kk, const Tensor& oo, float scale = 1.0f) {
    return g.attention(qq, kk, kk, oo, scale).code();
  };
  CHECK(attn(q.t(), k.t(), out.t()) == StatusCode::kOk);
  Tensor q3 = q.t();
  q3.shape = {4, 3, 8, 0};  // 3 heads over 2 kv heads
  Tensor o3 = out.t();
  o3.shape = q3.shape;
  CHECK(attn(q3, k.t(), o3) == StatusCode::kInvalidArgument);
  CHECK(attn(q.t(), k.t(), out.t(), NAN) == StatusCode::kInvalidArgument);
  CHECK(attn(q.t(), k.t(), q.t()) == StatusCode::kInvalidArgument);  // out overlaps q
  Tensor kb = k.t();
  kb.dtype = DType::kBF16;
  CHECK(attn(q.t(), kb, out.t()) == StatusCode::kInvalidArgument);
  GpuTensor big_q(g, DType::kF32, {1, 1, 512}), big_k(g, DType::kF32, {1, 1, 512}), big_o(g, DType::kF32, {1, 1, 512});
  CHECK(attn(big_q.t(), big_k.t(), big_o.t()) == StatusCode::kUnimplemented);  // head_dim > 256

  CHECK(g.rms_norm(q.t(), k.t(), 1e-5f, out.t()).code() == StatusCode::kInvalidArgument);
  GpuTensor small(g, DType::kF32, {3, 8});
  CHECK(g.add(q.t(), small.t(), out.t()).code() == StatusCode::kInvalidArgument);
  Tensor pos = Tensor::make(DType::kI32, k.t().data, {3});
  CHECK(g.rope(q.t(), pos, RopeParams{RopeType::kNormal, 8, 10000.0f, 1.0f}).code() == StatusCode::kInvalidArgument);
  CHECK(g.convert(q.t(), Tensor::make(DType::kI8, out.t().data, {4, 4, 8})).code() == StatusCode::kInvalidArgument);
  CHECK(g.synchronize().ok());
}

}  // namespace kvb::test
