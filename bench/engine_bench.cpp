// engine_bench: prefill and decode throughput of the CPU engine, with the memory-bandwidth bound
// measured in the same run.
//
//   engine_bench [--models DIR] [--prefill N] [--decode N] [--quick] [--profile] [--threads N]
//                [--shape SPEC[@DTYPE]]... [--model FILE]... [--batch B1,B2,...]
//
// --batch measures batched decode steps instead (ModelRunner::forward_batch, B sequences one token
// each): step time, aggregate tok/s against the first B, and the profiled split per step.
// --profile adds each row's profiled prefill split (matmul, attention, other); --threads N measures
// only that thread count (default: 1 and, where there are 2 cores, 2). --shape measures a synth
// shape (engine/synth.h, e.g. qwen3-0.6b or "qwen2.5-0.5b:n_layer=4"; f32 unless @f16|@bf16|@q8_0)
// instead of the default models (repeatable); --model measures a model file (GGUF, llama2.c .bin,
// a Hugging Face directory), e.g. the one a peer runs (bench/vs_llama_cpp.sh).
//
// For stories260K (from DIR) and a synthetic stories110M-shaped model (dim 768, 12 layers,
// 12 heads, n_ff 2048, vocab 32000; F32, F16 and Q8_0 weights), with 1 and 2 threads, prints:
//   prefill tok/s (N tokens in ubatches of 512), decode tok/s, share of time in GEMM,
//   the decode bound = read bandwidth / weight bytes read per token, and the ratio to it.
// Decode is memory-bound: every token reads all layer matrices and the classifier once.
#include <fmt/format.h>

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench/bench_util.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/registry.h"

using namespace kvb;
using clock_type = kvb::bench::Clock;
using kvb::bench::seconds_since;

namespace {

// Sums [b, e) of buf with wide loads and independent accumulators, so one thread streams memory
// as fast as the core can (the compiler's default SSE2 loop would understate the machine).
__attribute__((target("avx2"))) uint64_t sum_avx2(const uint64_t* buf, size_t b, size_t e) {
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
  for (size_t i = b; i < e; i += 16) {
    s0 = _mm256_add_epi64(s0, _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + i)));
    s1 = _mm256_add_epi64(s1, _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + i + 4)));
    s2 = _mm256_add_epi64(s2, _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + i + 8)));
    s3 = _mm256_add_epi64(s3, _mm256_load_si256(reinterpret_cast<const __m256i*>(buf + i + 12)));
  }
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes),
                     _mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)));
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

uint64_t sum_portable(const uint64_t* buf, size_t b, size_t e) {
  uint64_t s[8] = {};
  for (size_t i = b; i < e; i += 8) {
    for (size_t j = 0; j < 8; ++j) s[j] += buf[i + j];
  }
  return s[0] + s[1] + s[2] + s[3] + s[4] + s[5] + s[6] + s[7];
}

// Read bandwidth in GB/s: n_threads each sum a disjoint part of a 1 GiB buffer (best of 5).
// 1 GiB is far beyond any L3 here, so this is DRAM bandwidth.
double read_bandwidth(int n_threads) {
  const size_t n = (size_t(1) << 30) / sizeof(uint64_t);
  auto* buf = static_cast<uint64_t*>(std::aligned_alloc(64, n * sizeof(uint64_t)));
  for (size_t i = 0; i < n; ++i) buf[i] = i;
  const bool avx2 = __builtin_cpu_supports("avx2");
  double best = 0;
  for (int rep = 0; rep < 5; ++rep) {
    std::vector<uint64_t> sums(static_cast<size_t>(n_threads));
    std::vector<std::thread> th;
    const auto t0 = clock_type::now();
    for (int t = 0; t < n_threads; ++t) {
      th.emplace_back([&, t] {
        const size_t b = n / size_t(n_threads) * size_t(t), e = n / size_t(n_threads) * size_t(t + 1);
        sums[size_t(t)] = avx2 ? sum_avx2(buf, b, e) : sum_portable(buf, b, e);
      });
    }
    for (auto& x : th) x.join();
    const double dt = seconds_since(t0);
    if (sums[0] == 42) std::puts("");  // keep the sums alive
    best = std::max(best, double(n * sizeof(uint64_t)) / dt / 1e9);
  }
  std::free(buf);
  return best;
}

