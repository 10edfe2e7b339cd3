// fuse_bench: what a C2C fuser costs (issue #4), against baselines measured in the same run.
//
//   fuse_bench [--quick] [--part all|throughput|e2e] [--dtype f32|bf16|f16] [--layers N] [--tokens N]
//              [--reps N] [--models DIR] [--agent-threads T] [--agent-bin PATH] [--fuser-bin PATH]
//
// (1) Throughput: a synthetic Qwen3-0.6B <- Qwen2.5-0.5B-shaped fuser (receiver 28 layers x 8 KV
//     heads x 128, sharer 24 x 2 x 64; hidden 1024, intermediate 1024, num_layers 3, every gate on;
//     fuser::write_synthetic_fuser into a temporary directory, ~1.9 GB in f32) loaded with
//     fuser::Fuser on the CPU backend. Random sharer/receiver K/V for --tokens positions (default
//     256); one pass = Fuser::fuse over every gated-on (layer, K/V) slice. With 1 and 2 threads:
//     tokens/s, GFLOP/s (Fuser::flops_per_token), and the share of the packed GEMM peak measured in
//     the same run as gemm_bench does (Backend::matmul, best time, x [n][1024] times a 1024 x 1024
//     weight of the fuser's dtype, n = min(tokens, kFuseChunkRows): the row count the fuser's own
//     GEMMs see). Every slice and every backend call of a pass is timed (the CPU backend is
//     synchronous): tokens/s use the sum of each slice's best time over the passes; the calls split
//     a pass into GEMMs and other ops, and the GEMMs by shape, beside the same shapes measured alone.
//     Also the weight bytes and the bytes per context token that travel (sharer slices to the
//     receiver; with a kvbridge-fuser, both sides' slices to it and the fused ones back).
//     --layers N fuses only the first N receiver layers (layer map as in the full fuser); --dtype
//     bf16 halves the weights.
// (2) End to end: a stories260K sharer and an aidreams260K receiver (other tokenizer: alignment on)
//     as kvbridge-agent processes on loopback, a synthetic fuser for the pair (hidden 64), and the
//     receiver's time to first token for a question after a 99-token context the sharer holds:
//       (a) receiver mode with the receiver's embedded fuser (kvbridge-agent --fuser);
//       (b) receiver mode through a kvbridge-fuser process;
//       (c) no sharer: the receiver prefills the context as text itself.
//     Client side (request sent -> first token received) and the agent's own
//     GenerateSummary.time_to_first_token_ms, median of --reps (15; variants interleaved), with
//     GenerateSummary.fuse (fuse_ms, bytes). Models from --models, else $KVBRIDGE_MODELS, else
//     ../shared/models (as engine_bench).
// --quick: 2 layers, 32 tokens, 1 round, 3 repetitions (a smoke run; exits 0 when all works).
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "client/agent_client.h"
#include "client/agent_process.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "fuser/align.h"
#include "fuser/fuse_session.h"
#include "fuser/fuser.h"
#include "fuser/projector.h"
#include "fuser/synth_fuser.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/registry.h"

using namespace kvb;
namespace v1 = ::kvbridge::v1;
namespace fs = std::filesystem;
using client::AgentClient;
using client::AgentProcess;
using kvb::bench::best_time;
using kvb::bench::Clock;
using kvb::bench::seconds_since;

namespace {

// ---- helpers (timing: bench/bench_util.h) ----

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}


[[noreturn]] void die(const Status& s, const std::string& what) {
  fmt::print(stderr, "fuse_bench: {}: {}\n", what, s.to_string());
  std::exit(1);
}
void check(const Status& s, const std::string& what) {
  if (!s.ok()) die(s, what);
}
template <class T>
T must(Result<T> r, const std::string& what) {
  if (!r.ok()) die(r.status(), what);
  return std::move(r).value();
}

std::vector<float> random_floats(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

std::string load_average() {
  std::ifstream f("/proc/loadavg");
  std::string a, b, c;
  f >> a >> b >> c;
  return a + " " + b + " " + c;
}

uint64_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  uint64_t kb = 0;
  std::string unit;
  while (f >> key >> kb >> unit) {
    if (key == "MemAvailable:") return kb * 1024;
  }
  return 0;
}

std::string mb(double bytes) { return fmt::format("{:.1f} MB", bytes / 1e6); }

// ---- a Backend that times every call (the CPU backend's ops are synchronous: timing is exact) ----

class TimedBackend final : public Backend {
 public:
  struct ShapeStat {
    double s = 0, flops = 0;
    int64_t calls = 0;
  };
  using ShapeKey = std::tuple<int64_t, int64_t, bool>;  // n_in, n_out, accumulate (single-output calls)
  struct Profile {
    double matmul_s = 0, matmul_flops = 0, other_s = 0;
    std::map<ShapeKey, ShapeStat> shapes;
    std::map<std::string, double> other_by_op;  // seconds by op name
  };

  explicit TimedBackend(std::unique_ptr<Backend> inner) : in_(std::move(inner)) {}
  Profile take() { return std::exchange(p_, Profile{}); }

