// gpu_bench: the engine on a CUDA GPU against the GPU's own limits, measured in the same run, and
// KV cache transfer rates per transport against a raw device copy. Not a test.
//
//   gpu_bench [--device cuda:N] [--models qwen3-0.6b,llama3-8b] [--dtype bf16|f16] [--prefill N]
//             [--decode N] [--layers N] [--transfer-tokens N] [--skip-transfers]
//
// Bounds (measured first, on the chosen GPU):
//   copy bandwidth  cudaMemcpyAsync device → device of a 1 GiB buffer, best of 10, counted as
//                   2·bytes per copy (it reads and writes every byte): what a kernel streaming
//                   weights from HBM can read at best;
//   GEMM peak       cublasGemmEx bf16 × bf16 → f32 (CUBLAS_COMPUTE_32F, as kernels/cuda/matmul.cu
//                   calls it) at 8192³, best of 10, TFLOP/s.
// Models: engine/synth.h presets (random weights, real shapes), synthesized in host memory in
// --dtype (bf16 by default) and uploaded by ModelRunner as the agent does; --layers N keeps the
// first N layers (the shape of each layer is unchanged; a quicker run of a big preset).
// Per model, for batch 1 and batch 8:
//   prefill tok/s   N prompt tokens per sequence, one ModelRunner::forward (ubatches of 512);
//                   batch 8 = the 8 sequences' prefills back to back;
//   decode tok/s    tokens per second over all sequences, greedy (argmax of the returned logits);
//                   batch 8 = 8 independent sessions interleaved one token each per turn, as the
//                   agent's engine loop runs concurrent Generates: ModelRunner::forward takes one
//                   sequence, the engine has no batched decode yet, so each session's step reads
//                   every weight again and the bound is the same as batch 1's;
//   decode bound    copy bandwidth / weight bytes read per token (every layer matrix and the
//                   classifier once; the embedding lookup reads one row);
//   prefill MFU     prefill FLOPs (2 · matrix parameters per token, attention excluded) / GEMM peak.
// CUDA graphs: batch 1 decode with each step as one CUDA graph (the default, the table above)
// against a runner with RunnerOptions::graphs off, and how many steps ran as graphs.
// Transfers: a cache of the llama3-8b shape (32 layers × K,V × --transfer-tokens × 8 × 128, f32:
// 256 MiB at 1024 tokens) moved in one transfer per (layer, K|V) slice by each transport
// (transport/kv_transport.h: register → metadata → connect → post → wait), against one raw
// cudaMemcpy device → device of the same bytes:
//   in-process  pinned host → pinned host (memcpy; the reference implementation)
//   grpc        pinned host → pinned host over an in-memory BytePipe (the framing, not a network)
//   cuda-ipc    device → device on one GPU, one process (the sharer's pointer, a D2D copy)
//   nccl        GPU 0 → GPU 1 (n/a with one GPU, or without NCCL in the build)
// A transport that cannot run here prints "n/a" and why.
//
// Without a usable GPU it prints one line and exits 77.
#include <cublas_v2.h>
#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bench/bench_util.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "engine/synth.h"
#include "kernels/registry.h"
#include "transport/byte_pipe.h"
#include "transport/cuda/cuda_ipc_transport.h"
#include "transport/grpc_stream_transport.h"
#include "transport/in_process_transport.h"
#include "transport/kv_transport.h"
#if KVB_BENCH_NCCL
#include "transport/cuda/nccl_transport.h"
#endif

using namespace kvb;
using clock_type = kvb::bench::Clock;
using kvb::bench::seconds_since;

namespace {

[[noreturn]] void die(const std::string& what) {
  fmt::print(stderr, "gpu_bench: {}\n", what);
  std::exit(1);
}
void check(const Status& s, const std::string& what) {
  if (!s.ok()) die(what + ": " + s.to_string());
}
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) die(fmt::format("{}: {}", what, cudaGetErrorString(e)));
}
#define CUDA_OK(expr) check_cuda((expr), #expr)

// ---- bounds ----