// Bytes of weights one decode step reads: every layer matrix and norm, the final norm and the
// classifier; of the embedding table only one row (ignored), unless it is the classifier.
double decode_bytes_per_token(const Model& m) {
  double b = double(m.weight_bytes());
  if (!m.config.tied_output) b -= double(m.weights.tok_embd.nbytes());
  return b;
}

struct Row {
  std::string model;
  int threads;
  double prefill_tps, decode_tps, gemm_share, bound_tps, ratio;
  OpProfile prof;  // one profiled prefill
};

Row measure(const std::string& name, const Model& m, int threads, int n_prefill, int n_decode, double bw_gbs) {
  auto backend = cpu_device().create_backend();
  if (!backend.ok()) {
    fmt::print(stderr, "{}\n", backend.status().to_string());
    std::exit(1);
  }
  (*backend)->set_n_threads(threads);
  auto runner = ModelRunner::create(m, **backend, RunnerOptions{.n_batch = 512, .profile = false});
  if (!runner.ok()) {
    fmt::print(stderr, "{}\n", runner.status().to_string());
    std::exit(1);
  }
  const int n_ctx = n_prefill + n_decode + 8;
  auto cache = (*runner)->new_cache(n_ctx);
  if (!cache.ok()) {
    fmt::print(stderr, "{}\n", cache.status().to_string());
    std::exit(1);
  }
  std::vector<int32_t> prompt(static_cast<size_t>(n_prefill));
  for (int i = 0; i < n_prefill; ++i) prompt[size_t(i)] = 3 + (i * 7919) % (m.config.n_vocab - 3);
  std::vector<float> logits(size_t(m.config.n_vocab));
  auto check = [](const Status& s) {
    if (!s.ok()) {
      fmt::print(stderr, "{}\n", s.to_string());
      std::exit(1);
    }
  };

  // Warm-up (page in weights, spin up the pool), then prefill: best of 2.
  check((*runner)->forward(**cache, std::span(prompt).first(std::min<size_t>(16, prompt.size())), logits));
  double prefill_s = 1e30;
  for (int rep = 0; rep < 2; ++rep) {
    (*cache)->clear();
    const auto t0 = clock_type::now();
    check((*runner)->forward(**cache, prompt, logits));
    prefill_s = std::min(prefill_s, seconds_since(t0));
  }
  // Decode n_decode tokens after a short context.
  (*cache)->clear();
  check((*runner)->forward(**cache, std::span(prompt).first(8), logits));
  int32_t tok = 5;
  const auto t1 = clock_type::now();
  for (int i = 0; i < n_decode; ++i) {
    check((*runner)->forward(**cache, std::span(&tok, 1), logits));
    tok = 3 + (tok * 31 + i) % (m.config.n_vocab - 3);
  }
  const double decode_s = seconds_since(t1);

  // GEMM share of a profiled prefill (the CPU backend's ops are synchronous: timing is exact).
  auto prof_runner = ModelRunner::create(m, **backend, RunnerOptions{.n_batch = 512, .profile = true});
  check(prof_runner.status());
  (*cache)->clear();
  check((*prof_runner)->forward(**cache, prompt, logits));
  const OpProfile& p = (*prof_runner)->profile();

  Row r;
  r.model = name;
  r.threads = threads;
  r.prefill_tps = n_prefill / prefill_s;
  r.decode_tps = n_decode / decode_s;
  r.gemm_share = p.total() > 0 ? p.matmul_s / p.total() : 0;
  r.prof = p;
  r.bound_tps = bw_gbs * 1e9 / decode_bytes_per_token(m);
  r.ratio = r.decode_tps / r.bound_tps;
  return r;
}

