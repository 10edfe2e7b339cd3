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
//   (3) the prefill's other ops (attention, rms_norm, rope, silu_mul) at n = 512, in ms per call.
//
//   (4) prompt rows on block-quantized weights: the f32 GEMM against the integer kernels.
//
// Usage: gemm_bench [prefill|decode|ops|quant|all] [threads] (default: both parts, 1 and 2 threads).
// Timings are the best of several runs.
#include <cblas.h>

#if defined(__x86_64__)
// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized in their own helpers (GCC PR105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#endif

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/dtype.h"

namespace {

std::vector<int> g_threads = {1, 2};

using kvb::bench::best_time;
using kvb::bench::Clock;
using kvb::bench::seconds_since;

struct Shape {
  int64_t n_in, n_out;
  int per_model;  // matrices of this shape in one forward pass
};
constexpr Shape kShapes[] = {{768, 768, 48}, {768, 2048, 24}, {2048, 768, 12}, {768, 32000, 1}};
constexpr kvb::DType kTypes[] = {kvb::DType::kF32, kvb::DType::kF16, kvb::DType::kBF16, kvb::DType::kQ8_0};
constexpr int64_t kPrefillRows = 512;
constexpr size_t kDecodeBytes = size_t(1) << 30;  // as the bandwidth buffer; ~4x the 260 MiB L3

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

// The machine is shared: every cell is measured in kRounds rounds spread over the run, and the best
// round is kept, so a burst of load from elsewhere does not decide a cell.
constexpr int kRounds = 3;

void run_prefill() {
  std::printf("\n== Prefill GEMM, n = %lld rows: GFLOP/s (higher is better) ==\n", (long long)kPrefillRows);
  std::printf("%-8s %-13s %8s %8s %8s %8s %10s\n", "threads", "n_in x n_out", "f32", "f16", "bf16", "q8_0", "openblas");
  constexpr size_t kNumShapes = std::size(kShapes);
  for (int threads : g_threads) {
    auto be = make_backend(threads);
    openblas_set_num_threads(threads);
    std::vector<std::vector<float>> xs, ys, wfs;
    std::vector<std::unique_ptr<kvb::Weight>> ws;  // [shape][dtype]
    for (const Shape& s : kShapes) {
      xs.push_back(random_floats(size_t(kPrefillRows * s.n_in), 1));
      ys.emplace_back(size_t(kPrefillRows * s.n_out));
      wfs.push_back(random_floats(size_t(s.n_in * s.n_out), 2));
      for (kvb::DType t : kTypes) {
        std::vector<uint8_t> host = host_matrix(t, s);
        auto w = be->upload_weight(kvb::Tensor::make(t, host.data(), {s.n_out, s.n_in}));
        check(w.status());
        ws.push_back(std::move(w).value());
      }
    }
    double secs[kNumShapes][5];
    for (auto& row : secs) std::fill(std::begin(row), std::end(row), 1e30);
    for (int round = 0; round < kRounds; ++round) {
      for (size_t i = 0; i < kNumShapes; ++i) {
        const Shape& s = kShapes[i];
        const kvb::Tensor xt = kvb::Tensor::make(kvb::DType::kF32, xs[i].data(), {kPrefillRows, s.n_in});
        const kvb::Tensor yt = kvb::Tensor::make(kvb::DType::kF32, ys[i].data(), {kPrefillRows, s.n_out});
        for (size_t c = 0; c < 4; ++c) {
          const kvb::Weight& w = *ws[i * 4 + c];
          secs[i][c] = std::min(secs[i][c], best_time([&] { check(be->matmul(xt, w, yt)); }));
        }
        secs[i][4] = std::min(secs[i][4], best_time([&] {
                                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(kPrefillRows), int(s.n_out),
                                            int(s.n_in), 1.0f, xs[i].data(), int(s.n_in), wfs[i].data(), int(s.n_in),
                                            0.0f, ys[i].data(), int(s.n_out));
                              }));
      }
    }
    double model_time[5] = {};  // per column: seconds for one forward pass of matmuls
    double model_flops = 0;
    for (size_t i = 0; i < kNumShapes; ++i) {
      const Shape& s = kShapes[i];
      const double flops = 2.0 * double(kPrefillRows) * double(s.n_in) * double(s.n_out);
      model_flops += flops * s.per_model;
      for (int c = 0; c < 5; ++c) model_time[c] += secs[i][c] * s.per_model;
      const std::string shape = std::to_string(s.n_in) + " x " + std::to_string(s.n_out);
      std::printf("%-8d %-13s %8.1f %8.1f %8.1f %8.1f %10.1f\n", threads, shape.c_str(), flops / secs[i][0] * 1e-9,
                  flops / secs[i][1] * 1e-9, flops / secs[i][2] * 1e-9, flops / secs[i][3] * 1e-9,
                  flops / secs[i][4] * 1e-9);
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

// Plain streaming sums: the read-bandwidth baseline. Single-core DRAM bandwidth depends on how many
// lines the core keeps in flight, so both loops prefetch 2 KiB ahead as the GEMV kernels do, and on
// x86 a 64-byte-load AVX-512 loop is tried besides the portable one; the faster one is the baseline.
uint64_t sum_portable(const uint64_t* data, size_t n) {
  using U64x2 = uint64_t __attribute__((vector_size(16)));  // GCC/Clang vector extension
  const auto* p = reinterpret_cast<const U64x2*>(data);     // vector types alias their element type
  U64x2 s0 = {}, s1 = {}, s2 = {}, s3 = {};
  for (size_t i = 0; i < n / 8; ++i) {
    __builtin_prefetch(p + 4 * i + 128);  // 2 KiB ahead
    s0 += p[4 * i];
    s1 += p[4 * i + 1];
    s2 += p[4 * i + 2];
    s3 += p[4 * i + 3];
  }
  const U64x2 s = s0 + s1 + s2 + s3;
  return s[0] + s[1];
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) uint64_t sum_avx512(const uint64_t* data, size_t n) {
  __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();
  for (size_t i = 0; i + 16 <= n; i += 16) {
    _mm_prefetch(reinterpret_cast<const char*>(data + i) + 2048, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(data + i) + 2048 + 64, _MM_HINT_T0);
    s0 = _mm512_add_epi64(s0, _mm512_loadu_si512(data + i));
    s1 = _mm512_add_epi64(s1, _mm512_loadu_si512(data + i + 8));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_add_epi64(s0, s1));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3] + lanes[4] + lanes[5] + lanes[6] + lanes[7];
}
#endif

// GB/s of a sum over a 1 GiB buffer split across `threads` threads (best of 5 per loop).
double read_bandwidth(int threads) {
  constexpr size_t kBytes = size_t(1) << 30;
  static std::vector<uint64_t> buf;
  if (buf.empty()) {
    buf.resize(kBytes / 8);
    for (size_t i = 0; i < buf.size(); ++i) buf[i] = i;
  }
  using SumFn = uint64_t (*)(const uint64_t*, size_t);
  std::vector<SumFn> loops = {sum_portable};
#if defined(__x86_64__)
  if (__builtin_cpu_supports("avx512f")) loops.push_back(sum_avx512);
#endif
  std::vector<uint64_t> sums(size_t(threads) * 8);
  double best = 1e30;
  for (SumFn sum : loops) {
    for (int rep = 0; rep < 5; ++rep) {
      const auto t0 = Clock::now();
      std::vector<std::thread> pool;
      for (int t = 0; t < threads; ++t) {
        pool.emplace_back([&, t] {
          const size_t begin = buf.size() * size_t(t) / size_t(threads) / 16 * 16;
          const size_t end = t + 1 == threads ? buf.size() : buf.size() * size_t(t + 1) / size_t(threads) / 16 * 16;
          sums[size_t(t) * 8] = sum(buf.data() + begin, end - begin);
        });
      }
      for (std::thread& th : pool) th.join();
      best = std::min(best, seconds_since(t0));
    }
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

// ---- (3) the prefill's other ops at the same shapes (n = 512 rows, 12 heads of 64) ----
void run_ops() {
  std::printf("\n== Prefill non-matmul ops, n = %lld rows, d = 768 (12 x 64), ffn 2048: ms per call ==\n",
              (long long)kPrefillRows);
  std::printf("%-8s %10s %10s %10s %10s\n", "threads", "attention", "rms_norm", "rope(q)", "silu_mul");
  constexpr int64_t kHeads = 12, kHd = 64, kD = kHeads * kHd, kFf = 2048, n = kPrefillRows;
  for (int threads : g_threads) {
    auto be = make_backend(threads);
    std::vector<float> q = random_floats(size_t(n * kD), 11), k = random_floats(size_t(n * kD), 12),
                       v = random_floats(size_t(n * kD), 13), out(size_t(n * kD)), w = random_floats(size_t(kD), 14),
                       g = random_floats(size_t(n * kFf), 15), u = random_floats(size_t(n * kFf), 16);
    std::vector<int32_t> pos(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = int32_t(i);
    using kvb::DType;
    using kvb::Tensor;
    const Tensor qt = Tensor::make(DType::kF32, q.data(), {n, kHeads, kHd});
    const Tensor kt = Tensor::make(DType::kF32, k.data(), {n, kHeads, kHd});
    const Tensor vt = Tensor::make(DType::kF32, v.data(), {n, kHeads, kHd});
    const Tensor ot = Tensor::make(DType::kF32, out.data(), {n, kHeads, kHd});
    const Tensor x2 = Tensor::make(DType::kF32, q.data(), {n, kD});
    const Tensor y2 = Tensor::make(DType::kF32, out.data(), {n, kD});
    const Tensor wt = Tensor::make(DType::kF32, w.data(), {kD});
    const Tensor gt = Tensor::make(DType::kF32, g.data(), {n, kFf});
    const Tensor ut = Tensor::make(DType::kF32, u.data(), {n, kFf});
    const Tensor pt = Tensor::make(DType::kI32, pos.data(), {n});
    kvb::RopeParams rp;
    rp.n_rot = int(kHd);
    const double t_att = best_time([&] { check(be->attention(qt, kt, vt, ot, 0.125f)); });
    const double t_norm = best_time([&] { check(be->rms_norm(x2, wt, 1e-5f, y2)); });
    const double t_rope = best_time([&] { check(be->rope(ot, pt, rp)); });
    const double t_silu = best_time([&] { check(be->silu_mul(gt, ut, gt)); });
    std::printf("%-8d %10.3f %10.3f %10.3f %10.3f\n", threads, t_att * 1e3, t_norm * 1e3, t_rope * 1e3, t_silu * 1e3);
  }
}

// ---- (4) prompt rows on block-quantized weights ----

// The two row modes on 4/5-bit and Q8_0 weights: RowMode::kPrefill and RowMode::kDecode. Q8_0
// takes the f32 GEMM (each block widened to f32, the F32 micro-kernel) for the first and the f32
// gemv for the second; GGUF block weights take the integer kernels (activations quantized to int8
// once, byte dot products on the packed blocks) in both, so their two columns agree. The integer
// column's multiply-adds per second are also shown against the VPDPBUSD peak measured in the same
// run (AVX-512 VNNI machines). Model-weighted tok/s, matmuls only,
// for decode batches (n = 1, 4, 8), a prompt chunk beside decoding sequences (n = 32) and a long
// prompt alone (n = 512).
// Multiply-adds per second of VPDPBUSD alone (12 independent chains of 64 each) on `threads`
// threads at once: the ceiling of the integer kernels. 0 where the CPU has no AVX-512 VNNI.
#if defined(__x86_64__)
__attribute__((target("avx512f,avx512vnni"))) double vnni_chains(int64_t iters) {
  __m512i acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_set1_epi32(i);
  __m512i w = _mm512_set1_epi8(3);
  const __m512i x = _mm512_set1_epi8(1);
  for (int64_t it = 0; it < iters; ++it) {
    for (__m512i& a : acc) a = _mm512_dpbusd_epi32(a, w, x);
    asm volatile("" : "+v"(w));  // keeps the loop from being folded
  }
  int64_t sum = 0;
  for (const __m512i& a : acc) sum += _mm512_reduce_add_epi32(a);
  return double(sum & 1);
}
#endif

std::atomic<double> g_sink{0};  // keeps the chains' results live

double vnni_peak_macs(int threads) {
#if defined(__x86_64__)
  if (!__builtin_cpu_supports("avx512vnni")) return 0;
  constexpr int64_t kIters = 50'000'000;
  double best = 1e30;
  for (int round = 0; round < kRounds; ++round) {
    const auto t0 = Clock::now();
    std::vector<std::thread> pool;
    for (int t = 0; t < threads; ++t) pool.emplace_back([] { g_sink += vnni_chains(kIters); });
    for (std::thread& th : pool) th.join();
    best = std::min(best, seconds_since(t0));
  }
  return double(threads) * double(kIters) * 12 * 64 / best;
#else
  (void)threads;
  return 0;
#endif
}

std::string fmt_pct(double f) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%.0f%%", 100 * f);
  return buf;
}

void run_quant_rows() {
  constexpr kvb::DType kQuant[] = {kvb::DType::kQ4_0, kvb::DType::kQ4_1, kvb::DType::kQ5_1, kvb::DType::kQ8_0};
  constexpr int64_t kRows[] = {1, 4, 8, 32, 512};
  std::printf("\n== Prompt rows on quantized weights: f32 GEMM (kPrefill) vs integer kernels (kDecode), "
              "tok/s of a model's matmuls (higher is better) ==\n");
  std::printf("%-8s %-6s %6s %12s %12s %8s %10s\n", "threads", "dtype", "rows", "kPrefill", "kDecode", "dec/pre",
              "of peak");
  double model_macs = 0;
  for (const Shape& s : kShapes) model_macs += double(s.n_in * s.n_out) * s.per_model;
  for (int threads : g_threads) {
    auto be = make_backend(threads);
    const double peak = vnni_peak_macs(threads);
    if (peak > 0) std::printf("VPDPBUSD peak, %d thread(s): %.0f G multiply-adds/s\n", threads, peak / 1e9);
    for (kvb::DType t : kQuant) {
      std::vector<std::unique_ptr<kvb::Weight>> ws;
      for (const Shape& s : kShapes) {
        std::vector<uint8_t> host = host_matrix(t, s);
        auto w = be->upload_weight(kvb::Tensor::make(t, host.data(), {s.n_out, s.n_in}));
        check(w.status());
        ws.push_back(std::move(w).value());
      }
      for (const int64_t n : kRows) {
        double model[2] = {};
        for (size_t i = 0; i < std::size(kShapes); ++i) {
          const Shape& s = kShapes[i];
          std::vector<float> x = random_floats(size_t(n * s.n_in), 3), y(size_t(n * s.n_out));
          const kvb::Tensor xt = kvb::Tensor::make(kvb::DType::kF32, x.data(), {n, s.n_in});
          const kvb::Tensor yt = kvb::Tensor::make(kvb::DType::kF32, y.data(), {n, s.n_out});
          double best[2] = {1e30, 1e30};
          for (int round = 0; round < kRounds; ++round) {  // alternating, so that load hits both alike
            for (int m = 0; m < 2; ++m) {
              const kvb::RowMode mode = m == 0 ? kvb::RowMode::kPrefill : kvb::RowMode::kDecode;
              best[m] = std::min(best[m], best_time([&] { check(be->matmul(xt, *ws[i], yt, false, mode)); }));
            }
          }
          for (int m = 0; m < 2; ++m) model[m] += best[m] * s.per_model;
        }
        const bool integer = t != kvb::DType::kQ8_0 && peak > 0;
        const std::string of_peak = integer ? fmt_pct(double(n) * model_macs / model[1] / peak) : "-";
        std::printf("%-8d %-6s %6lld %12.0f %12.0f %7.2fx %10s\n", threads, std::string(kvb::dtype_name(t)).c_str(),
                    (long long)n, double(n) / model[0], double(n) / model[1], model[0] / model[1], of_peak.c_str());
      }
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
  if (what == "all" || what == "ops") run_ops();
  if (what == "all" || what == "quant") run_quant_rows();
  return 0;
}
