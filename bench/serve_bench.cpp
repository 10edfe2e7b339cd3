// serve_bench: an agent under concurrent load (continuous batching, chunked prefill), against
// llama.cpp's llama-server on the same GGUF and the same load.
//
//   serve_bench --model M.gguf [--model M2.gguf ...] [--synth SPEC:DTYPE] [--clients 1,2,4,8,16]
//               [--prompt 256] [--gen 128] [--threads 2] [--max-batch-tokens 256] [--prefill-chunk 32]
//               [--prefill-step-factor F]
//               [--llama-server PATH] [--agent-bin PATH] [--passes load,prefill,prefix]
//
// Pass "load": for each N, a fresh kvbridge-agent (--parallel N) and, when --llama-server is
// given, a fresh llama-server (--parallel N, its context N x (prompt + gen)); N concurrent clients
// each send their own random prompt of --prompt tokens and generate --gen tokens (greedy, EOS
// ignored): kvbridge over gRPC Generate, llama-server over HTTP /completion with stream=true.
// Reported: aggregate generated tokens/s (all tokens / wall time of the round), p50/p99 time to
// first token and p50/p99 inter-token latency (gaps between streamed tokens, all clients pooled),
// the ratios kvbridge / llama-server and kvbridge(N) / kvbridge(1), and the ceiling on the latter
// that the N = 1 round implies (throughput_ceiling).
// Pass "prefill": 4 running generations; a client then sends a 2048-token prompt. p99 inter-token
// latency of the 4 while that prompt is prefilled (gaps that end inside the window from its send
// to its first token) against their p99 with nothing beside them.
// Pass "prefix": every client's prompt starts with the same 1024-token prefix; time to first token
// of a request whose prefix is cached against one whose prefix is not, and the agent's
// kvbridge_prefix_cache_* counters.
// Targets (issue #16, 2 threads): throughput(N = 8) >= 4 x throughput(N = 1); kvbridge >= llama-server
// at every N; prefill-window p99 ITL <= 3 x unloaded; prefix hit TTFT >= 10 x lower than a miss.
#include <fcntl.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <httplib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <ranges>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/agent_client.h"
#include "client/agent_process.h"
#include "engine/model.h"
#include "engine/synth.h"

using namespace kvb;
namespace v1 = ::kvbridge::v1;
using client::AgentClient;
using client::AgentProcess;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void die(const std::string& what) {
  fmt::print(stderr, "serve_bench: {}\n", what);
  std::exit(1);
}
template <class T>
T must(Result<T> r, const std::string& what) {
  if (!r.ok()) die(what + ": " + r.status().to_string());
  return std::move(r).value();
}

double seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(p * double(v.size() - 1) + 0.5))];
}

struct Args {
  std::vector<std::string> models;
  std::vector<std::string> synth;  // "stories110M:n_ctx=4096:q8_0"
  std::vector<int> clients = {1, 2, 4, 8, 16};
  int prompt = 256, gen = 128, threads = 2, max_batch_tokens = 256, prefill_chunk = 32;
  std::string prefill_step_factor;  // empty: the agent's default
  std::string llama_server, agent_bin;
  std::vector<std::string> passes = {"load", "prefill", "prefix"};
};

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  size_t b = 0;
  while (b <= s.size()) {
    const size_t e = std::min(s.find(',', b), s.size());
    if (e > b) out.push_back(s.substr(b, e - b));
    b = e + 1;
  }
  return out;
}