// Device → device copy bandwidth in GB/s, counting the read and the write (2·bytes per copy).
double copy_bandwidth_gbs(int dev) {
  const size_t bytes = size_t(1) << 30;
  void *a = nullptr, *b = nullptr;
  CUDA_OK(cudaSetDevice(dev));
  CUDA_OK(cudaMalloc(&a, bytes));
  CUDA_OK(cudaMalloc(&b, bytes));
  CUDA_OK(cudaMemset(a, 1, bytes));
  cudaEvent_t e0, e1;
  CUDA_OK(cudaEventCreate(&e0));
  CUDA_OK(cudaEventCreate(&e1));
  CUDA_OK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));  // warm-up
  float best_ms = 1e30f;
  for (int rep = 0; rep < 10; ++rep) {
    CUDA_OK(cudaEventRecord(e0));
    CUDA_OK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice));
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
    best_ms = std::min(best_ms, ms);
  }
  CUDA_OK(cudaEventDestroy(e0));
  CUDA_OK(cudaEventDestroy(e1));
  CUDA_OK(cudaFree(a));
  CUDA_OK(cudaFree(b));
  return 2.0 * double(bytes) / (double(best_ms) * 1e-3) / 1e9;
}

// One raw device → device copy of `bytes`: payload GB/s (bytes / time), the transfers' yardstick.
double raw_copy_gbs(int dev, size_t bytes) {
  void *a = nullptr, *b = nullptr;
  CUDA_OK(cudaSetDevice(dev));
  CUDA_OK(cudaMalloc(&a, bytes));
  CUDA_OK(cudaMalloc(&b, bytes));
  CUDA_OK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
  CUDA_OK(cudaDeviceSynchronize());
  double best = 1e30;
  for (int rep = 0; rep < 5; ++rep) {
    const auto t0 = clock_type::now();
    CUDA_OK(cudaMemcpy(b, a, bytes, cudaMemcpyDeviceToDevice));
    CUDA_OK(cudaDeviceSynchronize());
    best = std::min(best, seconds_since(t0));
  }
  CUDA_OK(cudaFree(a));
  CUDA_OK(cudaFree(b));
  return double(bytes) / best / 1e9;
}

