// pass_bench: what handing over a KV cache saves, against the two ways of handing over text.
//
//   pass_bench [--contexts 128,512,2048] [--reps N] [--shape SPEC | --model M.gguf] [--threads T]
//              [--agent-bin PATH] [--no-peers]
// (--no-peers: the receiver is not told its sharer at start, so its first pull connects and asks.)
//
// Two kvbridge-agent processes (a sharer and a receiver, on 127.0.0.1) serve a synthetic
// stories110M model (random f32 weights, engine/synth.h; the context length raised so that 2048
// tokens fit). For each context length n, the sharer holds a cache of n tokens and the receiver is
// asked to answer an 8-token question after that context. Receiver time to first token (client
// side: request sent → first token received; median of --reps) when it
//   (a) gets the context as tokens and prefills it itself;
//   (b) gets a CacheRef and pulls the cache from the sharer over gRPC (f32, f16, int8 wire);
//   (c) gets a 64-token summary the sharer first generates from its cache (sharer generation
//       time + receiver time to first token on summary + question).
// Then the wire: ExportCache of the same cache to this process (f32, f16, int8), against a raw
// gRPC stream of the same bytes in the same chunk sizes over the same loopback: a minimal
// AgentService (`pass_bench --serve-raw`, a child process) whose ExportCache streams pre-built
// payloads with no encoding or checksums. Both are read by the same client code.
// Targets (issue #3) at 2048 tokens: (b) >= 10x faster than (a) and (c); transfer >= 70% of raw.
#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "client/agent_client.h"
#include "client/agent_process.h"
#include "engine/synth.h"

using namespace kvb;
namespace v1 = ::kvbridge::v1;
using client::AgentClient;
using client::AgentProcess;
using Clock = std::chrono::steady_clock;

