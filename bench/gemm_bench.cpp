// gemm_bench: the CPU backend's matmul on the shapes of a stories110M-like model (d = 768,
// ffn = 2048, vocab = 32000), against baselines measured in the same run.
//
//   (1) prefill GEMM at n = 512: GFLOP/s for F32/F16/BF16/Q8_0 weights with 1 and 2 threads, beside
//       OpenBLAS cblas_sgemm on the same F32 problems;
//   (2) decode GEMV at n = 1: effective GB/s of packed weight bytes read, beside the read bandwidth
//       of a plain sum over a 1 GiB buffer with the same thread count, and their ratio. Each shape
//       is replicated over distinct matrices totalling > 2x L3 so the weights stream from DRAM.
// The "model" rows weight the shapes as one forward pass of the model does
// (12 layers x {4 x 768², 2 x 768x2048, 2048x768} + the 768x32000 output).
//
// Usage: gemm_bench [prefill|decode|all] [threads] (default: both parts, 1 and 2 threads).
// Timings are the best of several runs.
#include <cblas.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/dtype.h"

namespace {

std::vector<int> g_threads = {1, 2};

using Clock = std::chrono::steady_clock;

struct Shape {
  int64_t n_in, n_out;
  int per_model;  // matrices of this shape in one forward pass
};
constexpr Shape kShapes[] = {{768, 768, 48}, {768, 2048, 24}, {2048, 768, 12}, {768, 32000, 1}};
constexpr kvb::DType kTypes[] = {kvb::DType::kF32, kvb::DType::kF16, kvb::DType::kBF16, kvb::DType::kQ8_0};
constexpr int64_t kPrefillRows = 512;
constexpr size_t kDecodeBytes = size_t(1) << 30;  // as the bandwidth buffer; ~4x the 260 MiB L3

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Best time of fn() over at least min_reps runs and about budget_s seconds (after one warm-up).
template <class F>
double best_time(F&& fn, int min_reps = 3, double budget_s = 0.3) {
  fn();
  double best = 1e30, total = 0;
  for (int rep = 0; rep < min_reps || total < budget_s; ++rep) {
    const auto t0 = Clock::now();
    fn();
    const double t = seconds_since(t0);
    best = std::min(best, t);
    total += t;
    if (rep > 200) break;
  }
  return best;
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::vector<uint8_t> host_matrix(kvb::DType t, const Shape& s) {
  const std::vector<float> f = random_floats(size_t(s.n_in * s.n_out), uint32_t(s.n_in + s.n_out));
  std::vector<uint8_t> bytes(kvb::row_bytes(t, s.n_in) * size_t(s.n_out));
  kvb::from_f32(t, f.data(), bytes.data(), s.n_in * s.n_out);
  return bytes;
}

std::unique_ptr<kvb::Backend> make_backend(int threads) {
  auto b = kvb::cpu::create_backend(kvb::cpu::detected_isa(), threads);
  if (!b.ok()) {
    std::fprintf(stderr, "gemm_bench: %s\n", b.status().to_string().c_str());
    std::exit(1);
  }
  return std::move(b).value();
}

void check(const kvb::Status& s) {
  if (!s.ok()) {
    std::fprintf(stderr, "gemm_bench: %s\n", s.to_string().c_str());
    std::exit(1);
  }
}

// ---- (1) prefill ----

void run_prefill() {
  std::printf("\n== Prefill GEMM, n = %lld rows: GFLOP/s (higher is better) ==\n", (long long)kPrefillRows);
  std::printf("%-8s %-13s %8s %8s %8s %8s %10s\n", "threads", "n_in x n_out", "f32", "f16", "bf16", "q8_0",
              "openblas");
  for (int threads : g_threads) {
    auto be = make_backend(threads);
    openblas_set_num_threads(threads);
    double model_time[5] = {};  // per column: seconds for one forward pass of matmuls
    double model_flops = 0;
    for (const Shape& s : kShapes) {
      const double flops = 2.0 * double(kPrefillRows) * double(s.n_in) * double(s.n_out);
      model_flops += flops * s.per_model;
      std::vector<float> x = random_floats(size_t(kPrefillRows * s.n_in), 1);
      std::vector<float> y(size_t(kPrefillRows * s.n_out));
      const kvb::Tensor xt = kvb::Tensor::make(kvb::DType::kF32, x.data(), {kPrefillRows, s.n_in});
      const kvb::Tensor yt = kvb::Tensor::make(kvb::DType::kF32, y.data(), {kPrefillRows, s.n_out});
      double gflops[5];
      for (int c = 0; c < 4; ++c) {
        std::vector<uint8_t> host = host_matrix(kTypes[c], s);
        auto w = be->upload_weight(kvb::Tensor::make(kTypes[c], host.data(), {s.n_out, s.n_in}));
        check(w.status());
        const double t = best_time([&] { check(be->matmul(xt, *w.value(), yt)); });
        gflops[c] = flops / t * 1e-9;
        model_time[c] += t * s.per_model;
      }
      const std::vector<float> wf = random_floats(size_t(s.n_in * s.n_out), 2);
      const double t_blas = best_time([&] {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(kPrefillRows), int(s.n_out), int(s.n_in), 1.0f,
                    x.data(), int(s.n_in), wf.data(), int(s.n_in), 0.0f, y.data(), int(s.n_out));
      });
      gflops[4] = flops / t_blas * 1e-9;
      model_time[4] += t_blas * s.per_model;
      const std::string shape = std::to_string(s.n_in) + " x " + std::to_string(s.n_out);
      std::printf("%-8d %-13s %8.1f %8.1f %8.1f %8.1f %10.1f\n", threads, shape.c_str(), gflops[0], gflops[1],
                  gflops[2], gflops[3], gflops[4]);
    }
    std::printf("%-8d %-13s %8.1f %8.1f %8.1f %8.1f %10.1f\n", threads, "model", model_flops / model_time[0] * 1e-9,
                model_flops / model_time[1] * 1e-9, model_flops / model_time[2] * 1e-9,
                model_flops / model_time[3] * 1e-9, model_flops / model_time[4] * 1e-9);
    std::printf("%-8d %-13s %8.0f %8.0f %8.0f %8.0f %10.0f   (tok/s, matmuls only)\n", threads, "model",
                kPrefillRows / model_time[0], kPrefillRows / model_time[1], kPrefillRows / model_time[2],
                kPrefillRows / model_time[3], kPrefillRows / model_time[4]);
  }
}

// ---- (2) decode ----

// GB/s of a sum over a 1 GiB buffer split across `threads` threads (best of 5).
double read_bandwidth(int threads) {
  constexpr size_t kBytes = size_t(1) << 30;
  static std::vector<uint64_t> buf;
  if (buf.empty()) {
    buf.resize(kBytes / 8);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = i;
  }
  std::vector<uint64_t> sums(size_t(threads) * 8);
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) {
      pool.emplace_back([&, t] {
        const size_t begin = buf.size() * size_t(t) / size_t(threads);
        const size_t end = buf.size() * size_t(t + 1) / size_t(threads);
        // Four independent 16-byte vector sums per 64-byte line (GCC/Clang vector extension, plain
        // SSE2/NEON): the loop is bound by memory, not by adds.
        using U64x2 = uint64_t __attribute__((vector_size(16)));
        const auto* p = reinterpret_cast<const U64x2*>(buf.data() + begin);
        const size_t n_lines = (end - begin) / 8;
        U64x2 s0 = {}, s1 = {}, s2 = {}, s3 = {};
        for (size_t i = 0; i < n_lines; ++i) {
          s0 += p[4 * i];  // vector types alias their element type; buf is 16-byte aligned
          s1 += p[4 * i + 1];
          s2 += p[4 * i + 2];
          s3 += p[4 * i + 3];
        }
        const U64x2 s = s0 + s1 + s2 + s3;
        sums[size_t(t) * 8] = s[0] + s[1];
      });
    }
    for (std::thread& th : pool) th.join();
    best = std::min(best, seconds_since(t0));
  }
  return double(kBytes) / best * 1e-9;
}