#define CUBLAS_OK(expr)                                                                     \
  do {                                                                                      \
    const cublasStatus_t s_ = (expr);                                                       \
    if (s_ != CUBLAS_STATUS_SUCCESS) die(fmt::format("{}: {}", #expr, cublasGetStatusString(s_))); \
  } while (0)

// cuBLAS bf16 GEMM throughput at n³ (f32 accumulation), TFLOP/s.
double gemm_peak_tflops(int dev, int n = 8192) {
  CUDA_OK(cudaSetDevice(dev));
  const size_t elems = size_t(n) * size_t(n);
  void *a = nullptr, *b = nullptr, *c = nullptr;
  CUDA_OK(cudaMalloc(&a, elems * 2));
  CUDA_OK(cudaMalloc(&b, elems * 2));
  CUDA_OK(cudaMalloc(&c, elems * 4));
  CUDA_OK(cudaMemset(a, 0, elems * 2));  // zeros: the timing does not depend on the values
  CUDA_OK(cudaMemset(b, 0, elems * 2));
  cublasHandle_t h = nullptr;
  CUBLAS_OK(cublasCreate(&h));
  const float alpha = 1.0f, beta = 0.0f;
  auto gemm = [&] {
    CUBLAS_OK(cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &beta,
                           c, CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  };
  cudaEvent_t e0, e1;
  CUDA_OK(cudaEventCreate(&e0));
  CUDA_OK(cudaEventCreate(&e1));
  gemm();
  CUDA_OK(cudaDeviceSynchronize());
  float best_ms = 1e30f;
  for (int rep = 0; rep < 10; ++rep) {
    CUDA_OK(cudaEventRecord(e0));
    gemm();
    CUDA_OK(cudaEventRecord(e1));
    CUDA_OK(cudaEventSynchronize(e1));
    float ms = 0;
    CUDA_OK(cudaEventElapsedTime(&ms, e0, e1));
    best_ms = std::min(best_ms, ms);
  }
  CUDA_OK(cudaEventDestroy(e0));
  CUDA_OK(cudaEventDestroy(e1));
  CUBLAS_OK(cublasDestroy(h));
  CUDA_OK(cudaFree(a));
  CUDA_OK(cudaFree(b));
  CUDA_OK(cudaFree(c));
  return 2.0 * double(n) * double(n) * double(n) / (double(best_ms) * 1e-3) / 1e12;
}

// ---- the engine ----

// Bytes a decode step reads from weights: every layer matrix and the classifier.
double decode_bytes_per_token(const Model& m) {
  double b = double(m.weights.output.nbytes());
  for (const LlamaLayerWeights& l : m.weights.layers) {
    for (const Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) b += double(t->nbytes());
  }
  return b;
}

// Multiply-adds × 2 of one token through every matrix (attention scores excluded).
double flops_per_token(const Model& m) {
  double p = double(m.weights.output.numel());
  for (const LlamaLayerWeights& l : m.weights.layers) {
    for (const Tensor* t : {&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down}) p += double(t->numel());
  }
  return 2.0 * p;
}

struct Row {
  int batch = 1;
  double prefill_tps = 0, decode_tps = 0;
};

Row measure(ModelRunner& runner, const Model& m, int batch, int n_prefill, int n_decode) {
  const int32_t n_vocab = m.config.n_vocab;
  std::vector<std::unique_ptr<KvCache>> caches;
  for (int s = 0; s < batch; ++s) {
    auto c = runner.new_cache(n_prefill + n_decode + 8);
    check(c.status(), "allocating a cache");
    caches.push_back(std::move(c).value());
  }
  std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(batch));
  for (int s = 0; s < batch; ++s) {
    for (int i = 0; i < n_prefill; ++i) prompts[size_t(s)].push_back(3 + (i * 7919 + s * 131) % (n_vocab - 3));
  }
  std::vector<std::vector<float>> logits(static_cast<size_t>(batch), std::vector<float>(size_t(n_vocab)));

  // Warm-up: scratch growth, cuBLAS heuristics, the first launches.
  check(runner.forward(*caches[0], std::span(prompts[0]).first(std::min(16, n_prefill)), logits[0]), "warm-up");
  int32_t t = 5;
  check(runner.forward(*caches[0], std::span(&t, 1), logits[0]), "warm-up decode");
  caches[0]->clear();

  Row r;
  r.batch = batch;
  auto t0 = clock_type::now();
  for (int s = 0; s < batch; ++s) check(runner.forward(*caches[size_t(s)], prompts[size_t(s)], logits[size_t(s)]), "prefill");
  r.prefill_tps = double(batch) * n_prefill / seconds_since(t0);

  t0 = clock_type::now();
  for (int i = 0; i < n_decode; ++i) {
    for (int s = 0; s < batch; ++s) {
      const int32_t next = argmax(logits[size_t(s)]);
      check(runner.forward(*caches[size_t(s)], std::span(&next, 1), logits[size_t(s)]), "decode");
    }
  }
  r.decode_tps = double(batch) * n_decode / seconds_since(t0);
  return r;
}

// ---- transfers ----

// Moves `bytes` from src (sharer) to dst (receiver) in `slice`-byte transfers, recvs posted first,
// both sides in the same order (what NCCL needs). Seconds for the timed round (after a warm-up
// round that also covers an asynchronous connect), or the error.
Result<double> time_transfer(transport::KvTransport& sharer, transport::KvTransport& receiver,
                             const transport::KvRegion& src, const transport::KvRegion& dst, size_t slice) {
  using namespace transport;
  KVB_ASSIGN_OR_RETURN(const std::string md_s, sharer.metadata());
  KVB_ASSIGN_OR_RETURN(const std::string md_r, receiver.metadata());
  KVB_RETURN_IF_ERROR(sharer.connect(md_r));
  KVB_RETURN_IF_ERROR(receiver.connect(md_s));
  KVB_ASSIGN_OR_RETURN(MemoryHandle hs, sharer.register_memory(src));
  KVB_ASSIGN_OR_RETURN(MemoryHandle hr, receiver.register_memory(dst));
  double seconds = 0;
  for (int round = 0; round < 2; ++round) {
    const auto t0 = clock_type::now();
    std::vector<Transfer> xs;
    const uint64_t tag0 = uint64_t(round) << 32;
    for (size_t off = 0, i = 0; off < src.bytes; off += slice, ++i) {
      KVB_ASSIGN_OR_RETURN(Transfer x, receiver.post_recv(hr, off, std::min(slice, src.bytes - off), tag0 + i));
      xs.push_back(std::move(x));
    }
    for (size_t off = 0, i = 0; off < src.bytes; off += slice, ++i) {
      KVB_ASSIGN_OR_RETURN(Transfer x, sharer.post_send(hs, off, std::min(slice, src.bytes - off), tag0 + i));
      xs.push_back(std::move(x));
    }
    for (Transfer& x : xs) {
      const PollResult p = x.wait();
      if (!p.done()) return p.status;
    }
    seconds = seconds_since(t0);
  }
  return seconds;
}

// Host or device memory for one side of a transfer, freed on scope exit.
struct Region {
  transport::KvRegion r;
  bool pinned_host = false;
  Region(size_t bytes, bool device, int dev) {
    r.bytes = bytes;
    r.is_device = device;
    r.device = device ? dev : -1;
    if (device) {
      CUDA_OK(cudaSetDevice(dev));
      CUDA_OK(cudaMalloc(&r.ptr, bytes));
      CUDA_OK(cudaMemset(r.ptr, 1, bytes));
    } else {
      CUDA_OK(cudaHostAlloc(&r.ptr, bytes, cudaHostAllocPortable));
      std::memset(r.ptr, 1, bytes);
      pinned_host = true;
    }
  }
  ~Region() {
    if (pinned_host) (void)cudaFreeHost(r.ptr);
    else (void)cudaFree(r.ptr);
  }
  Region(const Region&) = delete;
  Region& operator=(const Region&) = delete;
};

struct TransportCase {
  std::string name;
  std::string memory;  // what moves where, for the table
  // Makes the pair, or says why it cannot run here (→ "n/a").
  std::function<Result<std::pair<std::unique_ptr<transport::KvTransport>, std::unique_ptr<transport::KvTransport>>>()>
      make;
  bool device = false;
  int src_dev = 0, dst_dev = 0;
};

void bench_transfers(int dev, int transfer_tokens) {
  using namespace transport;
  // The llama3-8b shape: 32 layers × K,V × tokens × 8 kv heads × 128, f32; one slice per (layer, K|V).
  const size_t slice = size_t(transfer_tokens) * 8 * 128 * 4;
  const size_t bytes = slice * 32 * 2;
  const double raw = raw_copy_gbs(dev, bytes);
  int n_gpus = 0;
  if (cudaGetDeviceCount(&n_gpus) != cudaSuccess) n_gpus = 0;

  auto pipe_keep = std::make_shared<std::vector<std::shared_ptr<MemoryPipeFaults>>>();
  std::vector<TransportCase> cases;
  cases.push_back({"in-process", "pinned host → pinned host",
                   []() -> Result<std::pair<std::unique_ptr<KvTransport>, std::unique_ptr<KvTransport>>> {
                     InProcessTransport::Pair p = InProcessTransport::create_pair();
                     return std::make_pair(std::move(p.sharer), std::move(p.receiver));
                   },
                   false, dev, dev});
  cases.push_back({"grpc", "pinned host → pinned host, in-memory pipe",
                   [pipe_keep]() -> Result<std::pair<std::unique_ptr<KvTransport>, std::unique_ptr<KvTransport>>> {
                     MemoryPipePair pipe = make_memory_pipe();
                     pipe_keep->push_back(pipe.faults);
                     return std::make_pair(GrpcStreamTransport::create(Role::kSharer, std::move(pipe.a)),
                                           GrpcStreamTransport::create(Role::kReceiver, std::move(pipe.b)));
                   },
                   false, dev, dev});
  cases.push_back({"cuda-ipc", "device → device, one GPU",
                   [dev, pipe_keep]() -> Result<std::pair<std::unique_ptr<KvTransport>, std::unique_ptr<KvTransport>>> {
                     MemoryPipePair pipe = make_memory_pipe();
                     pipe_keep->push_back(pipe.faults);
                     KVB_ASSIGN_OR_RETURN(auto s, CudaIpcTransport::create(Role::kSharer, dev, std::move(pipe.a)));
                     KVB_ASSIGN_OR_RETURN(auto r, CudaIpcTransport::create(Role::kReceiver, dev, std::move(pipe.b)));
                     return std::make_pair(std::move(s), std::move(r));
                   },
                   true, dev, dev});
  const int peer = dev == 0 ? 1 : 0;
  cases.push_back({"nccl", fmt::format("cuda:{} → cuda:{}", dev, peer),
                   [dev, peer, n_gpus]() -> Result<std::pair<std::unique_ptr<KvTransport>, std::unique_ptr<KvTransport>>> {
#if KVB_BENCH_NCCL
                     if (n_gpus < 2) return unavailable("needs two GPUs (NCCL refuses two ranks on one GPU)");
                     KVB_ASSIGN_OR_RETURN(auto s, NcclTransport::create(Role::kSharer, dev));
                     KVB_ASSIGN_OR_RETURN(auto r, NcclTransport::create(Role::kReceiver, peer));
                     return std::make_pair(std::move(s), std::move(r));
#else
                     (void)dev, (void)peer, (void)n_gpus;
                     return unavailable("built without NCCL");
#endif
                   },
                   true, dev, peer});

  fmt::print("\ncache transfer: {} MiB ({} tokens of the llama3-8b shape, f32), {} slices of {} KiB\n", bytes >> 20,
             transfer_tokens, bytes / slice, slice >> 10);
  fmt::print("raw cudaMemcpy device → device on cuda:{}: {:.1f} GB/s\n\n", dev, raw);
  fmt::print("| transport | memory | GB/s | / raw device copy |\n|---|---|---|---|\n");
  for (const TransportCase& c : cases) {
    auto pair = c.make();
    if (!pair.ok()) {
      fmt::print("| {} | {} | n/a | n/a ({}) |\n", c.name, c.memory, pair.status().message());
      continue;
    }
    Region src(bytes, c.device, c.src_dev), dst(bytes, c.device, c.dst_dev);
    auto secs = time_transfer(*pair->first, *pair->second, src.r, dst.r, slice);
    if (!secs.ok()) {
      fmt::print("| {} | {} | n/a | n/a ({}) |\n", c.name, c.memory, secs.status().to_string());
      continue;
    }
    const double gbs = double(bytes) / *secs / 1e9;
    fmt::print("| {} | {} | {:.1f} | {:.2f} |\n", c.name, c.memory, gbs, gbs / raw);
  }
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  for (std::string item; std::getline(ss, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string device = "cuda:0";
  std::vector<std::string> models{"qwen3-0.6b", "llama3-8b"};
  DType dtype = DType::kBF16;
  int n_prefill = 512, n_decode = 64, n_layers = 0, transfer_tokens = 1024;
  bool transfers = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has = i + 1 < argc;
    if (a == "--device" && has) device = argv[++i];
    else if (a == "--models" && has) models = split(argv[++i]);
    else if (a == "--dtype" && has) {
      const std::string d = argv[++i];
      if (d == "bf16") dtype = DType::kBF16;
      else if (d == "f16") dtype = DType::kF16;
      else die("--dtype must be bf16 or f16");
    } else if (a == "--prefill" && has) n_prefill = std::atoi(argv[++i]);
    else if (a == "--decode" && has) n_decode = std::atoi(argv[++i]);
    else if (a == "--layers" && has) n_layers = std::atoi(argv[++i]);
    else if (a == "--transfer-tokens" && has) transfer_tokens = std::atoi(argv[++i]);
    else if (a == "--skip-transfers") transfers = false;
    else {
      fmt::print(stderr,
                 "usage: gpu_bench [--device cuda:N] [--models qwen3-0.6b,llama3-8b] [--dtype bf16|f16] [--prefill N]\n"
                 "                 [--decode N] [--layers N] [--transfer-tokens N] [--skip-transfers]\n");
      return 2;
    }
  }
  if (n_prefill < 16 || n_decode < 1 || n_layers < 0 || transfer_tokens < 1) {
    die("--prefill must be >= 16, --decode >= 1, --layers >= 0, --transfer-tokens >= 1");
  }

  auto found = find_device(device);
  if (!found.ok()) {
    fmt::print("gpu_bench: no usable GPU ({}); nothing to measure\n", found.status().to_string());
    return 77;
  }
  const Device& gpu = **found;
  if (gpu.buffer_type().is_host()) die("--device must name a CUDA device, got " + device);
  const int dev = std::atoi(gpu.name().c_str() + 5);  // "cuda:N"

  fmt::print("device: {} ({})\n", gpu.name(), gpu.description());
  const double bw = copy_bandwidth_gbs(dev);
  const double peak = gemm_peak_tflops(dev);
  fmt::print("copy bandwidth (device → device, read + write): {:.0f} GB/s\n", bw);
  fmt::print("GEMM peak (cuBLAS bf16 × bf16 → f32, 8192³): {:.0f} TFLOP/s\n", peak);

  auto backend = gpu.create_backend();
  check(backend.status(), "creating the backend");

  fmt::print("\n| model | weights | batch | prefill {} tok/s | prefill MFU | decode tok/s | decode bound tok/s | decode / bound |\n",
             n_prefill);
  fmt::print("|---|---|---|---|---|---|---|---|\n");
  struct GraphRow {
    std::string spec;
    double with_graphs = 0, op_by_op = 0;
    GraphStats stats;
  };
  std::vector<GraphRow> graph_rows;
  for (const std::string& name : models) {
    const std::string spec = n_layers > 0 ? fmt::format("{}:n_layer={}", name, n_layers) : name;
    const auto t0 = clock_type::now();
    auto model = synth_model(spec, dtype, 1);
    check(model.status(), "synthesizing " + spec);
    const double synth_s = seconds_since(t0);
    auto runner = ModelRunner::create(**model, **backend, RunnerOptions{.n_batch = 512});
    check(runner.status(), "uploading " + spec);
    GraphRow g{spec};
    fmt::print(stderr, "{}: {:.2f} GB of {} weights, synthesized in {:.0f} s\n", spec,
               double((*model)->weight_bytes()) / 1e9, dtype_name(dtype), synth_s);
    const double bound = bw * 1e9 / decode_bytes_per_token(**model);
    for (int batch : {1, 8}) {
      const Row r = measure(**runner, **model, batch, n_prefill, n_decode);
      const double mfu = r.prefill_tps * flops_per_token(**model) / (peak * 1e12);
      fmt::print("| {} | {} | {}{} | {:.0f} | {:.0f}% | {:.1f} | {:.1f} | {:.2f} |\n", spec, dtype_name(dtype), batch,
                 batch > 1 ? " (interleaved)" : "", r.prefill_tps, 100 * mfu, r.decode_tps, bound,
                 r.decode_tps / bound);
      if (batch == 1) g.with_graphs = r.decode_tps;
    }
    g.stats = (*runner)->graph_stats();
    runner->reset();  // its weights go before the op-by-op runner uploads them again
    auto plain = ModelRunner::create(**model, **backend, RunnerOptions{.n_batch = 512, .graphs = false});
    check(plain.status(), "uploading " + spec + " again");
    g.op_by_op = measure(**plain, **model, 1, n_prefill, n_decode).decode_tps;
    graph_rows.push_back(std::move(g));
  }
  // Decode steps as CUDA graphs (the default) against the same steps launched op by op.
  fmt::print("\n| model | decode tok/s, CUDA graphs | decode tok/s, op by op | graphs / op by op | steps as graphs |\n");
  fmt::print("|---|---|---|---|---|\n");
  for (const GraphRow& g : graph_rows) {
    fmt::print("| {} | {:.1f} | {:.1f} | {:.2f} | {} of {}{} |\n", g.spec, g.with_graphs, g.op_by_op,
               g.with_graphs / g.op_by_op, g.stats.graph_steps, g.stats.graph_steps + g.stats.fallbacks,
               g.stats.disabled ? " (then off: " + g.stats.last_error + ")" : "");
  }
  if (transfers) bench_transfers(dev, transfer_tokens);
  return 0;
}