namespace {

constexpr int kQuestionTokens = 8;
constexpr int kSummaryTokens = 64;
constexpr int kFirstContactTokens = 1444;  // the cache of the issue #16 measurement (SmolLM2, 66 MB f32)

[[noreturn]] void die(const Status& s, const std::string& what) {
  fmt::print(stderr, "pass_bench: {}: {}\n", what, s.to_string());
  std::exit(1);
}
template <class T>
T must(Result<T> r, const std::string& what) {
  if (!r.ok()) die(r.status(), what);
  return std::move(r).value();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// ============================== the raw baseline ==============================

// ExportCache streams `n` data messages of `chunk` bytes each (the request's chunk_tokens = n and
// cache_id = chunk size in decimal): gRPC + protobuf framing of a bytes field, nothing else.
class RawStream final : public v1::AgentService::Service {
 public:
  grpc::Status ExportCache(grpc::ServerContext*, const v1::ExportCacheRequest* req,
                           grpc::ServerWriter<v1::CacheChunk>* writer) override {
    const size_t chunk = std::stoull(req->cache_id());
    if (payload_.size() != chunk) {
      payload_.resize(chunk);
      std::mt19937_64 rng(1);
      for (char& c : payload_) c = char(rng());
    }
    v1::CacheChunk msg;
    msg.mutable_data()->set_payload(payload_);  // built once: only serialization and transport remain
    for (uint32_t i = 0; i < req->chunk_tokens(); ++i) {
      if (!writer->Write(msg)) break;
    }
    msg.Clear();
    msg.mutable_trailer();
    writer->Write(msg);
    return grpc::Status::OK;
  }

 private:
  std::string payload_;  // one call at a time
};

int serve_raw() {
  RawStream service;
  grpc::ServerBuilder b;
  int port = 0;
  b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  b.SetMaxReceiveMessageSize(64 << 20);
  b.SetMaxSendMessageSize(64 << 20);
  b.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  if (!server) return 1;
  fmt::print("listening on 127.0.0.1:{}\n", port);
  std::fflush(stdout);
  server->Wait();
  return 0;
}

// ============================== measurements ==============================

v1::GenerateRequest request(const std::vector<int32_t>& ids, const std::vector<v1::CacheRef>& ctx, uint32_t n,
                            v1::WireDType wire = v1::WIRE_DTYPE_F32) {
  v1::GenerateRequest r;
  r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  for (const v1::CacheRef& c : ctx) *r.add_context() = c;
  r.set_add_bos(false);
  r.set_max_tokens(n);
  r.set_ignore_eos(true);
  r.mutable_pull()->set_dtype(wire);
  return r;
}

struct Timed {
  double ttft_s = 0;   // request sent → first token received
  double total_s = 0;  // request sent → stream finished
  std::vector<int32_t> ids;
  v1::GenerateSummary summary;
};

Timed timed_generate(AgentClient& agent, const v1::GenerateRequest& req) {
  Timed t;
  const auto t0 = Clock::now();
  t.summary = must(agent.generate(req,
                                  [&](const v1::TokenEvent& e) {
                                    if (t.ids.empty())
                                      t.ttft_s = std::chrono::duration<double>(Clock::now() - t0).count();
                                    t.ids.push_back(e.id());
                                    return true;
                                  }),
                   "Generate");
  t.total_s = std::chrono::duration<double>(Clock::now() - t0).count();
  return t;
}

double median_ttft(AgentClient& agent, const v1::GenerateRequest& req, int reps) {
  std::vector<double> v;
  for (int i = 0; i < reps; ++i) v.push_back(timed_generate(agent, req).ttft_s);
  return median(v);
}

// Median throughput (serialized bytes / s) of exporting `id`, and the stats of the last run.
std::pair<double, client::TransferStats> export_rate(AgentClient& agent, const std::string& id, v1::WireDType dtype,
                                                     uint32_t chunk_tokens, int reps) {
  client::ExportOptions o;
  o.dtype = dtype;
  o.chunk_tokens = chunk_tokens;
  std::vector<double> v;
  client::TransferStats st;
  for (int i = 0; i < reps; ++i) {
    st = must(agent.export_cache(id, o, [](v1::CacheChunk&&) { return Status::Ok(); }), "ExportCache");
    v.push_back(double(st.message_bytes) / st.seconds);
  }
  return {median(v), st};
}

std::vector<int> parse_list(const std::string& s) {
  std::vector<int> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(',', b), s.size());
    out.push_back(std::atoi(s.substr(b, e - b).c_str()));
    b = e + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shape = "stories110M:n_ctx=2304", agent_bin = KVB_AGENT_BIN, model_path;
  std::vector<int> contexts = {128, 512, 2048};
  int reps = 5, threads = 0;
  bool peers = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--serve-raw") return serve_raw();
    if (a == "--contexts" && i + 1 < argc)
      contexts = parse_list(argv[++i]);
    else if (a == "--reps" && i + 1 < argc)
      reps = std::atoi(argv[++i]);
    else if (a == "--shape" && i + 1 < argc)
      shape = argv[++i];
    else if (a == "--model" && i + 1 < argc)
      model_path = argv[++i];
    else if (a == "--no-peers")
      peers = false;
    else if (a == "--threads" && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (a == "--agent-bin" && i + 1 < argc)
      agent_bin = argv[++i];
    else {
      fmt::print(stderr,
                 "usage: pass_bench [--contexts 128,512,2048] [--reps N] [--shape SPEC | --model M.gguf] "
                 "[--threads T] [--agent-bin PATH] [--no-peers]\n");
      return 2;
    }
  }
  if (reps < 1 || contexts.empty() || std::any_of(contexts.begin(), contexts.end(), [](int n) { return n < 2; })) {
    fmt::print(stderr, "pass_bench: --reps must be >= 1 and every context >= 2 tokens\n");
    return 2;
  }

  // ---- model and agents ----
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / fmt::format("kvb_pass_bench_{}", ::getpid());
  fs::create_directories(dir);
  struct Cleanup {
    fs::path d;
    ~Cleanup() {
      std::error_code ec;
      fs::remove_all(d, ec);
    }
  } cleanup{dir};
  const int max_ctx = *std::max_element(contexts.begin(), contexts.end());
  std::string model = model_path;
  int32_t n_ctx_train = 0;
  if (model_path.empty()) {
    const SynthShape sh = must(find_synth_shape(shape), "shape");
    n_ctx_train = sh.config.n_ctx_train;
    if (max_ctx + kQuestionTokens + kSummaryTokens + 8 > n_ctx_train) {
      fmt::print(stderr, "pass_bench: contexts up to {} need a model context above {} (--shape {}:n_ctx=N)\n", max_ctx,
                 n_ctx_train, shape);
      return 2;
    }
    model = (dir / "model.gguf").string();
    auto t0 = Clock::now();
    if (Status s = write_synth_gguf(shape, DType::kF32, 1, model); !s.ok()) die(s, "synth");
    fmt::print("model: synthetic {} (f32 weights, {:.0f} MB), written in {:.1f} s\n", shape,
               double(fs::file_size(model)) / 1e6, std::chrono::duration<double>(Clock::now() - t0).count());
  } else {
    fmt::print("model: {}\n", model_path);
  }

  client::AgentProcessOptions ao;
  ao.binary = agent_bin;
  // No automatic prefix caching: (a) must prefill the context in every rep (this bench compares
  // handing over a cache with handing over text; serve_bench's prefix pass measures the cache).
  ao.args = {"--model", model, "--max-new-tokens", "128", "--log-format", "text", "--prefix-cache-bytes", "0"};
  if (threads > 0) ao.args.insert(ao.args.end(), {"--threads", std::to_string(threads)});
  ao.log_path = (dir / "sharer.log").string();
  auto sharer = must(AgentProcess::start(ao), "starting the sharer");
  ao.log_path = (dir / "receiver.log").string();
  // The receiver knows its sharer from the start (--peers), as a deployed pipeline's agents do:
  // the channel and the sharer's transports are ready before the first pull.
  if (peers) ao.args.insert(ao.args.end(), {"--peers", sharer->address()});
  auto receiver = must(AgentProcess::start(ao), "starting the receiver");
  client::AgentProcessOptions ro;
  ro.binary = fs::canonical("/proc/self/exe").string();
  ro.args = {"--serve-raw"};
  ro.listen_flag = false;
  auto raw = must(AgentProcess::start(ro), "starting the raw stream server");
  auto cs = must(AgentClient::connect(sharer->address(), {}), "connect");
  auto cr = must(AgentClient::connect(receiver->address(), {}), "connect");
  auto craw = must(AgentClient::connect(raw->address(), {}), "connect");
  const v1::AgentInfo info = must(cr->get_info(), "GetInfo");
  if (n_ctx_train == 0) n_ctx_train = int32_t(info.limits().max_context_tokens());
  fmt::print("agents: sharer {} and receiver {} on loopback, backend {}\n", sharer->address(), receiver->address(),
             info.backend());
  fmt::print(
      "times: client side, request sent -> first token received; median of {} runs ((a), (c): fewer at 2048)\n\n",
      reps);

  // Token ids: BOS, then pseudo-random normal pieces (the synthetic vocabulary's ids >= 259).
  std::mt19937 rng(42);
  const int32_t n_vocab = int32_t(info.model().n_vocab());
  auto random_ids = [&](int n, bool bos) {
    std::vector<int32_t> ids;
    if (bos) ids.push_back(info.bos_id());
    while (int(ids.size()) < n) ids.push_back(259 + int32_t(rng() % uint32_t(n_vocab - 259)));
    return ids;
  };
  const std::vector<int32_t> question = random_ids(kQuestionTokens, false);
  const std::vector<int32_t> summarize = random_ids(8, false);

  struct Row {
    int n;
    double a, b_f32, b_f16, b_int8, c_gen, c_recv;
    double cache_mb, gbs_f32, gbs_f16, gbs_int8, gbs_raw;
  };
  std::vector<Row> rows;
  // First contact: the receiver's first request after start, a pull of a kFirstContactTokens
  // cache from the sharer (no channel to it yet, no peer info, no buffers of that size), against
  // the same request once warm.
  double cold_s = 0, warm_s = 0;
  {
    const std::vector<int32_t> ctx = random_ids(std::min(kFirstContactTokens, n_ctx_train - 64), true);
    v1::PrefillRequest p;
    p.mutable_tokens()->mutable_ids()->Add(ctx.begin(), ctx.end());
    p.set_add_bos(false);
    const std::string id = must(cs->prefill(p), "Prefill").cache_id();
    const v1::GenerateRequest req = request(question, {client::cache_ref(sharer->address(), id)}, 1);
    const v1::GenerateRequest alone = request(question, {}, 1);
    const double alone_cold_s = timed_generate(*cr, alone).ttft_s;
    cold_s = timed_generate(*cr, req).ttft_s;
    warm_s = median_ttft(*cr, req, reps);
    const double alone_warm_s = median_ttft(*cr, alone, reps);
    if (Status st = cs->drop_cache(id); !st.ok()) die(st, "DropCache");
    fmt::print("first contact: the receiver's first request (the question alone): {:.1f} ms, warm {:.1f} ms; its "
               "first pull of a {}-token f32 cache from the sharer: {:.1f} ms, warm {:.1f} ms (medians of {})\n\n",
               alone_cold_s * 1e3, alone_warm_s * 1e3, ctx.size(), cold_s * 1e3, warm_s * 1e3, reps);
  }
  // Warm-up: connections between the agents, first allocations.
  {
    const std::vector<int32_t> w = random_ids(16, true);
    v1::PrefillRequest p;
    p.mutable_tokens()->mutable_ids()->Add(w.begin(), w.end());
    p.set_add_bos(false);
    const std::string id = must(cs->prefill(p), "Prefill").cache_id();
    (void)timed_generate(*cr, request(question, {client::cache_ref(sharer->address(), id)}, 1));
    (void)timed_generate(*cr, request(w, {}, 1));
  }
  // The floor every variant pays: the question alone, no context.
  const double q_only = median_ttft(*cr, request(question, {}, 1), reps);

  for (const int n : contexts) {
    Row r{};
    r.n = n;
    const std::vector<int32_t> ctx = random_ids(n, true);
    v1::PrefillRequest p;
    p.mutable_tokens()->mutable_ids()->Add(ctx.begin(), ctx.end());
    p.set_add_bos(false);
    p.set_pin(true);
    const v1::PrefillResponse cache = must(cs->prefill(p), "Prefill");
    const v1::CacheRef ref = client::cache_ref(sharer->address(), cache.cache_id());
    const int slow_reps = n >= 1024 ? std::min(reps, 3) : reps;

    // (a) the receiver prefills context + question itself.
    std::vector<int32_t> all = ctx;
    all.insert(all.end(), question.begin(), question.end());
    r.a = median_ttft(*cr, request(all, {}, 1), slow_reps);
    // (b) the receiver pulls the sharer's cache.
    r.b_f32 = median_ttft(*cr, request(question, {ref}, 1, v1::WIRE_DTYPE_F32), reps);
    r.b_f16 = median_ttft(*cr, request(question, {ref}, 1, v1::WIRE_DTYPE_F16), reps);
    r.b_int8 = median_ttft(*cr, request(question, {ref}, 1, v1::WIRE_DTYPE_INT8), reps);
    // (c) the sharer writes a 64-token summary from its cache; the receiver reads summary + question.
    std::vector<double> gen, recv;
    for (int i = 0; i < slow_reps; ++i) {
      const Timed s =
          timed_generate(*cs, request(summarize, {client::cache_ref("", cache.cache_id())}, kSummaryTokens));
      if (s.ids.size() != size_t(kSummaryTokens)) die(internal_error("short summary"), "summary");
      std::vector<int32_t> text = {info.bos_id()};
      text.insert(text.end(), s.ids.begin(), s.ids.end());
      text.insert(text.end(), question.begin(), question.end());
      gen.push_back(s.total_s);
      recv.push_back(timed_generate(*cr, request(text, {}, 1)).ttft_s);
    }
    r.c_gen = median(gen);
    r.c_recv = median(recv);

    // The wire: the same cache exported to this process, and raw bytes in the same chunks.
    client::TransferStats st;
    std::tie(r.gbs_f32, st) = export_rate(*cs, cache.cache_id(), v1::WIRE_DTYPE_F32, 0, reps);
    r.cache_mb = double(st.total_bytes) / 1e6;
    r.gbs_f16 = export_rate(*cs, cache.cache_id(), v1::WIRE_DTYPE_F16, 0, reps).first;
    r.gbs_int8 = export_rate(*cs, cache.cache_id(), v1::WIRE_DTYPE_INT8, 0, reps).first;
    const uint64_t chunk = st.total_bytes / std::max<uint32_t>(1, st.n_chunks);
    r.gbs_raw = export_rate(*craw, std::to_string(chunk), v1::WIRE_DTYPE_F32, st.n_chunks, reps).first;
    rows.push_back(r);
    must(cs->pin_cache(cache.cache_id(), false), "PinCache");
    if (Status s = cs->drop_cache(cache.cache_id()); !s.ok()) die(s, "DropCache");
    fmt::print(stderr, "  context {} done\n", n);
  }

  // ---- report ----
  fmt::print("receiver time to first token, ms (the {}-token question alone, no context: {:.1f} ms)\n", kQuestionTokens,
             q_only * 1e3);
  fmt::print("{:>6} | {:>10} | {:>9} {:>9} {:>9} | {:>10} {:>8} {:>9} | {:>7} {:>7}\n", "ctx", "(a) text", "(b) f32",
             "f16", "int8", "(c) total", "sum gen", "recv", "a/b", "c/b");
  for (const Row& r : rows) {
    const double c = r.c_gen + r.c_recv;
    fmt::print("{:>6} | {:>10.1f} | {:>9.1f} {:>9.1f} {:>9.1f} | {:>10.1f} {:>8.1f} {:>9.1f} | {:>6.1f}x {:>6.1f}x\n",
               r.n, r.a * 1e3, r.b_f32 * 1e3, r.b_f16 * 1e3, r.b_int8 * 1e3, c * 1e3, r.c_gen * 1e3, r.c_recv * 1e3,
               r.a / r.b_f32, c / r.b_f32);
  }
  fmt::print("\nwire: ExportCache sharer -> this process vs a raw gRPC bytes stream (same sizes), GB/s of messages\n");
  fmt::print("{:>6} | {:>9} | {:>8} {:>8} {:>8} | {:>8} | {:>8}\n", "ctx", "f32 MB", "f32", "f16", "int8", "raw",
             "f32/raw");
  for (const Row& r : rows) {
    fmt::print("{:>6} | {:>9.1f} | {:>8.2f} {:>8.2f} {:>8.2f} | {:>8.2f} | {:>7.0f}%\n", r.n, r.cache_mb,
               r.gbs_f32 / 1e9, r.gbs_f16 / 1e9, r.gbs_int8 / 1e9, r.gbs_raw / 1e9, 100.0 * r.gbs_f32 / r.gbs_raw);
  }

  const auto it = std::find_if(rows.begin(), rows.end(), [](const Row& r) { return r.n == 2048; });
  if (it != rows.end()) {
    const double c = it->c_gen + it->c_recv;
    const bool ok_a = it->a / it->b_f32 >= 10, ok_c = c / it->b_f32 >= 10, ok_w = it->gbs_f32 / it->gbs_raw >= 0.7;
    fmt::print(
        "\ntargets at 2048 tokens: (b) >= 10x faster than (a): {:.1f}x {}; than (c): {:.1f}x {}; "
        "transfer >= 70% of raw: {:.0f}% {}\n",
        it->a / it->b_f32, ok_a ? "PASS" : "FAIL", c / it->b_f32, ok_c ? "PASS" : "FAIL",
        100 * it->gbs_f32 / it->gbs_raw, ok_w ? "PASS" : "FAIL");
  }
  return 0;
}