// Uploads copies of the given shapes (each `count` times per replica) until > kDecodeBytes; returns
// the weights in execution order.
struct DecodeSet {
  std::vector<std::unique_ptr<kvb::Weight>> weights;
  size_t bytes = 0;
};
DecodeSet upload_replicas(kvb::Backend& be, kvb::DType t, const std::vector<std::pair<Shape, int>>& shapes) {
  DecodeSet set;
  std::vector<std::vector<uint8_t>> hosts;
  for (const auto& [s, count] : shapes) hosts.push_back(host_matrix(t, s));
  while (set.bytes < kDecodeBytes) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      const Shape& s = shapes[i].first;
      for (int c = 0; c < shapes[i].second; ++c) {
        auto w = be.upload_weight(kvb::Tensor::make(t, hosts[i].data(), {s.n_out, s.n_in}));
        check(w.status());
        set.bytes += w.value()->nbytes();
        set.weights.push_back(std::move(w).value());
      }
    }
  }
  return set;
}

void run_decode() {
  std::printf("\n== Decode GEMV, n = 1: GB/s of weight bytes read (ratio to the read bandwidth) ==\n");
  for (int threads : g_threads) {
    const double bw = read_bandwidth(threads);
    std::printf("threads %d: read bandwidth (sum over 1 GiB) = %.1f GB/s\n", threads, bw);
    std::printf("%-8s %-13s %15s %15s %15s %15s\n", "threads", "n_in x n_out", "f32", "f16", "bf16", "q8_0");
    auto be = make_backend(threads);
    std::vector<std::pair<std::string, std::vector<std::pair<Shape, int>>>> rows;
    for (const Shape& s : kShapes) rows.push_back({std::to_string(s.n_in) + " x " + std::to_string(s.n_out), {{s, 1}}});
    std::vector<std::pair<Shape, int>> model;
    for (const Shape& s : kShapes) model.push_back({s, s.per_model});
    rows.push_back({"model", model});
    for (const auto& [label, shapes] : rows) {
      std::printf("%-8d %-13s", threads, label.c_str());
      for (kvb::DType t : kTypes) {
        DecodeSet set = upload_replicas(*be, t, shapes);
        std::vector<float> x = random_floats(size_t(kShapes[2].n_in), 3);  // widest n_in
        std::vector<float> y(size_t(kShapes[3].n_out));                    // widest n_out
        const double secs = best_time(
            [&] {
              for (const auto& w : set.weights) {
                check(be->matmul(kvb::Tensor::make(kvb::DType::kF32, x.data(), {1, w->n_in()}), *w,
                                 kvb::Tensor::make(kvb::DType::kF32, y.data(), {1, w->n_out()})));
              }
            },
            3, 0.5);
        const double gbs = double(set.bytes) / secs * 1e-9;
        char cell[32];
        std::snprintf(cell, sizeof(cell), "%.1f (%.2f)", gbs, gbs / bw);
        std::printf(" %15s", cell);
        std::fflush(stdout);
      }
      std::printf("\n");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  const std::string what = argc > 1 ? argv[1] : "all";
  if (argc > 2) g_threads = {std::max(1, std::atoi(argv[2]))};
  std::printf("gemm_bench: kvbridge CPU backend, ISA %s; OpenBLAS core %s\n",
              std::string(kvb::cpu::isa_name(kvb::cpu::detected_isa())).c_str(), openblas_get_corename());
  if (what == "all" || what == "prefill") run_prefill();
  if (what == "all" || what == "decode") run_decode();
  return 0;
}