  const Device& device() const override { return in_->device(); }
  void set_n_threads(int n) override { in_->set_n_threads(n); }
  int n_threads() const override { return in_->n_threads(); }
  Result<std::unique_ptr<Weight>> upload_weight(const Tensor& host) override { return in_->upload_weight(host); }
  Status copy_from_host(void* d, const void* s, size_t n) override {
    return other("copy_from_host", [&] { return in_->copy_from_host(d, s, n); });
  }
  Status copy_to_host(void* d, const void* s, size_t n) override {
    return other("copy_to_host", [&] { return in_->copy_to_host(d, s, n); });
  }
  Status copy(void* d, const void* s, size_t n) override {
    return other("copy", [&] { return in_->copy(d, s, n); });
  }
  Status synchronize() override {
    return other("synchronize", [&] { return in_->synchronize(); });
  }
  using Backend::matmul;
  using Backend::attention;
  Status matmul(const Tensor& x, std::span<const MatmulOut> outs, RowMode mode) override {
    const auto t0 = Clock::now();
    Status s = in_->matmul(x, outs, mode);
    const double secs = seconds_since(t0);
    double flops = 0;
    for (const MatmulOut& o : outs) flops += 2.0 * double(x.shape[0]) * double(o.w->n_in()) * double(o.w->n_out());
    p_.matmul_s += secs;
    p_.matmul_flops += flops;
    if (outs.size() == 1) {
      ShapeStat& st = p_.shapes[{outs[0].w->n_in(), outs[0].w->n_out(), outs[0].accumulate}];
      st.s += secs;
      st.flops += flops;
      ++st.calls;
    }
    return s;
  }
  Status rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) override {
    return other("rms_norm", [&] { return in_->rms_norm(x, w, eps, y); });
  }
  Status rope(const Tensor& x, const Tensor& pos, const RopeParams& p) override {
    return other("rope", [&] { return in_->rope(x, pos, p); });
  }
  Status softmax(const Tensor& x) override {
    return other("softmax", [&] { return in_->softmax(x); });
  }
  Status silu_mul(const Tensor& g, const Tensor& u, const Tensor& o) override {
    return other("silu_mul", [&] { return in_->silu_mul(g, u, o); });
  }
  Status add(const Tensor& a, const Tensor& b, const Tensor& o) override {
    return other("add", [&] { return in_->add(a, b, o); });
  }
  Status attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o, float scale,
                   RowMode mode) override {
    return other("attention", [&] { return in_->attention(q, k, v, o, scale, mode); });
  }
  Status embedding(const Tensor& t, const Tensor& ids, const Tensor& o) override {
    return other("embedding", [&] { return in_->embedding(t, ids, o); });
  }
  Status convert(const Tensor& s, const Tensor& d) override {
    return other("convert", [&] { return in_->convert(s, d); });
  }
  Status gelu(const Tensor& x, const Tensor& o) override {
    return other("gelu", [&] { return in_->gelu(x, o); });
  }
  Status gate_add(const Tensor& r, const Tensor& l, const Tensor& p, const Tensor& o) override {
    return other("gate_add", [&] { return in_->gate_add(r, l, p, o); });
  }

 private:
  template <class F>
  Status other(const char* op, F&& f) {
    const auto t0 = Clock::now();
    Status s = f();
    const double secs = seconds_since(t0);
    p_.other_s += secs;
    p_.other_by_op[op] += secs;
    return s;
  }
  std::unique_ptr<Backend> in_;
  Profile p_;
};

// ---- (1) throughput ----

constexpr int32_t kQwenSharerLayers = 24, kQwenReceiverLayers = 28;

// Qwen3-0.6B <- Qwen2.5-0.5B, C2C's shipped projector sizes; only the first `layers` receiver layers
// (with the full fuser's layer map) when layers < 28.
fuser::FuserConfig qwen_pair(DType dtype, int32_t layers) {
  fuser::FuserConfig c;
  c.sharer.name = "Qwen/Qwen2.5-0.5B";
  c.sharer.n_layer = kQwenSharerLayers;
  c.sharer.n_head_kv = 2;
  c.sharer.head_dim = 64;
  c.receiver.name = "Qwen/Qwen3-0.6B";
  c.receiver.n_layer = kQwenReceiverLayers;
  c.receiver.n_head_kv = 8;
  c.receiver.head_dim = 128;
  c.hidden_dim = 1024;
  c.intermediate_dim = 1024;
  c.num_layers = 3;
  c.dtype = dtype;
  if (layers < kQwenReceiverLayers) {
    c.mapping = "explicit";
    c.layer_map = fuser::last_aligned_map(kQwenSharerLayers, kQwenReceiverLayers);
    c.layer_map.resize(size_t(layers));
    c.receiver.n_layer = layers;
  }
  return c;
}

int64_t branch_params(const fuser::FuserConfig& cfg) {
  int64_t n = 0;
  for (const fuser::TensorSpec& s : fuser::branch_tensor_specs(cfg, 0, false)) {
    int64_t e = 1;
    for (int64_t d : s.shape) e *= d;
    n += e;
  }
  return n;
}

struct ThroughputOptions {
  DType dtype = DType::kF32;
  int32_t layers = kQwenReceiverLayers;
  int tokens = 256;
  int rounds = 3;  // every cell is measured once per round, rounds spread over the run; best kept
  std::vector<int> threads;
};