Args parse(int argc, char** argv) {
  Args a;
  a.agent_bin = KVB_AGENT_BIN;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto val = [&]() -> std::string {
      if (i + 1 >= argc) die("missing value for " + k);
      return argv[++i];
    };
    if (k == "--model") a.models.push_back(val());
    else if (k == "--synth") a.synth.push_back(val());
    else if (k == "--clients") {
      a.clients.clear();
      for (const auto& c : split(val())) a.clients.push_back(std::stoi(c));
    } else if (k == "--prompt") a.prompt = std::stoi(val());
    else if (k == "--gen") a.gen = std::stoi(val());
    else if (k == "--threads") a.threads = std::stoi(val());
    else if (k == "--max-batch-tokens") a.max_batch_tokens = std::stoi(val());
    else if (k == "--prefill-chunk") a.prefill_chunk = std::stoi(val());
    else if (k == "--prefill-step-factor") a.prefill_step_factor = val();
    else if (k == "--llama-server") a.llama_server = val();
    else if (k == "--agent-bin") a.agent_bin = val();
    else if (k == "--passes") a.passes = split(val());
    else die("unknown flag " + k + " (see the header of bench/serve_bench.cpp)");
  }
  if (a.models.empty() && a.synth.empty()) die("give --model M.gguf and/or --synth SPEC:DTYPE");
  return a;
}

// ---- load generators ----

// One client's stream: when it was sent, and when each token arrived.
struct Stream {
  Clock::time_point sent;
  std::vector<Clock::time_point> tokens;
  std::string error;
};

std::vector<int32_t> random_prompt(int n, uint32_t seed, int32_t n_vocab) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> d(300, std::min(n_vocab, 30000) - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& id : ids) id = d(rng);
  return ids;
}

// A server under test: starts with --parallel n and streams one greedy generation.
class Server {
 public:
  virtual ~Server() = default;
  virtual std::string name() const = 0;
  virtual void start(int parallel, int ctx_per_seq) = 0;
  virtual void stop() = 0;
  virtual Stream generate(const std::vector<int32_t>& prompt, int n) = 0;
};

class KvbServer final : public Server {
 public:
  KvbServer(const Args& a, std::string model) : a_(a), model_(std::move(model)) {}
  std::string name() const override { return "kvbridge"; }
  void start(int parallel, int ctx_per_seq) override {
    client::AgentProcessOptions o;
    o.binary = a_.agent_bin;
    o.args = {"--model",    model_,
              "--threads",  std::to_string(a_.threads),
              "--parallel", std::to_string(parallel),
              "--max-batch-tokens", std::to_string(std::max(a_.max_batch_tokens, parallel)),
              "--prefill-chunk", std::to_string(a_.prefill_chunk),
              "--ctx-size", std::to_string(ctx_per_seq),
              "--max-queue", "256",
              "--metrics-listen", "127.0.0.1:0"};
    if (!a_.prefill_step_factor.empty()) o.args.insert(o.args.end(), {"--prefill-step-factor", a_.prefill_step_factor});
    o.log_path = "/tmp/serve_bench_agent.log";
    proc_ = must(AgentProcess::start(o), "starting kvbridge-agent");
    metrics_port_ = 0;
  }
  // A counter or gauge of the agent's /metrics (the port is the last "metrics on" line of its log).
  uint64_t metric(const std::string& name) {
    if (metrics_port_ == 0) {
      std::ifstream log("/tmp/serve_bench_agent.log");
      for (std::string line; std::getline(log, line);) {
        if (const size_t at = line.find("metrics on 127.0.0.1:"); at != std::string::npos) {
          metrics_port_ = std::atoi(line.c_str() + at + std::strlen("metrics on 127.0.0.1:"));
        }
      }
      if (metrics_port_ == 0) die("the agent's log names no metrics port");
    }
    httplib::Client cli("127.0.0.1", metrics_port_);
    const auto res = cli.Get("/metrics");
    if (!res || res->status != 200) die("GET /metrics failed");
    std::istringstream body(res->body);
    for (std::string line; std::getline(body, line);) {
      if (line.rfind(name + " ", 0) == 0) return std::strtoull(line.c_str() + name.size() + 1, nullptr, 10);
    }
    die("/metrics has no " + name);
  }
  void stop() override { proc_.reset(); }
  Stream generate(const std::vector<int32_t>& prompt, int n) override {
    Stream s;
    client::ClientOptions co;
    auto agent = AgentClient::connect(proc_->address(), co);
    if (!agent.ok()) {
      s.error = agent.status().to_string();
      return s;
    }
    (void)(*agent)->get_info();  // the channel is up before the clock starts
    v1::GenerateRequest r;
    r.mutable_tokens()->mutable_ids()->Add(prompt.begin(), prompt.end());
    r.set_add_bos(false);
    r.set_max_tokens(uint32_t(n));
    r.set_ignore_eos(true);
    s.sent = Clock::now();
    auto sum = (*agent)->generate(r, [&](const v1::TokenEvent&) {
      s.tokens.push_back(Clock::now());
      return true;
    });
    if (!sum.ok()) s.error = sum.status().to_string();
    return s;
  }
  AgentProcess* process() { return proc_.get(); }