// Batched decode (ModelRunner::forward_batch): B sequences with a 64-token context each, one decode
// token per sequence per step; per B the step time, the aggregate tokens/s against B = 1 and the
// profiled split of a step. Prints one table per model.
void measure_batched(const Model& m, int threads, const std::vector<int>& batches, int steps) {
  auto backend = cpu_device().create_backend();
  if (!backend.ok()) std::exit(1);
  (*backend)->set_n_threads(threads);
  auto check = [](const Status& s) {
    if (!s.ok()) {
      fmt::print(stderr, "{}\n", s.to_string());
      std::exit(1);
    }
  };
  fmt::print("\n| batch | step ms | tok/s | vs batch 1 | matmul ms | attention ms | other ms |\n|---|---|---|---|---|---|---|\n");
  double tps1 = 0;
  for (int b : batches) {
    for (bool prof : {false, true}) {
      auto runner = ModelRunner::create(m, **backend, RunnerOptions{.n_batch = std::max(b, 64), .profile = prof});
      check(runner.status());
      std::vector<std::unique_ptr<KvCache>> caches;
      std::vector<std::vector<float>> logits(size_t(b), std::vector<float>(size_t(m.config.n_vocab)));
      std::vector<int32_t> toks(static_cast<size_t>(b));
      std::vector<int32_t> ctx(64);
      for (int i = 0; i < 64; ++i) ctx[size_t(i)] = 3 + (i * 7919) % (m.config.n_vocab - 3);
      for (int i = 0; i < b; ++i) {
        auto c = (*runner)->new_cache(64 + steps + 8);
        check(c.status());
        caches.push_back(std::move(c).value());
        check((*runner)->forward(*caches.back(), ctx, logits[size_t(i)]));
        toks[size_t(i)] = 5 + i;
      }
      auto step = [&] {
        std::vector<SeqStep> st;
        for (int i = 0; i < b; ++i) {
          st.push_back({caches[size_t(i)].get(), std::span<const int32_t>(&toks[size_t(i)], 1), logits[size_t(i)].data(), true});
        }
        check((*runner)->forward_batch(st));
      };
      step();  // warm-up
      const auto t0 = clock_type::now();
      for (int k = 1; k < steps; ++k) step();
      const double step_s = seconds_since(t0) / (steps - 1);
      if (!prof) {
        if (b == batches.front()) tps1 = b / step_s;
        fmt::print("| {} | {:.2f} | {:.1f} | {:.2f}x |", b, step_s * 1e3, b / step_s, (b / step_s) / tps1);
      } else {
        const OpProfile& p = (*runner)->profile();
        const double n = steps;
        fmt::print(" {:.2f} | {:.2f} | {:.2f} |\n", 1e3 * p.matmul_s / n, 1e3 * p.attention_s / n, 1e3 * p.other_s / n);
      }
      std::fflush(stdout);
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string models = std::getenv("KVBRIDGE_MODELS") ? std::getenv("KVBRIDGE_MODELS") : "../shared/models";
  int n_prefill = 512, n_decode = 64;
  bool quick = false, profile = false;
  int only_threads = 0;
  std::vector<std::string> shapes, model_files;
  std::vector<int> batches;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--models" && i + 1 < argc) models = argv[++i];
    else if (a == "--prefill" && i + 1 < argc) n_prefill = std::atoi(argv[++i]);
    else if (a == "--decode" && i + 1 < argc) n_decode = std::atoi(argv[++i]);
    else if (a == "--quick") quick = true;
    else if (a == "--profile") profile = true;
    else if (a == "--threads" && i + 1 < argc) only_threads = std::atoi(argv[++i]);
    else if (a == "--shape" && i + 1 < argc) shapes.push_back(argv[++i]);
    else if (a == "--model" && i + 1 < argc) model_files.push_back(argv[++i]);
    else if (a == "--batch" && i + 1 < argc) {
      for (std::string b = argv[++i]; !b.empty();) {
        const size_t c = b.find(',');
        batches.push_back(std::atoi(b.substr(0, c).c_str()));
        b = c == std::string::npos ? "" : b.substr(c + 1);
      }
    } else {
      fmt::print(stderr,
                 "usage: engine_bench [--models DIR] [--prefill N] [--decode N] [--quick] [--profile] [--threads N] "
                 "[--shape SPEC[@DTYPE]]... [--model FILE]... [--batch B1,B2,...]\n");
      return 2;
    }
  }
  if (n_prefill < 16 || n_decode < 1) {
    fmt::print(stderr, "--prefill must be >= 16 and --decode >= 1\n");
    return 2;
  }
  const int max_threads = int(std::max(1u, std::thread::hardware_concurrency()));
  std::vector<int> thread_counts{1};
  if (max_threads >= 2) thread_counts.push_back(2);
  if (only_threads > 0) thread_counts = {std::min(only_threads, 2)};

  fmt::print("device: {}\n", cpu_device().description());
  std::vector<double> bw(3, 0.0);
  for (int t : thread_counts) {
    bw[size_t(t)] = read_bandwidth(t);
    fmt::print("read bandwidth, {} thread(s): {:.1f} GB/s (sum over a 1 GiB buffer)\n", t, bw[size_t(t)]);
  }

  struct Subject {
    std::string name;
    std::unique_ptr<Model> model;
  };
  std::vector<Subject> subjects;
  // One synthetic subject: spec at dtype.
  const auto add_synth = [&](const std::string& spec, DType t) {
    const auto t0 = clock_type::now();
    auto m = synth_model(spec, t, 1);
    if (!m.ok()) {
      fmt::print(stderr, "synth {}: {}\n", spec, m.status().to_string());
      return false;
    }
    fmt::print("synthesized {} {} ({:.0f} MB of weights) in {:.1f} s\n", spec, dtype_name(t),
               double((*m)->weight_bytes()) / 1e6, seconds_since(t0));
    subjects.push_back({fmt::format("{} {}", spec, dtype_name(t)), std::move(m).value()});
    return true;
  };
  for (const std::string& s : shapes) {
    const size_t at = s.rfind('@');
    DType t = DType::kF32;
    if (at != std::string::npos) {
      const std::string d = s.substr(at + 1);
      if (d == "f16") t = DType::kF16;
      else if (d == "bf16") t = DType::kBF16;
      else if (d == "q8_0") t = DType::kQ8_0;
      else if (d != "f32") {
        fmt::print(stderr, "--shape {}: unknown dtype '{}' (f32, f16, bf16, q8_0)\n", s, d);
        return 2;
      }
    }
    if (!add_synth(s.substr(0, at), t)) return 1;
  }
  for (const std::string& f : model_files) {
    auto m = load_model(f);
    if (!m.ok()) {
      fmt::print(stderr, "{}: {}\n", f, m.status().to_string());
      return 1;
    }
    subjects.push_back({fmt::format("{} ({})", f, dtype_name((*m)->weights.layers[0].wq.dtype)), std::move(m).value()});
  }
  if (shapes.empty() && model_files.empty()) {  // the default subjects: stories260K and stories110M in three dtypes
    if (auto m = load_model(models + "/stories260K/stories260K.gguf"); m.ok()) {
      subjects.push_back({"stories260K f32", std::move(m).value()});
    } else {
      fmt::print(stderr, "skipping stories260K: {}\n", m.status().to_string());
    }
    for (DType t : quick ? std::vector<DType>{DType::kF32} : std::vector<DType>{DType::kF32, DType::kF16, DType::kQ8_0}) {
      if (!add_synth("stories110M", t)) return 1;
    }
  }

  if (!batches.empty()) {  // --batch: batched decode steps only
    for (const Subject& s : subjects) {
      for (int t : thread_counts) {
        fmt::print("\n{}, {} thread(s), batched decode steps (forward_batch):", s.name, t);
        measure_batched(*s.model, t, batches, n_decode);
      }
    }
    return 0;
  }
  fmt::print("\n| model | threads | prefill {} tok/s | decode tok/s | GEMM share (prefill) | decode bound tok/s | decode / bound |\n",
             n_prefill);
  fmt::print("|---|---|---|---|---|---|---|\n");
  for (const Subject& s : subjects) {
    for (int t : thread_counts) {
      const Row r = measure(s.name, *s.model, t, n_prefill, n_decode, bw[size_t(t)]);
      fmt::print("| {} | {} | {:.0f} | {:.1f} | {:.0f}% | {:.1f} | {:.2f} |\n", r.model, r.threads, r.prefill_tps,
                 r.decode_tps, 100 * r.gemm_share, r.bound_tps, r.ratio);
      if (profile) {  // --profile: where the profiled prefill's time went
        fmt::print("|   profile: matmul {:.1f} ms, attention {:.1f} ms, other {:.1f} ms |\n", 1e3 * r.prof.matmul_s,
                   1e3 * r.prof.attention_s, 1e3 * r.prof.other_s);
      }
      std::fflush(stdout);
    }
  }
  fmt::print("\npeers on the same stories110M shape, 2 threads (issue #2, measured on this machine kind):\n"
             "  llama.cpp decode f32 98 tok/s (0.57 of bound), f16 172 (0.50), q8_0 267 (0.42);\n"
             "  llama.cpp prefill 512: f32 1458 tok/s, f16 1635, q8_0 1334; llama2.c run.c decode f32 129 (0.76)\n"
             "  (bench/vs_llama_cpp.sh measures llama.cpp in the same run, on the same files)\n");
  return 0;
}