struct ThroughputRow {
  int threads = 0;
  double pass_s = 1e30;              // best whole pass: every gated-on slice, all tokens
  std::vector<double> best_slice_s;  // per slice, its best time over the passes
  double peak_s = 1e30;              // best n x 1024 x 1024 matmul
  TimedBackend::Profile prof;        // of the best pass
};

void run_throughput(const ThroughputOptions& o) {
  const fuser::FuserConfig cfg = qwen_pair(o.dtype, o.layers);
  const int64_t params = branch_params(cfg) * 2 * cfg.receiver.n_layer;
  const double file_bytes = double(params) * double(dtype_block_bytes(cfg.dtype));
  const int64_t peak_rows = std::min<int64_t>(o.tokens, fuser::kFuseChunkRows);

  fmt::print("\n## (1) Fuser throughput: Qwen3-0.6B <- Qwen2.5-0.5B shape, CPU backend\n\n");
  fmt::print(
      "fuser: receiver {} of {} layers x {} KV heads x {}, sharer {} x {} x {}; hidden {}, intermediate {}, "
      "num_layers {}, every gate on, {} weights ({:.0f} M parameters, {})\n",
      cfg.receiver.n_layer, kQwenReceiverLayers, cfg.receiver.n_head_kv, cfg.receiver.head_dim, cfg.sharer.n_layer,
      cfg.sharer.n_head_kv, cfg.sharer.head_dim, cfg.hidden_dim, cfg.intermediate_dim, cfg.num_layers,
      dtype_name(cfg.dtype), double(params) / 1e6, mb(file_bytes));

  // Room: the file on disk (and in the page cache while loading) plus the packed copy in memory.
  const fs::path dir = fs::temp_directory_path() / fmt::format("kvb_fuse_bench_{}", ::getpid());
  std::error_code ec;
  const fs::space_info space = fs::space(fs::temp_directory_path(), ec);
  const double activations =
      double(o.tokens) * double(cfg.receiver.n_layer) * 2 * double(cfg.receiver.kv_dim() * 2 + cfg.sharer.kv_dim()) * 4;
  const double need_mem = 1.2 * file_bytes + activations + 256e6;
  if (!ec && double(space.available) < 1.05 * file_bytes + 64e6) {
    fmt::print(stderr, "fuse_bench: {} free in {}, the fuser needs {}: use --dtype bf16 or --layers N\n",
               mb(double(space.available)), fs::temp_directory_path().string(), mb(file_bytes));
    std::exit(1);
  }
  if (const uint64_t avail = mem_available_bytes(); avail != 0 && double(avail) < need_mem) {
    fmt::print(stderr, "fuse_bench: {} of memory available, the run needs ~{}: use --dtype bf16 or --layers N\n",
               mb(double(avail)), mb(need_mem));
    std::exit(1);
  }

  struct Cleanup {
    fs::path d;
    ~Cleanup() {
      std::error_code e;
      fs::remove_all(d, e);
    }
  } cleanup{dir};
  auto t0 = Clock::now();
  check(fuser::write_synthetic_fuser(dir.string(), cfg, 1, fuser::GatePattern::kAllOn), "writing the fuser");
  const double write_s = seconds_since(t0);
  TimedBackend be(must(cpu_device().create_backend(), "CPU backend"));
  t0 = Clock::now();
  auto f = must(fuser::Fuser::load(dir.string(), be), "loading the fuser");
  const double load_s = seconds_since(t0);
  fs::remove_all(dir, ec);  // the Fuser holds its own packed copy: free the disk and page cache now
  fmt::print("written in {:.1f} s, loaded (read, checked, packed: {} of weights) in {:.1f} s\n", write_s,
             mb(double(f->weight_bytes())), load_s);

  // Inputs: one [tokens][kv_dim] f32 block per (layer, K/V) slice the plan carries; the receiver
  // slices are restored before every pass (fusion rewrites them in place).
  const fuser::FusePlan plan = fuser::fuse_plan(*f);
  const size_t n = size_t(o.tokens), s_dim = size_t(cfg.sharer.kv_dim()), r_dim = size_t(cfg.receiver.kv_dim());
  std::vector<std::vector<float>> sharer(size_t(cfg.sharer.n_layer) * 2);
  for (bool is_v : {false, true}) {
    for (uint32_t l : is_v ? plan.sharer.v : plan.sharer.k)
      sharer[l * 2 + is_v] = random_floats(n * s_dim, 100 + l * 2 + is_v);
  }
  struct Slice {
    int32_t layer;
    bool is_v;
  };
  std::vector<Slice> slices;
  for (uint32_t l = 0; l < uint32_t(cfg.receiver.n_layer); ++l) {
    for (bool is_v : {false, true}) {
      if (f->gate(int32_t(l), is_v)) slices.push_back({int32_t(l), is_v});
    }
  }
  const std::vector<float> pristine = random_floats(slices.size() * n * r_dim, 7);
  std::vector<float> receiver(pristine.size());
  const double flops_per_pass = double(n) * double(slices.size()) * f->flops_per_token(false);

  // One pass; slice_s[i] = the time of slice i's Fuser::fuse call.
  std::vector<double> slice_s(slices.size());
  auto pass = [&] {
    std::memcpy(receiver.data(), pristine.data(), pristine.size() * sizeof(float));
    be.take();
    const auto p0 = Clock::now();
    for (size_t i = 0; i < slices.size(); ++i) {
      const Slice& s = slices[i];
      float* xs = sharer[size_t(f->sharer_layer(s.layer)) * 2 + s.is_v].data();
      float* xt = receiver.data() + i * n * r_dim;
      const auto s0 = Clock::now();
      check(f->fuse(s.layer, s.is_v, Tensor::make(DType::kF32, xs, {int64_t(n), int64_t(s_dim)}),
                    Tensor::make(DType::kF32, xt, {int64_t(n), int64_t(r_dim)})),
            "fuse");
      slice_s[i] = seconds_since(s0);
    }
    return std::make_pair(seconds_since(p0), be.take());
  };

  // The GEMM peak at the fuser's hidden size, the way gemm_bench measures its prefill cells.
  const int64_t h = cfg.hidden_dim;
  const std::vector<float> wf = random_floats(size_t(h * h), 2);
  std::vector<uint8_t> wbytes(row_bytes(cfg.dtype, h) * size_t(h));
  from_f32(cfg.dtype, wf.data(), wbytes.data(), h * h);
  const auto w = must(be.upload_weight(Tensor::make(cfg.dtype, wbytes.data(), {h, h})), "upload");
  std::vector<float> px = random_floats(size_t(peak_rows * h), 3), py(size_t(peak_rows * h));
  const Tensor pxt = Tensor::make(DType::kF32, px.data(), {peak_rows, h});
  const Tensor pyt = Tensor::make(DType::kF32, py.data(), {peak_rows, h});

  std::vector<ThroughputRow> rows;
  for (int t : o.threads) rows.push_back({.threads = t, .best_slice_s = std::vector<double>(slices.size(), 1e30)});
  (void)pass();  // warm-up: first touch of the packed weights and the scratch
  for (int round = 0; round < o.rounds; ++round) {
    for (ThroughputRow& r : rows) {
      be.set_n_threads(r.threads);
      for (int rep = 0; rep < 2; ++rep) {
        // The peak beside every pass: with 2 threads on 2 shared cores, a busy neighbour drops a
        // 2-thread op to 1-thread speed (the pool's caller never waits for a descheduled worker).
        r.peak_s = std::min(r.peak_s, best_time([&] { check(be.matmul(pxt, *w, pyt), "matmul"); }, 3, 0.5));
        const auto [secs, prof] = pass();
        for (size_t i = 0; i < slices.size(); ++i) r.best_slice_s[i] = std::min(r.best_slice_s[i], slice_s[i]);
        if (secs < r.pass_s) {
          r.pass_s = secs;
          r.prof = prof;
        }
      }
      std::fflush(stdout);
    }
  }
  be.take();

  const double peak_flops = 2.0 * double(peak_rows) * double(h) * double(h);
  fmt::print(
      "\none pass = Fuser::fuse on {} slices ({} K + {} V) x {} tokens = {:.1f} GFLOP "
      "({:.1f} MFLOP per slice-token); {} passes per thread count. \"best slices\" = the sum over slices of "
      "each slice's best time (filters load from elsewhere; tokens/s, GFLOP/s and the share use it), "
      "\"best pass\" = the best whole pass\n",
      slices.size(), plan.receiver.k.size(), plan.receiver.v.size(), n, flops_per_pass / 1e9,
      f->flops_per_token(false) / 1e6, 2 * o.rounds);
  fmt::print(
      "GEMM peak: Backend::matmul x [{}][{}] . W[{}][{}] {} (in L3), best time beside every pass, same backend; GEMM "
      "share and "
      "GFLOP/s inside GEMMs: every backend call of the best pass timed\n\n",
      peak_rows, h, h, h, dtype_name(cfg.dtype));
  fmt::print(
      "| fuser | threads | tokens | best slices ms | best pass ms | tokens/s | GFLOP/s | GEMM peak GFLOP/s "
      "| share of peak | GEMM share of pass | GFLOP/s inside GEMMs | other ops ms |\n");
  fmt::print("|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const ThroughputRow& r : rows) {
    double best_s = 0;
    for (double x : r.best_slice_s) best_s += x;
    const double gflops = flops_per_pass / best_s / 1e9, peak = peak_flops / r.peak_s / 1e9;
    fmt::print(
        "| {} layers {} | {} | {} | {:.1f} | {:.1f} | {:.0f} | {:.1f} | {:.1f} | {:.0f}% | {:.0f}% | {:.1f} "
        "| {:.1f} |\n",
        cfg.receiver.n_layer, dtype_name(cfg.dtype), r.threads, n, best_s * 1e3, r.pass_s * 1e3, double(n) / best_s,
        gflops, peak, 100 * gflops / peak, 100 * r.prof.matmul_s / r.pass_s,
        r.prof.matmul_flops / r.prof.matmul_s / 1e9, r.prof.other_s * 1e3);
  }

  for (const ThroughputRow& r : rows) {
    std::string ops;
    for (const auto& [op, secs] : r.prof.other_by_op)
      ops += fmt::format("{}{} {:.1f}", ops.empty() ? "" : ", ", op, secs * 1e3);
    fmt::print("\nother ops of the best pass, {} thread(s), ms: {}", r.threads, ops);
  }
  fmt::print("\n");

  // Why: each GEMM shape of the best pass against the same shape repeated alone (its weight hot in
  // L3; in a pass, each weight is read once, between other ops).
  fmt::print(
      "\nGEMMs of the best pass by shape, against the same shape measured alone (x [{}][n_in], one weight "
      "re-read from L3, best time):\n\n",
      peak_rows);
  fmt::print(
      "| threads | n_in -> n_out | accumulate | calls per pass | ms per pass | GFLOP/s in the fuser "
      "| GFLOP/s alone (hot) | fuser / alone |\n");
  fmt::print("|---|---|---|---|---|---|---|---|\n");
  for (const ThroughputRow& r : rows) {
    be.set_n_threads(r.threads);
    for (const auto& [key, st] : r.prof.shapes) {
      const auto [n_in, n_out, acc] = key;
      const std::vector<float> f32 = random_floats(size_t(n_in * n_out), 5);
      std::vector<uint8_t> bytes(row_bytes(cfg.dtype, n_in) * size_t(n_out));
      from_f32(cfg.dtype, f32.data(), bytes.data(), n_in * n_out);
      const auto sw = must(be.upload_weight(Tensor::make(cfg.dtype, bytes.data(), {n_out, n_in})), "upload");
      std::vector<float> x = random_floats(size_t(peak_rows * n_in), 6), y(size_t(peak_rows * n_out));
      const Tensor xt = Tensor::make(DType::kF32, x.data(), {peak_rows, n_in});
      const Tensor yt = Tensor::make(DType::kF32, y.data(), {peak_rows, n_out});
      const double alone = 2.0 * double(peak_rows) * double(n_in) * double(n_out) /
                           best_time([&] { check(be.matmul(xt, *sw, yt, acc), "matmul"); }, 3, 0.5) / 1e9;
      const double in_fuser = st.flops / st.s / 1e9;
      fmt::print("| {} | {} -> {} | {} | {} | {:.1f} | {:.1f} | {:.1f} | {:.2f} |\n", r.threads, n_in, n_out,
                 acc ? "yes" : "no", st.calls, st.s * 1e3, in_fuser, alone, in_fuser / alone);
    }
  }
  be.take();

  // Data volumes (C2C notes §1f), per context token, for this fuser's plan.
  auto per_token = [&](WireDType d, const KvLayerSet& set, const fuser::ModelSide& m) {
    return double(set.size()) * double(wire_payload_bytes(d, uint32_t(m.n_head_kv), uint32_t(m.head_dim), 1));
  };
  const WireDType dts[] = {WireDType::kF32, WireDType::kF16, WireDType::kInt8};
  fmt::print(
      "\nweights: {} on the backend ({} in the {} file); bytes per context token that travel (wire payload, "
      "no framing):\n\n",
      mb(double(f->weight_bytes())), mb(file_bytes), dtype_name(cfg.dtype));
  fmt::print("| per context token | f32 | f16 / bf16 | int8 |\n|---|---|---|---|\n");
  auto row = [&](const std::string& label, auto&& bytes) {
    fmt::print("| {} | {:.0f} | {:.0f} | {:.0f} |\n", label, bytes(dts[0]), bytes(dts[1]), bytes(dts[2]));
  };
  const KvLayerSet all_receiver = [&] {
    KvLayerSet s;
    for (uint32_t l = 0; l < uint32_t(cfg.receiver.n_layer); ++l) s.k.push_back(l), s.v.push_back(l);
    return s;
  }();
  row(fmt::format("sharer slices pulled ({} of {})", plan.sharer.size(), 2 * cfg.sharer.n_layer),
      [&](WireDType d) { return per_token(d, plan.sharer, cfg.sharer); });
  row(fmt::format("receiver slices fused ({} of {})", plan.receiver.size(), 2 * cfg.receiver.n_layer),
      [&](WireDType d) { return per_token(d, plan.receiver, cfg.receiver); });
  row("embedded fuser: total on the wire (sharer -> receiver)",
      [&](WireDType d) { return per_token(d, plan.sharer, cfg.sharer); });
  row("kvbridge-fuser: total (sharer -> receiver, both -> fuser, fused -> receiver)", [&](WireDType d) {
    return 2 * per_token(d, plan.sharer, cfg.sharer) + 2 * per_token(d, plan.receiver, cfg.receiver);
  });
  row("for scale: the receiver's own cache", [&](WireDType d) { return per_token(d, all_receiver, cfg.receiver); });
}