 private:
  const Args& a_;
  std::string model_;
  std::unique_ptr<AgentProcess> proc_;
  int metrics_port_ = 0;
};

// A child process (llama-server), killed and reaped when this goes; its output appended to `log`.
class Child {
 public:
  Child(const std::vector<std::string>& argv, const std::string& log) {
    pid_ = fork();
    if (pid_ < 0) die("fork failed");
    if (pid_ == 0) {
      prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
      }
      std::vector<char*> args;
      for (const auto& s : argv) args.push_back(const_cast<char*>(s.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
  }
  ~Child() {
    ::kill(pid_, SIGKILL);
    int status = 0;
    waitpid(pid_, &status, 0);
  }
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

 private:
  pid_t pid_ = -1;
};

class LlamaServer final : public Server {
 public:
  LlamaServer(const Args& a, std::string model) : a_(a), model_(std::move(model)) {}
  std::string name() const override { return "llama-server"; }
  void start(int parallel, int ctx_per_seq) override {
    port_ = 18000 + int(getpid() % 1000);
    client::AgentProcessOptions o;
    o.args = {"-m", model_, "-t", std::to_string(a_.threads), "--parallel", std::to_string(parallel),
              "-c", std::to_string(parallel * ctx_per_seq), "--host", "127.0.0.1", "--port", std::to_string(port_),
              "-b", "2048", "-ub", "512", "--no-warmup"};
    // llama-server prints no line AgentProcess waits for: start it, then poll /health.
    std::vector<std::string> argv = {a_.llama_server};
    argv.insert(argv.end(), o.args.begin(), o.args.end());
    proc_ = std::make_unique<Child>(argv, "/tmp/serve_bench_llama.log");
    httplib::Client cli("127.0.0.1", port_);
    for (int i = 0; i < 600; ++i) {
      auto r = cli.Get("/health");
      if (r && r->status == 200) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    die("llama-server did not become healthy (see /tmp/serve_bench_llama.log)");
  }
  void stop() override { proc_.reset(); }
  Stream generate(const std::vector<int32_t>& prompt, int n) override {
    Stream s;
    httplib::Client cli("127.0.0.1", port_);
    cli.set_read_timeout(600, 0);
    nlohmann::json body = {{"prompt", prompt}, {"n_predict", n},      {"stream", true},
                           {"ignore_eos", true}, {"temperature", 0.0}, {"cache_prompt", false}};
    httplib::Request req;
    req.method = "POST";
    req.path = "/completion";
    req.body = body.dump();
    req.set_header("Content-Type", "application/json");
    std::string buf;
    req.content_receiver = [&](const char* data, size_t len, uint64_t, uint64_t) {
      buf.append(data, len);
      // One SSE event per token: "data: {...}\n\n".
      for (size_t p; (p = buf.find("\n\n")) != std::string::npos; buf.erase(0, p + 2)) {
        if (buf.compare(0, 6, "data: ") == 0 && buf.find("\"content\"") < p) {
          const auto ev = nlohmann::json::parse(buf.substr(6, p - 6), nullptr, false);
          if (!ev.is_discarded() && !ev.value("stop", false)) s.tokens.push_back(Clock::now());
        }
      }
      return true;
    };
    s.sent = Clock::now();
    httplib::Response res;
    httplib::Error err;
    if (!cli.send(req, res, err)) s.error = "http error " + std::to_string(int(err));
    return s;
  }

 private:
  const Args& a_;
  std::string model_;
  int port_ = 0;
  std::unique_ptr<Child> proc_;
};

// N concurrent clients, each its own prompt.
std::vector<Stream> run_clients(Server& server, int n, int prompt, int gen, int32_t n_vocab, uint32_t seed) {
  std::vector<Stream> out(static_cast<size_t>(n));
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) {
    threads.emplace_back([&, i] { out[size_t(i)] = server.generate(random_prompt(prompt, seed + uint32_t(i), n_vocab), gen); });
  }
  for (auto& t : threads) t.join();
  for (const Stream& s : out) {
    if (!s.error.empty()) die(server.name() + ": " + s.error);
  }
  return out;
}

struct LoadResult {
  double tok_s = 0, ttft_p50 = 0, ttft_p99 = 0, itl_p50 = 0, itl_p99 = 0;
  double wall_s = 0;  // first send to last token of the round
};

// The most that N clients can gain over one, from one client's round alone. `one.wall_s` is a
// prompt's prefill (its time to first token, P) plus its generation (wall - P). A prompt's rows
// are compute-bound (the N = 1 round already runs all of them in one step, so sharing steps saves
// no weight reads), so the last of N prompts finishes its prefill no earlier than N x P; its
// sequence then needs the rest of its tokens, one step each, and a step that generates for
// several sequences costs at least one that generates for one. The N round takes at least
// N x P + (wall - P), so the throughput ratio is at most N x wall / (N x P + wall - P). A faster
// single stream (smaller wall - P) lowers this ceiling.
double throughput_ceiling(const LoadResult& one, int n) {
  const double p = one.ttft_p50, gen = one.wall_s - p;
  return n * one.wall_s / (n * p + gen);
}

LoadResult summarize(const std::vector<Stream>& streams) {
  LoadResult r;
  std::vector<double> ttft, itl;
  Clock::time_point begin = streams.front().sent, end = begin;
  size_t tokens = 0;
  for (const Stream& s : streams) {
    begin = std::min(begin, s.sent);
    if (s.tokens.empty()) continue;
    end = std::max(end, s.tokens.back());
    tokens += s.tokens.size();
    ttft.push_back(seconds(s.sent, s.tokens.front()));
    for (size_t i = 1; i < s.tokens.size(); ++i) itl.push_back(seconds(s.tokens[i - 1], s.tokens[i]));
  }
  r.wall_s = std::max(1e-9, seconds(begin, end));
  r.tok_s = double(tokens) / r.wall_s;
  r.ttft_p50 = percentile(ttft, 0.5);
  r.ttft_p99 = percentile(ttft, 0.99);
  r.itl_p50 = percentile(itl, 0.5);
  r.itl_p99 = percentile(itl, 0.99);
  return r;
}

void pass_load(const Args& a, const std::string& model, int32_t n_vocab) {
  fmt::print("\n## load: {} clients x ({} prompt + {} generated tokens), {} threads\n", fmt::join(a.clients, "/"),
             a.prompt, a.gen, a.threads);
  fmt::print("{:>3} {:>13} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}\n", "N", "server", "tok/s", "ttft p50", "ttft p99",
             "itl p50", "itl p99", "vs N=1", "ceiling");
  KvbServer kvb(a, model);
  std::unique_ptr<LlamaServer> llama;
  if (!a.llama_server.empty()) llama = std::make_unique<LlamaServer>(a, model);
  std::map<const Server*, LoadResult> first;  // each server's round at the first N (1 by default)
  for (int n : a.clients) {
    LoadResult k, l;
    for (Server* s : std::initializer_list<Server*>{&kvb, llama.get()}) {
      if (s == nullptr) continue;
      s->start(n, a.prompt + a.gen + 8);
      (void)run_clients(*s, 1, 16, 4, n_vocab, 999);  // warm-up
      const LoadResult r = summarize(run_clients(*s, n, a.prompt, a.gen, n_vocab, 1000 * uint32_t(n)));
      s->stop();
      (s == &kvb ? k : l) = r;
      if (n == a.clients.front()) first[s] = r;
      const LoadResult& one = first[s];
      const int n1 = a.clients.front();
      fmt::print("{:>3} {:>13} {:>9.1f} {:>8.0f}ms {:>8.0f}ms {:>8.1f}ms {:>8.1f}ms {:>8.2f}x {:>8.2f}x\n", n, s->name(),
                 r.tok_s, r.ttft_p50 * 1e3, r.ttft_p99 * 1e3, r.itl_p50 * 1e3, r.itl_p99 * 1e3, r.tok_s / one.tok_s,
                 n1 == 1 ? throughput_ceiling(one, n) : 0.0);
    }
    if (llama) fmt::print("{:>3} {:>13} {:>9.2f}x (throughput kvbridge / llama-server)\n", n, "ratio", k.tok_s / l.tok_s);
  }
  fmt::print("(ceiling: the most N clients can gain over 1 given the N = 1 round's prefill time and generation time;"
             " see throughput_ceiling)\n");
}

void pass_prefill(const Args& a, const std::string& model, int32_t n_vocab) {
  constexpr int kRunning = 4, kLong = 2048;
  fmt::print("\n## prefill: {} running generations, then one {}-token prompt beside them\n", kRunning, kLong);
  KvbServer kvb(a, model);
  kvb.start(kRunning + 1, kLong + 64);
  (void)run_clients(kvb, 1, 16, 4, n_vocab, 999);
  // Unloaded: the 4 alone, gaps once all four stream (their own prompts' steps left out).
  const std::vector<Stream> four = run_clients(kvb, kRunning, 64, 96, n_vocab, 7);
  Clock::time_point all_streaming = four.front().tokens.front();
  for (const Stream& s : four) all_streaming = std::max(all_streaming, s.tokens.front());
  std::vector<double> steady;
  for (const Stream& s : four) {
    for (size_t i = 1; i < s.tokens.size(); ++i) {
      if (s.tokens[i - 1] >= all_streaming) steady.push_back(seconds(s.tokens[i - 1], s.tokens[i]));
    }
  }
  LoadResult alone = summarize(four);
  alone.itl_p99 = percentile(steady, 0.99);
  // Loaded: the 4 again, and after ~20 of their tokens the long prompt.
  std::vector<Stream> running(kRunning);
  Stream big;
  std::vector<std::thread> ts;
  for (int i = 0; i < kRunning; ++i) {
    ts.emplace_back([&, i] { running[size_t(i)] = kvb.generate(random_prompt(64, 70 + uint32_t(i), n_vocab), 160); });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(alone.itl_p50 * 20 + alone.ttft_p99));
  big = kvb.generate(random_prompt(kLong, 5, n_vocab), 1);
  for (auto& t : ts) t.join();
  kvb.stop();
  if (big.tokens.empty()) die("the long prompt produced no token");
  const Clock::time_point w0 = big.sent, w1 = big.tokens.front();
  std::vector<double> window;
  for (const Stream& s : running) {
    for (size_t i = 1; i < s.tokens.size(); ++i) {
      if (s.tokens[i] > w0 && s.tokens[i] <= w1) window.push_back(seconds(s.tokens[i - 1], s.tokens[i]));
    }
  }
  const double p99 = percentile(window, 0.99);
  std::vector<double> top = window;
  std::sort(top.rbegin(), top.rend());
  top.resize(std::min<size_t>(top.size(), 5));
  fmt::print("largest gaps in the window: {:.0f} ms\n", fmt::join(top | std::views::transform([](double g) {
                                                                   return g * 1e3;
                                                                 }),
                                                             ", "));
  fmt::print("long prompt: time to first token {:.0f} ms; {} gaps of the running streams inside that window\n",
             seconds(w0, w1) * 1e3, window.size());
  fmt::print("itl p99: unloaded {:.1f} ms, during the prefill {:.1f} ms -> {:.2f}x (target <= 3x)\n",
             alone.itl_p99 * 1e3, p99 * 1e3, p99 / alone.itl_p99);
}

void pass_prefix(const Args& a, const std::string& model, int32_t n_vocab) {
  fmt::print("\n## prefix: 1024-token shared prefix\n");
  KvbServer kvb(a, model);
  kvb.start(4, 1024 + a.prompt + a.gen + 8);
  const std::vector<int32_t> prefix = random_prompt(1024, 4242, n_vocab);
  auto with_prefix = [&](uint32_t seed) {
    std::vector<int32_t> p = prefix;
    const auto tail = random_prompt(32, seed, n_vocab);
    p.insert(p.end(), tail.begin(), tail.end());
    return p;
  };
  (void)run_clients(kvb, 1, 16, 4, n_vocab, 999);
  const uint64_t q0 = kvb.metric("kvbridge_prefix_cache_query_tokens_total");
  const uint64_t h0 = kvb.metric("kvbridge_prefix_cache_hit_tokens_total");
  const Stream miss = kvb.generate(with_prefix(1), 4);
  if (!miss.error.empty() || miss.tokens.empty()) die("prefix miss: " + miss.error);
  std::vector<double> hits;
  constexpr uint32_t kHits = 4;
  for (uint32_t i = 2; i < 2 + kHits; ++i) {
    const Stream hit = kvb.generate(with_prefix(i), 4);
    if (!hit.error.empty() || hit.tokens.empty()) die("prefix hit: " + hit.error);
    hits.push_back(seconds(hit.sent, hit.tokens.front()));
  }
  const double t_miss = seconds(miss.sent, miss.tokens.front()), t_hit = percentile(hits, 0.5);
  fmt::print("ttft: miss {:.0f} ms, hit (median of {}) {:.0f} ms -> {:.1f}x (target >= 10x)\n", t_miss * 1e3,
             hits.size(), t_hit * 1e3, t_miss / t_hit);
  // Each request looks up all its tokens but the last; each hit finds the shared prefix.
  const uint64_t q = kvb.metric("kvbridge_prefix_cache_query_tokens_total") - q0;
  const uint64_t h = kvb.metric("kvbridge_prefix_cache_hit_tokens_total") - h0;
  const uint64_t q_want = (1 + kHits) * (1024 + 32 - 1), h_want = kHits * 1024;
  fmt::print("prefix cache: query tokens {} (expected {}), hit tokens {} (expected {}): hit rate {:.1f}% -> {}\n", q,
             q_want, h, h_want, 100.0 * double(h) / double(std::max<uint64_t>(q, 1)),
             q == q_want && h == h_want ? "as expected" : "NOT as expected");
  kvb.stop();
}

}  // namespace

int main(int argc, char** argv) {
  const Args a = parse(argc, argv);
  std::vector<std::string> models = a.models;
  for (const std::string& spec : a.synth) {
    const size_t colon = spec.rfind(':');
    if (colon == std::string::npos) die("--synth wants SPEC:DTYPE, e.g. stories110M:n_ctx=4096:q8_0");
    const std::string path = fmt::format("/tmp/serve_bench_{}.gguf", std::hash<std::string>()(spec));
    if (!std::filesystem::exists(path)) {
      const auto dtype = dtype_from_name(spec.substr(colon + 1));
      if (!dtype) die("--synth: unknown dtype " + spec.substr(colon + 1));
      const Status st = write_synth_gguf(spec.substr(0, colon), *dtype, 1, path);
      if (!st.ok()) die("writing " + spec + ": " + st.to_string());
    }
    models.push_back(path);
  }
  for (const std::string& m : models) {
    fmt::print("# serve_bench: {}\n", m);
    const auto loaded = must(load_model(m), "loading " + m);
    const int32_t n_vocab = loaded->config.n_vocab;
    for (const std::string& p : a.passes) {
      if (p == "load") pass_load(a, m, n_vocab);
      else if (p == "prefill") pass_prefill(a, m, n_vocab);
      else if (p == "prefix") pass_prefix(a, m, n_vocab);
      else die("unknown pass " + p);
    }
  }
  return 0;
}
