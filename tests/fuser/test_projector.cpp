// Fuser (backend path) against the scalar reference on synthetic fusers; gates; load and argument
// errors.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "fuser/fuser.h"
#include "fuser/projector_reference.h"
#include "engine/safetensors.h"
#include "fuser/synth_fuser.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/registry.h"
#include "support/test_support.h"

namespace kvb::fuser {
namespace {

struct Case {
  const char* label;
  ModelSide sharer, receiver;
  int32_t hidden, inter, num_layers;
  DType dtype;
};

FuserConfig make_config(const Case& c) {
  FuserConfig cfg;
  cfg.sharer = c.sharer;
  cfg.receiver = c.receiver;
  cfg.hidden_dim = c.hidden;
  cfg.intermediate_dim = c.inter;
  cfg.num_layers = c.num_layers;
  cfg.layer_map = last_aligned_map(c.sharer.n_layer, c.receiver.n_layer);
  cfg.dtype = c.dtype;
  return cfg;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.5f, 1.5f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

Tensor rows(std::vector<float>& v, int64_t n, int64_t cols) { return Tensor::make(DType::kF32, v.data(), {n, cols}); }

// max |a - b| / max |b|.
double rel_error(const std::vector<float>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num = std::max(num, std::fabs(double(a[i]) - b[i]));
    den = std::max(den, std::fabs(b[i]));
  }
  return den > 0 ? num / den : num;
}

std::unique_ptr<Backend> cpu_backend(int threads) {
  Result<std::unique_ptr<Backend>> b = cpu::create_backend(cpu::detected_isa(), threads);
  REQUIRE(b.ok());
  return std::move(b).value();
}

std::string fuser_dir(const std::string& name) { return test::temp_dir() + "/" + name; }

}  // namespace

TEST_CASE("fuser fuse matches the scalar reference", "[fuser]") {
  const Case c = GENERATE(
      // GQA sharer (2 x 16) into a wider receiver (4 x 8), hidden 64, L = 3
      Case{"gqa-h64-L3", {"s", 5, 2, 16}, {"r", 4, 4, 8}, 64, 96, 3, DType::kF32},
      // MHA, equal shapes, hidden 256, L = 4 (two projection blocks)
      Case{"mha-h256-L4", {"s", 3, 4, 16}, {"r", 3, 4, 16}, 256, 256, 4, DType::kF32},
      // L = 2: no projection blocks at all; bf16 weights
      Case{"gqa-h64-L2-bf16", {"s", 2, 1, 32}, {"r", 3, 2, 16}, 64, 64, 2, DType::kBF16},
      // hidden 256 in f16, sharer wider than the receiver
      Case{"h256-f16", {"s", 4, 8, 32}, {"r", 2, 2, 32}, 256, 128, 3, DType::kF16});
  const GatePattern gates = GENERATE(GatePattern::kAllOn, GatePattern::kAlternate);
  CAPTURE(c.label, int(gates));
  const FuserConfig cfg = make_config(c);
  const std::string dir = fuser_dir(std::string(c.label) + (gates == GatePattern::kAllOn ? "-on" : "-alt"));
  REQUIRE(write_synthetic_fuser(dir, cfg, 1234, gates).ok());
  Result<std::unique_ptr<ReferenceFuser>> ref = ReferenceFuser::load(dir);
  REQUIRE(ref.ok());

  // One Fuser per thread count on its own backend; the reference runs once per input.
  std::vector<std::unique_ptr<Backend>> backends;
  std::vector<std::unique_ptr<Fuser>> fusers;
  for (int threads : {1, 2}) {
    backends.push_back(cpu_backend(threads));
    Result<std::unique_ptr<Fuser>> loaded = Fuser::load(dir, *backends.back());
    REQUIRE(loaded.ok());
    fusers.push_back(std::move(loaded).value());
    const Fuser& f = *fusers.back();
    CHECK(f.config() == cfg);
    CHECK(f.weight_bytes() > 0);
    CHECK(f.flops_per_token(false) == branch_flops_per_token(cfg));
  }

  const int64_t in_s = cfg.sharer.kv_dim(), out = cfg.receiver.kv_dim();
  for (int64_t n : {int64_t(1), int64_t(37), int64_t(300)}) {  // 300 crosses a chunk boundary
    for (int32_t t = 0; t < cfg.receiver.n_layer; ++t) {
      for (bool is_v : {false, true}) {
        CAPTURE(n, t, is_v);
        std::vector<float> sharer = random_floats(size_t(n * in_s), uint32_t(7 * t + is_v));
        const std::vector<float> orig = random_floats(size_t(n * out), uint32_t(100 + 7 * t + is_v));
        std::vector<float> want = orig;
        REQUIRE(ref.value()->fuse(t, is_v, rows(sharer, n, in_s), rows(want, n, out)).ok());
        const std::vector<double> want_d(want.begin(), want.end());
        std::vector<double> delta_want(want.size());
        for (size_t i = 0; i < want.size(); ++i) delta_want[i] = double(want[i]) - double(orig[i]);

        for (size_t k = 0; k < fusers.size(); ++k) {
          CAPTURE(k + 1);  // threads
          Fuser& f = *fusers[k];
          CHECK(f.sharer_layer(t) == cfg.layer_map[size_t(t)]);
          CHECK(f.gate(t, is_v) == synthetic_gate_on(gates, t, is_v));
          std::vector<float> got = orig;
          const std::vector<float> sharer_before = sharer;
          REQUIRE(f.fuse(t, is_v, rows(sharer, n, in_s), rows(got, n, out)).ok());
          CHECK(sharer == sharer_before);
          if (!f.gate(t, is_v)) {
            CHECK(std::memcmp(got.data(), orig.data(), got.size() * 4) == 0);  // bit-identical
            CHECK(want == orig);
            continue;
          }
          // Compare the fused output, and (stricter) the delta the fuser added.
          std::vector<float> delta_got(got.size());
          for (size_t i = 0; i < got.size(); ++i) delta_got[i] = got[i] - orig[i];
          CHECK(rel_error(got, want_d) <= 1e-5);
          CHECK(rel_error(delta_got, delta_want) <= 1e-4);
        }
      }
    }
  }
}

TEST_CASE("fuser on a GPU, sharer rows in host or device memory, matches the CPU", "[gpu][fuser]") {
  const Result<const Device*> gpu = find_device("cuda:0");
  if (!gpu.ok()) {
    std::printf("no CUDA device: %s; skipping\n", gpu.status().to_string().c_str());
    std::fflush(stdout);
    std::exit(77);
  }
  const FuserConfig cfg = make_config(Case{"gpu", {"s", 3, 2, 16}, {"r", 4, 4, 8}, 64, 96, 3, DType::kF32});
  const std::string dir = fuser_dir("gpu");
  REQUIRE(write_synthetic_fuser(dir, cfg, 99, GatePattern::kAlternate).ok());
  std::unique_ptr<Backend> cpu_be = cpu_backend(2);
  Result<std::unique_ptr<Backend>> gpu_be = gpu.value()->create_backend();
  REQUIRE(gpu_be.ok());
  Result<std::unique_ptr<Fuser>> on_cpu = Fuser::load(dir, *cpu_be);
  Result<std::unique_ptr<Fuser>> on_gpu = Fuser::load(dir, *gpu_be.value());
  REQUIRE(on_cpu.ok());
  REQUIRE(on_gpu.ok());

  const int64_t in_s = cfg.sharer.kv_dim(), out = cfg.receiver.kv_dim();
  for (int64_t n : {int64_t(1), int64_t(300)}) {  // 300 crosses a chunk boundary
    for (int32_t t = 0; t < cfg.receiver.n_layer; ++t) {
      for (bool is_v : {false, true}) {
        CAPTURE(n, t, is_v);
        std::vector<float> sharer = random_floats(size_t(n * in_s), uint32_t(11 * t + is_v));
        const std::vector<float> orig = random_floats(size_t(n * out), uint32_t(200 + 11 * t + is_v));
        std::vector<float> want = orig, from_host = orig, from_device = orig;
        REQUIRE(on_cpu.value()->fuse(t, is_v, rows(sharer, n, in_s), rows(want, n, out)).ok());
        REQUIRE(on_gpu.value()->fuse(t, is_v, rows(sharer, n, in_s), rows(from_host, n, out)).ok());
        // The same rows in device memory (a cache that landed there over NCCL or CUDA IPC), read in place.
        Result<std::unique_ptr<Buffer>> dev = gpu.value()->buffer_type().alloc(sharer.size() * sizeof(float));
        REQUIRE(dev.ok());
        REQUIRE(dev.value()->set(0, sharer.data(), sharer.size() * sizeof(float)).ok());
        REQUIRE(on_gpu.value()
                    ->fuse(t, is_v, Tensor::make(DType::kF32, dev.value()->data(), {n, in_s}), rows(from_device, n, out),
                           SharerMemory::kDevice)
                    .ok());
        CHECK(std::memcmp(from_device.data(), from_host.data(), from_host.size() * sizeof(float)) == 0);
        if (!on_gpu.value()->gate(t, is_v)) {
          CHECK(from_host == orig);
          continue;
        }
        std::vector<double> want_d(want.begin(), want.end()), delta_want(want.size());
        std::vector<float> delta_got(want.size());
        for (size_t i = 0; i < want.size(); ++i) {
          delta_want[i] = double(want[i]) - double(orig[i]);
          delta_got[i] = from_host[i] - orig[i];
        }
        CHECK(rel_error(from_host, want_d) <= 1e-3);
        CHECK(rel_error(delta_got, delta_want) <= 1e-2);
      }
    }
  }
}

TEST_CASE("fuser fuse accepts [n][H][D] views and is thread-safe", "[fuser]") {
  const FuserConfig cfg = make_config(Case{"", {"s", 2, 2, 16}, {"r", 2, 4, 8}, 64, 64, 3, DType::kF32});
  const std::string dir = fuser_dir("threads");
  REQUIRE(write_synthetic_fuser(dir, cfg, 5, GatePattern::kAllOn).ok());
  std::unique_ptr<Backend> be = cpu_backend(2);
  Result<std::unique_ptr<Fuser>> f = Fuser::load(dir, *be);
  REQUIRE(f.ok());
  const int64_t n = 50;
  std::vector<float> sharer = random_floats(size_t(n * 32), 1);
  const std::vector<float> orig = random_floats(size_t(n * 32), 2);
  std::vector<float> expect = orig;
  REQUIRE(f.value()->fuse(1, true, rows(sharer, n, 32), rows(expect, n, 32)).ok());
  std::vector<float> three_d = orig;
  REQUIRE(f.value()
              ->fuse(1, true, Tensor::make(DType::kF32, sharer.data(), {n, 2, 16}),
                     Tensor::make(DType::kF32, three_d.data(), {n, 4, 8}))
              .ok());
  CHECK(three_d == expect);
  // On the CPU, device memory is host memory: SharerMemory::kDevice reads the same rows.
  std::vector<float> device_rows = orig;
  REQUIRE(f.value()->fuse(1, true, rows(sharer, n, 32), rows(device_rows, n, 32), SharerMemory::kDevice).ok());
  CHECK(device_rows == expect);

  std::vector<std::vector<float>> outs(4, orig);
  std::vector<std::thread> threads;
  std::vector<int> ok(outs.size(), 0);
  for (size_t i = 0; i < outs.size(); ++i) {
    threads.emplace_back([&, i] { ok[i] = f.value()->fuse(1, true, rows(sharer, n, 32), rows(outs[i], n, 32)).ok(); });
  }
  for (std::thread& t : threads) t.join();
  for (size_t i = 0; i < outs.size(); ++i) {
    CHECK(ok[i] == 1);
    CHECK(outs[i] == expect);
  }
}

TEST_CASE("fuser with every gate off holds no weights and touches nothing", "[fuser]") {
  const FuserConfig cfg = make_config(Case{"", {"s", 3, 2, 16}, {"r", 2, 4, 8}, 64, 64, 3, DType::kF32});
  const std::string dir = fuser_dir("all-off");
  REQUIRE(write_synthetic_fuser(dir, cfg, 9, GatePattern::kAllOff).ok());
  std::unique_ptr<Backend> be = cpu_backend(1);
  Result<std::unique_ptr<Fuser>> f = Fuser::load(dir, *be);
  REQUIRE(f.ok());
  CHECK(f.value()->weight_bytes() == 0);
  std::vector<float> sharer = random_floats(4 * 32, 1);
  const std::vector<float> orig = random_floats(4 * 32, 2);
  std::vector<float> recv = orig;
  for (int32_t t = 0; t < 2; ++t) {
    CHECK_FALSE(f.value()->gate(t, false));
    CHECK_FALSE(f.value()->gate(t, true));
    REQUIRE(f.value()->fuse(t, false, rows(sharer, 4, 32), rows(recv, 4, 32)).ok());
    REQUIRE(f.value()->fuse(t, true, rows(sharer, 4, 32), rows(recv, 4, 32)).ok());
  }
  CHECK(std::memcmp(recv.data(), orig.data(), recv.size() * 4) == 0);
}

TEST_CASE("fuser fuse rejects bad arguments", "[fuser]") {
  const FuserConfig cfg = make_config(Case{"", {"s", 2, 2, 16}, {"r", 2, 4, 8}, 64, 64, 3, DType::kF32});
  const std::string dir = fuser_dir("args");
  REQUIRE(write_synthetic_fuser(dir, cfg, 3, GatePattern::kAllOn).ok());
  std::unique_ptr<Backend> be = cpu_backend(1);
  Result<std::unique_ptr<Fuser>> loaded = Fuser::load(dir, *be);
  REQUIRE(loaded.ok());
  Fuser& f = *loaded.value();
  std::vector<float> s(8 * 32, 0.5f), r(8 * 32, 0.25f), big(16 * 32, 0.0f);
  std::vector<uint16_t> h(8 * 32, 0);
  constexpr auto kInvalid = StatusCode::kInvalidArgument;
  CHECK(f.fuse(2, false, rows(s, 8, 32), rows(r, 8, 32)).code() == kInvalid);  // layer out of range
  CHECK(f.fuse(-1, false, rows(s, 8, 32), rows(r, 8, 32)).code() == kInvalid);
  CHECK(f.fuse(0, false, rows(s, 8, 32), rows(r, 4, 64)).code() == kInvalid);  // receiver width
  CHECK(f.fuse(0, false, rows(s, 4, 64), rows(r, 8, 32)).code() == kInvalid);  // sharer width
  CHECK(f.fuse(0, false, rows(s, 7, 32), rows(r, 8, 32)).code() == kInvalid);  // token counts differ
  CHECK(f.fuse(0, false, Tensor::make(DType::kF16, h.data(), {8, 32}), rows(r, 8, 32)).code() == kInvalid);
  CHECK(f.fuse(0, false, Tensor::make(DType::kF32, s.data(), {8 * 32}), rows(r, 8, 32)).code() == kInvalid);
  CHECK(f.fuse(0, false, rows(big, 8, 32), Tensor::make(DType::kF32, big.data() + 64, {8, 32})).code() == kInvalid);
  CHECK(f.fuse(0, false, Tensor::make(DType::kF32, nullptr, {8, 32}), rows(r, 8, 32)).code() == kInvalid);
  CHECK(f.fuse(0, false, rows(s, 0, 32), rows(r, 0, 32)).ok());  // no tokens
  CHECK(std::all_of(r.begin(), r.end(), [](float v) { return v == 0.25f; }));
  CHECK_FALSE(f.gate(5, false));
  CHECK(f.sharer_layer(5) == -1);
  CHECK(f.sharer_layer(-1) == -1);
}

TEST_CASE("fuser load names missing, misshapen and mistyped tensors", "[fuser]") {
  const FuserConfig cfg = make_config(Case{"", {"s", 2, 2, 16}, {"r", 2, 4, 8}, 64, 64, 3, DType::kF32});
  const std::string good = fuser_dir("load-good");
  REQUIRE(write_synthetic_fuser(good, cfg, 3, GatePattern::kAllOn).ok());
  Result<SafetensorsFile> src = SafetensorsFile::open(good + "/model.safetensors");
  REQUIRE(src.ok());
  std::unique_ptr<Backend> be = cpu_backend(1);

  // Copies the good fuser with the tensor list edited by `edit` (and config `c`).
  auto variant = [&](const std::string& name, const FuserConfig& c, auto edit) {
    const std::string dir = fuser_dir(name);
    std::filesystem::create_directories(dir);
    std::ofstream(dir + "/config.json") << fuser_config_to_json(c);
    std::vector<SafetensorsTensor> ts;
    for (const SafetensorsEntry& e : src->entries()) ts.push_back({e.name, e.dtype, e.shape, src->view(e).data});
    edit(ts);
    REQUIRE(write_safetensors(dir + "/model.safetensors", ts).ok());
    return Fuser::load(dir, *be).status();
  };
  auto expect = [](const Status& s, StatusCode code, const std::string& needle) {
    INFO(s.to_string());
    CHECK(s.code() == code);
    CHECK(s.message().find(needle) != std::string::npos);
  };

  CHECK(Fuser::load(good, *be).ok());
  expect(Fuser::load(fuser_dir("nowhere"), *be).status(), StatusCode::kNotFound, "config.json");

  const std::string missing = "projector.1.value_proj_mlp2.blocks.0.w2.weight";
  expect(variant("load-missing", cfg,
                 [&](std::vector<SafetensorsTensor>& ts) {
                   std::erase_if(ts, [&](const SafetensorsTensor& t) { return t.name == missing; });
                 }),
         StatusCode::kInvalidArgument, "missing tensor \"" + missing + "\"");

  const std::string bias = "projector.0.key_scalar_head.bias";  // [4]
  expect(variant("load-shape", cfg,
                 [&](std::vector<SafetensorsTensor>& ts) {
                   for (SafetensorsTensor& t : ts) {
                     if (t.name == bias) t.shape = {2, 2};
                   }
                 }),
         StatusCode::kInvalidArgument, "tensor \"" + bias + "\" has shape [2, 2], expected [4]");

  FuserConfig bf16 = cfg;
  bf16.dtype = DType::kBF16;
  expect(variant("load-dtype", bf16, [](std::vector<SafetensorsTensor>&) {}), StatusCode::kInvalidArgument,
         "is f32, the config says bf16");

  const std::string dir = fuser_dir("load-noweights");
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << fuser_config_to_json(cfg);
  expect(Fuser::load(dir, *be).status(), StatusCode::kNotFound, "model.safetensors");
}

}  // namespace kvb::fuser