// ---- (2) end to end ----

constexpr const char* kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with "
    "her big red ball. One day, she saw a small dog under a tree.";
constexpr const char* kQuestion = " Then the dog";

struct E2eOptions {
  std::string models, agent_bin, fuser_bin;
  int reps = 15;
  int agent_threads = 1;
};

fuser::ModelSide side(const std::string& name, const ModelIdentity& id) {
  fuser::ModelSide s;
  s.name = name;
  s.n_layer = int32_t(id.n_layer);
  s.n_head_kv = int32_t(id.n_head_kv);
  s.head_dim = int32_t(id.head_dim);
  s.fingerprint = id.fingerprint;
  return s;
}

struct Timed {
  double client_ms = 0;  // request sent -> first token received
  v1::GenerateSummary summary;
};

Timed timed_generate(AgentClient& agent, const v1::GenerateRequest& req) {
  Timed t;
  const auto t0 = Clock::now();
  bool first = true;
  t.summary = must(agent.generate(req,
                                  [&](const v1::TokenEvent&) {
                                    if (first) t.client_ms = seconds_since(t0) * 1e3;
                                    first = false;
                                    return true;
                                  }),
                   "Generate");
  if (first) die(internal_error("no token generated"), "Generate");
  return t;
}

void run_e2e(const E2eOptions& o) {
  fmt::print("\n## (2) Receiver time to first token: stories260K sharer -> aidreams260K receiver\n\n");
  const std::string s_model = o.models + "/stories260K/stories260K.bin", s_tok = o.models + "/stories260K/tok512.bin";
  const std::string r_model = o.models + "/aidreams260K/aidreams260K.bin",
                    r_tok = o.models + "/aidreams260K/tok512.bin";
  const auto sharer_m = must(load_model(s_model, LoadOptions{s_tok}), "loading " + s_model);
  const auto receiver_m = must(load_model(r_model, LoadOptions{r_tok}), "loading " + r_model);
  const int n_ctx_tokens = int(receiver_m->tokenizer->encode(kStory, EncodeOptions{}).size());
  if (n_ctx_tokens > 100) die(invalid_argument(fmt::format("{} receiver tokens", n_ctx_tokens)), "context too long");

  const fs::path dir = fs::temp_directory_path() / fmt::format("kvb_fuse_bench_e2e_{}", ::getpid());
  fs::create_directories(dir);
  struct Cleanup {
    fs::path d;
    ~Cleanup() {
      std::error_code e;
      fs::remove_all(d, e);
    }
  } cleanup{dir};
  fuser::FuserConfig cfg;
  cfg.sharer = side("stories260K", model_identity(*sharer_m));
  cfg.receiver = side("aidreams260K", model_identity(*receiver_m));
  cfg.hidden_dim = 64;
  cfg.intermediate_dim = 64;
  cfg.num_layers = 3;
  cfg.align_enabled = true;
  const std::string fdir = (dir / "fuser").string();
  check(fuser::write_synthetic_fuser(fdir, cfg, 7, fuser::GatePattern::kAllOn), "writing the fuser");

  // The fusion compute alone, in process (1 thread): every slice over the context's positions.
  double compute_ms = 0;
  {
    auto backend = must(cpu_device().create_backend(), "CPU backend");
    backend->set_n_threads(1);
    auto f = must(fuser::Fuser::load(fdir, *backend), "loading the fuser");
    const int64_t n = n_ctx_tokens, sd = cfg.sharer.kv_dim(), rd = cfg.receiver.kv_dim();
    std::vector<float> xs = random_floats(size_t(n * sd), 1), xt = random_floats(size_t(n * rd), 2);
    compute_ms = 1e3 * best_time([&] {
                   for (int32_t l = 0; l < cfg.receiver.n_layer; ++l) {
                     for (bool is_v : {false, true}) {
                       check(f->fuse(l, is_v, Tensor::make(DType::kF32, xs.data(), {n, sd}),
                                     Tensor::make(DType::kF32, xt.data(), {n, rd})),
                             "fuse");
                     }
                   }
                 });
    fmt::print(
        "fuser: synthetic, hidden {}, intermediate {}, num_layers {}, every gate on, f32, alignment on; "
        "{} of weights; fusing all {} slices x {} tokens in process: {:.3f} ms (1 thread)\n",
        cfg.hidden_dim, cfg.intermediate_dim, cfg.num_layers, mb(double(f->weight_bytes())), 2 * cfg.receiver.n_layer,
        n, compute_ms);
  }

  auto start = [&](const std::string& bin, std::vector<std::string> args, const std::string& name) {
    client::AgentProcessOptions ao;
    ao.binary = bin;
    ao.args = std::move(args);
    ao.args.insert(ao.args.end(), {"--threads", std::to_string(o.agent_threads)});
    ao.log_path = (dir / (name + ".log")).string();
    return must(AgentProcess::start(ao), "starting " + name);
  };
  auto sharer = start(o.agent_bin,
                      {"--model", s_model, "--tokenizer", s_tok, "--name", "sharer", "--log-format", "text"}, "sharer");
  // The receiver without automatic prefix caching: the text path (c) prefills its context every
  // rep, as a receiver seeing it for the first time would.
  auto receiver = start(o.agent_bin,
                        {"--model", r_model, "--tokenizer", r_tok, "--name", "receiver", "--fuser", fdir,
                         "--log-format", "text", "--prefix-cache-bytes", "0"},
                        "receiver");
  auto fsvc = start(o.fuser_bin, {"--weights", fdir, "--log-format", "text"}, "fuser");
  auto cs = must(AgentClient::connect(sharer->address(), {}), "connect");
  auto cr = must(AgentClient::connect(receiver->address(), {}), "connect");
  fmt::print(
      "processes on loopback, --threads {} each: sharer {}, receiver {} (embedded fuser: \"{}\"), "
      "kvbridge-fuser {}\n",
      o.agent_threads, sharer->address(), receiver->address(), must(cr->get_info(), "GetInfo").fuser(),
      fsvc->address());

  v1::PrefillRequest p;
  p.set_text(kStory);
  p.set_pin(true);
  const v1::PrefillResponse cache = must(cs->prefill(p), "Prefill");
  fmt::print("context: \"{}\" ({} sharer tokens in its cache {}, {} receiver tokens); question \"{}\"\n", kStory,
             cache.n_tokens(), cache.cache_id(), n_ctx_tokens, kQuestion);

  // The sequential steps of receiver mode (agent/context_fuser.cpp), each measured alone: unary
  // round trips to the sharer, the sharer's prefill of the aligned tokens (a temporary cache), and the
  // receiver's own prefill of the context. Alignment as the receiver does it, counting its lookups
  // (one Tokenize or Detokenize RPC each when the sharer is remote).
  const Tokenizer& st = *sharer_m->tokenizer;
  const std::string ctx_text = st.decode(st.encode(kStory, EncodeOptions{true, false}));
  const std::vector<int32_t> r_ids = receiver_m->tokenizer->encode(ctx_text, EncodeOptions{true, false});
  int align_calls = 0;
  const fuser::BatchEncoder enc = fuser::local_encoder(st);
  const fuser::PieceTexts pieces = fuser::local_piece_texts(st);
  const fuser::Alignment al =
      must(fuser::align_tokens(
               r_ids, *receiver_m->tokenizer, [&](std::span<const std::string> t) { return ++align_calls, enc(t); },
               [&](std::span<const int32_t> ids) { return ++align_calls, pieces(ids); }, fuser::sharer_specials(st),
               cfg.align_strategy),
           "aligning");
  std::vector<double> rtt, s_pre, s_pre_agent, r_pre, r_pre_agent;
  for (int rep = 0; rep < std::max(3, o.reps); ++rep) {
    auto t1 = Clock::now();
    (void)must(cs->get_info(), "GetInfo");
    rtt.push_back(seconds_since(t1) * 1e3);
    v1::PrefillRequest ap;
    ap.mutable_tokens()->mutable_ids()->Add(al.sharer_ids.begin(), al.sharer_ids.end());
    ap.set_add_bos(false);
    t1 = Clock::now();
    const v1::PrefillResponse sr = must(cs->prefill(ap), "Prefill");
    s_pre.push_back(seconds_since(t1) * 1e3);
    s_pre_agent.push_back(sr.prefill_ms());
    check(cs->drop_cache(sr.cache_id()), "DropCache");
    v1::PrefillRequest rp;
    rp.mutable_tokens()->mutable_ids()->Add(r_ids.begin(), r_ids.end());
    rp.set_add_bos(false);
    t1 = Clock::now();
    const v1::PrefillResponse rr = must(cr->prefill(rp), "Prefill");
    r_pre.push_back(seconds_since(t1) * 1e3);
    r_pre_agent.push_back(rr.prefill_ms());
    check(cr->drop_cache(rr.cache_id()), "DropCache");
  }
  fmt::print(
      "steps of receiver mode measured alone (client ms / agent prefill_ms, medians): unary round trip to the "
      "sharer {:.2f} (receiver mode makes {} in sequence: GetInfo, Detokenize, {} alignment lookups, Prefill, "
      "DropCache; then one ExportCache stream); sharer prefill of the {} aligned tokens {:.2f} / {:.2f}; "
      "receiver prefill of the {} context tokens {:.2f} / {:.2f}\n",
      median(rtt), 4 + align_calls, align_calls, al.sharer_ids.size(), median(s_pre), median(s_pre_agent), r_ids.size(),
      median(r_pre), median(r_pre_agent));

  auto fused = [&](const v1::FuserRef& f) {
    v1::GenerateRequest r;
    *r.add_context() = client::cache_ref(sharer->address(), cache.cache_id());
    r.set_text(kQuestion);
    r.set_max_tokens(1);
    r.set_ignore_eos(true);
    *r.mutable_fuser() = f;
    return r;
  };
  auto text = [&](const std::string& t) {
    v1::GenerateRequest r;
    r.set_text(t);
    r.set_max_tokens(1);
    r.set_ignore_eos(true);
    return r;
  };
  v1::FuserRef embedded, remote;
  embedded.set_embedded(true);
  remote.set_address(fsvc->address());
  struct Variant {
    std::string label;
    v1::GenerateRequest req;
    std::vector<Timed> runs;
  };
  std::vector<Variant> vs = {
      {"(a) fused, embedded fuser", fused(embedded), {}},
      {"(b) fused, kvbridge-fuser", fused(remote), {}},
      {"(c) text: receiver prefills the context", text(std::string(kStory) + kQuestion), {}},
      {"question alone, no context (floor)", text(kQuestion), {}},
  };
  for (Variant& v : vs) (void)timed_generate(*cr, v.req);  // warm-up: connections, first allocations
  for (int rep = 0; rep < o.reps; ++rep) {
    for (Variant& v : vs) v.runs.push_back(timed_generate(*cr, v.req));
  }

  fmt::print(
      "\nmedian of {} runs each (variants interleaved); client = request sent -> first token received, agent = "
      "GenerateSummary.time_to_first_token_ms; fuse_ms and bytes from GenerateSummary.fuse (medians)\n\n",
      o.reps);
  fmt::print(
      "| path | client TTFT ms | (best) | agent TTFT ms | fuse_ms | context tokens | prompt tokens "
      "| sharer bytes | to fuser | from fuser |\n");
  fmt::print("|---|---|---|---|---|---|---|---|---|---|\n");
  std::vector<double> client_med;
  for (const Variant& v : vs) {
    std::vector<double> c, a, fm;
    for (const Timed& t : v.runs) {
      c.push_back(t.client_ms);
      a.push_back(t.summary.time_to_first_token_ms());
      fm.push_back(t.summary.fuse().fuse_ms());
    }
    client_med.push_back(median(c));
    const v1::GenerateSummary& s = v.runs.back().summary;
    const bool is_fused = s.has_fuse();
    fmt::print("| {} | {:.2f} | {:.2f} | {:.2f} | {} | {} | {} | {} | {} | {} |\n", v.label, median(c),
               *std::min_element(c.begin(), c.end()), median(a), is_fused ? fmt::format("{:.2f}", median(fm)) : "-",
               s.context_tokens(), s.prompt_tokens(), is_fused ? std::to_string(s.fuse().sharer_bytes()) : "-",
               is_fused ? std::to_string(s.fuse().fuser_bytes_sent()) : "-",
               is_fused ? std::to_string(s.fuse().fuser_bytes_received()) : "-");
  }
  fmt::print(
      "\nclient TTFT: (a) / (c) {:.2f}x, (b) / (c) {:.2f}x; the kvbridge-fuser hop (b) - (a): {:.2f} ms; "
      "the fusion compute alone (in process, above): {:.3f} ms\n",
      client_med[0] / client_med[2], client_med[1] / client_med[2], client_med[1] - client_med[0], compute_ms);
  must(cs->pin_cache(cache.cache_id(), false), "PinCache");
}

}  // namespace

int main(int argc, char** argv) {
  ThroughputOptions t;
  E2eOptions e;
  e.models = std::getenv("KVBRIDGE_MODELS") ? std::getenv("KVBRIDGE_MODELS") : "../shared/models";
  e.agent_bin = KVB_AGENT_BIN;
  e.fuser_bin = KVB_FUSER_BIN;
  std::string part = "all";
  bool quick = false, layers_set = false, tokens_set = false, reps_set = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has = i + 1 < argc;
    if (a == "--quick")
      quick = true;
    else if (a == "--part" && has)
      part = argv[++i];
    else if (a == "--dtype" && has) {
      const auto d = dtype_from_name(argv[++i]);
      if (!d || (*d != DType::kF32 && *d != DType::kBF16 && *d != DType::kF16)) {
        fmt::print(stderr, "fuse_bench: --dtype must be f32, bf16 or f16\n");
        return 2;
      }
      t.dtype = *d;
    } else if (a == "--layers" && has)
      t.layers = std::atoi(argv[++i]), layers_set = true;
    else if (a == "--tokens" && has)
      t.tokens = std::atoi(argv[++i]), tokens_set = true;
    else if (a == "--reps" && has)
      e.reps = std::atoi(argv[++i]), reps_set = true;
    else if (a == "--models" && has)
      e.models = argv[++i];
    else if (a == "--agent-threads" && has)
      e.agent_threads = std::atoi(argv[++i]);
    else if (a == "--agent-bin" && has)
      e.agent_bin = argv[++i];
    else if (a == "--fuser-bin" && has)
      e.fuser_bin = argv[++i];
    else {
      fmt::print(stderr,
                 "usage: fuse_bench [--quick] [--part all|throughput|e2e] [--dtype f32|bf16|f16] [--layers N] "
                 "[--tokens N] [--reps N] [--models DIR] [--agent-threads T] [--agent-bin PATH] [--fuser-bin PATH]\n");
      return 2;
    }
  }
  if (quick) {
    if (!layers_set) t.layers = 2;
    if (!tokens_set) t.tokens = 32;
    if (!reps_set) e.reps = 3;
    t.rounds = 1;
  }
  if (t.layers < 1 || t.layers > kQwenReceiverLayers || t.tokens < 1 || e.reps < 1 || e.agent_threads < 1 ||
      (part != "all" && part != "throughput" && part != "e2e")) {
    fmt::print(stderr,
               "fuse_bench: --layers in [1, 28], --tokens, --reps, --agent-threads >= 1, --part all|throughput|e2e\n");
    return 2;
  }
  t.threads = {1};
  if (std::thread::hardware_concurrency() >= 2) t.threads.push_back(2);

  std::string cmd = argv[0];
  for (int i = 1; i < argc; ++i) cmd += std::string(" ") + argv[i];
  const auto t0 = Clock::now();
  fmt::print("command: {}\n", cmd);
  fmt::print("device: {}; load average at start: {}\n", cpu_device().description(), load_average());
  if (part != "e2e") run_throughput(t);
  if (part != "throughput") run_e2e(e);
  fmt::print("\nload average at end: {}; total {:.0f} s\n", load_average(), seconds_since(t0));
  return 0;
}
