// kvbridge-agent and kvbridge-fuser on a device: --device at startup everywhere, and real agent
// processes on a GPU trading caches with CPU agents.
//
// Untagged cases run on every machine: a bad --device spelling is a usage error (exit 2), and a
// device the build or the machine does not have stops the process at startup (exit 1) with the
// registry's message (kernels/registry.h find_device). [gpu] cases start with gpu_or_skip(): without
// a usable GPU they print one line and exit with 77 (CTest: Skipped). They run stories260K
// (.bin + tok512.bin) on cuda:0 next to the same model on the CPU, greedy with ignore_eos, and
// compare token ids and text as test_agent_e2e.cpp's pass test does.
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "client/agent_client.h"
#include "client/agent_process.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "fuser/synth_fuser.h"
#include "kernels/registry.h"
#include "support/pair_fuser.h"
#include "support/test_support.h"

using namespace kvb;
namespace v1 = ::kvbridge::v1;
using client::AgentClient;
using client::AgentProcess;

namespace {

constexpr const char* kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with "
    "her big red ball. One day, she saw a small dog sitting under a tree. The dog was sad because it "
    "was lost. Lily wanted to help the dog find its home.";
constexpr const char* kQuestion = " What did Lily do next?";

std::string model_file() { return test::model_path("stories260K/stories260K.bin"); }
std::string tokenizer_file() { return test::model_path("stories260K/tok512.bin"); }

template <class T>
T must(Result<T> r) {
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  return std::move(r).value();
}

// cuda:0 is usable here, or exit(77) (Skipped).
void gpu_or_skip() {
  const auto d = find_device("cuda:0");
  if (!d.ok()) {
    std::printf("no CUDA device: %s; skipping\n", d.status().to_string().c_str());
    std::fflush(stdout);
    std::exit(77);
  }
}

// ---- processes that are expected not to start ----

std::string shell_quote(const std::string& s) {
  std::string q(1, '\'');
  for (char ch : s) {
    if (ch == '\'') {
      q.append("'\\''");
    } else {
      q.push_back(ch);
    }
  }
  q.push_back('\'');
  return q;
}

struct Exit {
  int code = -1;       // the exit status, -1 when killed by a signal
  std::string output;  // stdout and stderr
};

// Runs `binary args...` to completion (a process that fails at startup never listens).
Exit run_to_exit(const std::string& binary, const std::vector<std::string>& args) {
  const std::string log = test::temp_dir() + "/startup.log";
  std::vector<std::string> argv{binary};
  argv.insert(argv.end(), args.begin(), args.end());
  std::string cmd = "timeout 60";
  for (const std::string& a : argv) {
    cmd.push_back(' ');
    cmd.append(shell_quote(a));
  }
  cmd.append(" >");
  cmd.append(shell_quote(log));
  cmd.append(" 2>&1");
  const int st = std::system(cmd.c_str());
  Exit e;
  e.code = st != -1 && WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  std::ifstream f(log);
  std::stringstream ss;
  ss << f.rdbuf();
  e.output = ss.str();
  return e;
}

std::vector<std::string> agent_args(const std::string& device) {
  return {"--model", model_file(), "--tokenizer", tokenizer_file(), "--listen", "127.0.0.1:0", "--device", device};
}

// ---- agents ----

// stories260K unless `model` names other files; `extra`: more flags (e.g. --fuser DIR).
struct ModelFiles {
  std::string model, tokenizer;
};
std::unique_ptr<AgentProcess> start_agent(const std::string& name, const std::string& device,
                                          const ModelFiles& model = {model_file(), tokenizer_file()},
                                          const std::vector<std::string>& extra = {}) {
  client::AgentProcessOptions o;
  o.binary = KVB_AGENT_BIN;
  o.args = {"--model", model.model, "--tokenizer", model.tokenizer, "--name", name, "--threads", "1",
            "--device", device};
  o.args.insert(o.args.end(), extra.begin(), extra.end());
  o.log_path = test::temp_dir() + "/" + name + ".log";
  return must(AgentProcess::start(o));
}

std::unique_ptr<AgentClient> connect_to(const AgentProcess& a) { return must(AgentClient::connect(a.address(), {})); }

const Tokenizer& tokenizer() {
  static const std::unique_ptr<Model> m = must(load_model(model_file(), LoadOptions{tokenizer_file()}));
  return *m->tokenizer;
}
std::vector<int32_t> encode(const std::string& text, bool bos) { return tokenizer().encode(text, EncodeOptions{bos}); }
std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

v1::GenerateRequest greedy(const std::vector<int32_t>& ids, const std::vector<v1::CacheRef>& context = {},
                           uint32_t n = 24) {
  v1::GenerateRequest r;
  if (!ids.empty()) r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  for (const v1::CacheRef& c : context) *r.add_context() = c;
  r.set_add_bos(false);
  r.set_max_tokens(n);
  r.set_ignore_eos(true);
  r.mutable_sampling()->set_temperature(0);
  return r;
}

struct Output {
  std::vector<int32_t> ids;
  std::string text;
  v1::GenerateSummary summary;
};

Output run(AgentClient& agent, const v1::GenerateRequest& req) {
  Output out;
  out.summary = must(agent.generate(req, [&](const v1::TokenEvent& t) {
    out.ids.push_back(t.id());
    out.text += t.text();
    return true;
  }));
  return out;
}

v1::PrefillResponse prefill(AgentClient& agent, const std::vector<int32_t>& ids) {
  v1::PrefillRequest r;
  r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  r.set_add_bos(false);
  return must(agent.prefill(r));
}

std::vector<v1::CacheChunk> export_f32(AgentClient& agent, const std::string& id) {
  return must(agent.export_cache_messages(id, client::ExportOptions{}));
}

// Two exports are the same stream, message for message and byte for byte.
bool same_stream(const std::vector<v1::CacheChunk>& a, const std::vector<v1::CacheChunk>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].SerializeAsString() != b[i].SerializeAsString()) return false;
  }
  return true;
}

}  // namespace

// ============================== --device at startup (every machine) ==============================

TEST_CASE("device flag: a bad spelling is a usage error", "[device]") {
  for (const char* bin : {KVB_AGENT_BIN, KVB_FUSER_BIN}) {
    INFO(bin);
    const bool agent = std::string(bin) == KVB_AGENT_BIN;
    const std::vector<std::string> args =
        agent ? agent_args("bogus")
              : std::vector<std::string>{"--weights", test::temp_dir(), "--listen", "127.0.0.1:0", "--device", "bogus"};
    const Exit e = run_to_exit(bin, args);
    INFO(e.output);
    CHECK(e.code == 2);
    CHECK(e.output.find("--device must be cpu, cuda or cuda:N, got 'bogus'") != std::string::npos);
  }
}

TEST_CASE("device flag: a GPU this machine lacks stops the agent and the fuser at startup", "[device]") {
  const auto d = find_device("cuda:0");
  if (d.ok()) {
    std::printf("cuda:0 is usable here; the failure path is checked with a device index that does not exist\n");
  }
  // cuda:0 where there is no usable GPU (or no CUDA in this build); cuda:999999 where there is one.
  const std::string device = d.ok() ? "cuda:999999" : "cuda:0";
  const Status want = find_device(device).status();
  REQUIRE_FALSE(want.ok());
  CHECK((want.code() == StatusCode::kUnavailable || want.code() == StatusCode::kNotFound));
  // The message, up to the first character the log line would escape.
  const std::string msg = want.message().substr(0, want.message().find_first_of("\"\\"));

  const Exit agent = run_to_exit(KVB_AGENT_BIN, agent_args(device));
  INFO(agent.output);
  CHECK(agent.code == 1);
  CHECK(agent.output.find("--device " + device) != std::string::npos);
  CHECK(agent.output.find(msg) != std::string::npos);

  // The fuser checks its device before it reads the weights (an empty directory here).
  const Exit fuser = run_to_exit(KVB_FUSER_BIN, {"--weights", test::temp_dir(), "--listen", "127.0.0.1:0",
                                                  "--device", device});
  INFO(fuser.output);
  CHECK(fuser.code == 1);
  CHECK(fuser.output.find(msg) != std::string::npos);
}

TEST_CASE("device flag: cpu, and GetInfo names the device", "[device]") {
  auto a = start_agent("dev-cpu", "cpu");
  auto ca = connect_to(*a);
  const v1::AgentInfo info = must(ca->get_info());
  CHECK(info.backend().rfind("cpu: ", 0) == 0);
}

// ============================== a GPU agent next to a CPU agent ==============================

TEST_CASE("caches pass between a GPU agent and a CPU agent token for token", "[gpu][e2e]") {
  gpu_or_skip();
  auto g = start_agent("gpu-a", "cuda:0");
  auto c = start_agent("cpu-b", "cpu");
  auto cg = connect_to(*g);
  auto cc = connect_to(*c);
  CHECK(must(cg->get_info()).backend().rfind("cuda:0: ", 0) == 0);

  const std::vector<int32_t> ctx = encode(kStory, /*bos=*/true);
  const std::vector<int32_t> q = encode(kQuestion, /*bos=*/false);
  REQUIRE(ctx.size() > 40);

  // The context as text on each agent: the two devices agree on this small f32 model.
  const Output text_cpu = run(*cc, greedy(concat(ctx, q)));
  const Output text_gpu = run(*cg, greedy(concat(ctx, q)));
  REQUIRE(text_cpu.ids.size() == 24);
  CHECK(text_gpu.ids == text_cpu.ids);
  CHECK(text_gpu.text == text_cpu.text);

  SECTION("GPU cache → CPU agent") {
    const v1::PrefillResponse p = prefill(*cg, ctx);
    const Output passed = run(*cc, greedy(q, {client::cache_ref(g->address(), p.cache_id())}));
    CHECK(passed.ids == text_cpu.ids);
    CHECK(passed.text == text_cpu.text);
    CHECK(passed.summary.context_tokens() == ctx.size());
  }
  SECTION("CPU cache → GPU agent") {
    const v1::PrefillResponse p = prefill(*cc, ctx);
    const Output passed = run(*cg, greedy(q, {client::cache_ref(c->address(), p.cache_id())}));
    CHECK(passed.ids == text_gpu.ids);
    CHECK(passed.text == text_gpu.text);
    CHECK(passed.summary.context_tokens() == ctx.size());
  }
  SECTION("the GPU agent's own stored cache, and a kept one, as context") {
    const v1::PrefillResponse p = prefill(*cg, ctx);
    const Output local = run(*cg, greedy(q, {client::cache_ref("", p.cache_id())}));
    CHECK(local.ids == text_gpu.ids);
    v1::GenerateRequest keep = greedy(concat(ctx, q), {}, 8);
    keep.set_keep_cache(true);
    const Output kept = run(*cg, keep);
    REQUIRE(kept.ids.size() == 8);
    REQUIRE_FALSE(kept.summary.cache_id().empty());
    // The kept cache holds ctx + q + the 8 generated tokens: continuing from it (no input) on the
    // CPU agent continues that text.
    const Output after = run(*cc, greedy({}, {client::cache_ref(g->address(), kept.summary.cache_id())}, 16));
    const Output after_text = run(*cc, greedy(concat(concat(ctx, q), kept.ids), {}, 16));
    CHECK(after.ids == after_text.ids);
  }
  SECTION("export bytes do not depend on the device: CPU export → import on the GPU → export") {
    const v1::PrefillResponse p = prefill(*cc, ctx);
    const std::vector<v1::CacheChunk> from_cpu = export_f32(*cc, p.cache_id());
    const client::ImportResult imported = must(cg->import_cache(from_cpu));
    const std::vector<v1::CacheChunk> from_gpu = export_f32(*cg, imported.reply.cache_id());
    CHECK(same_stream(from_cpu, from_gpu));
    const Output passed = run(*cg, greedy(q, {client::cache_ref("", imported.reply.cache_id())}));
    CHECK(passed.ids == text_gpu.ids);
  }
}

// Raw pulls between GPU agents (transport/README.md): CUDA IPC between two agent processes on one
// GPU, NCCL between agents on two GPUs where the machine has them.
TEST_CASE("GPU agents pass caches over cuda-ipc and nccl token for token", "[gpu][e2e][transfer]") {
  gpu_or_skip();
  auto a = start_agent("gpu-sharer", "cuda:0");
  auto b = start_agent("gpu-receiver", "cuda:0");
  auto ca = connect_to(*a);
  auto cb = connect_to(*b);
  const v1::AgentInfo info = must(ca->get_info());
  CHECK(info.transport_info().cuda_ipc());
  CHECK(info.transport_info().gpu_uuid().rfind("GPU-", 0) == 0);

  const std::vector<int32_t> ctx = encode(kStory, /*bos=*/true);
  const std::vector<int32_t> q = encode(kQuestion, /*bos=*/false);
  const Output text = run(*cb, greedy(concat(ctx, q)));
  const v1::PrefillResponse p = prefill(*ca, ctx);
  const v1::CacheRef ref = client::cache_ref(a->address(), p.cache_id());

  for (const char* asked : {"cuda-ipc", "auto"}) {
    INFO("transport " << asked);
    v1::GenerateRequest r = greedy(q, {ref});
    r.mutable_pull()->set_transport(asked);
    const Output passed = run(*cb, r);
    CHECK(passed.ids == text.ids);
    REQUIRE(passed.summary.context_transports_size() == 1);
    INFO("reason: " << passed.summary.context_transports(0).reason());
    CHECK(passed.summary.context_transports(0).used() == "cuda-ipc");
  }
  {  // NCCL refuses one GPU: grpc, and the reason says so.
    v1::GenerateRequest r = greedy(q, {ref});
    r.mutable_pull()->set_transport("nccl");
    const Output passed = run(*cb, r);
    CHECK(passed.ids == text.ids);
    CHECK(passed.summary.context_transports(0).used() == "grpc");
  }

  if (!find_device("cuda:1").ok() || !info.transport_info().nccl()) {
    WARN("one GPU (or no NCCL): the NCCL pull between two GPUs did not run");
    return;
  }
  auto c = start_agent("gpu1-receiver", "cuda:1");
  auto cc = connect_to(*c);
  v1::GenerateRequest r = greedy(q, {ref});
  r.mutable_pull()->set_transport("nccl");
  const Output passed = run(*cc, r);
  CHECK(passed.ids == run(*cc, greedy(concat(ctx, q))).ids);
  CHECK(passed.summary.context_transports(0).used() == "nccl");
}

// Receiver mode on GPUs: the sharer's slices land in the receiver's device memory over cuda-ipc
// and the embedded fuser reads them there (fuser::SharerMemory::kDevice), each as it lands. The
// fused cache must be the one the grpc path gives (host slices staged to the same GPU kernels).
TEST_CASE("a GPU receiver fuses a cache pulled over cuda-ipc as the grpc path does", "[gpu][e2e][transfer][fuse]") {
  gpu_or_skip();
  const ModelFiles aidreams{test::model_path("aidreams260K/aidreams260K.bin"),
                            test::model_path("aidreams260K/tok512.bin")};
  const auto identity = [](const ModelFiles& f) {
    return model_identity(*must(load_model(f.model, LoadOptions{f.tokenizer})));
  };
  const fuser::FuserConfig cfg =
      test::pair_fuser_config(identity({model_file(), tokenizer_file()}), identity(aidreams));
  const std::string dir = test::temp_dir() + "/gpu-fuser";
  REQUIRE(fuser::write_synthetic_fuser(dir, cfg, 7, fuser::GatePattern::kAlternate).ok());

  auto a = start_agent("gpu-fuse-sharer", "cuda:0");
  auto b = start_agent("gpu-fuse-receiver", "cuda:0", aidreams, {"--fuser", dir});
  auto ca = connect_to(*a);
  auto cb = connect_to(*b);
  v1::PrefillRequest sp;
  sp.set_text(kStory);
  const v1::PrefillResponse shared = must(ca->prefill(sp));

  std::vector<v1::CacheChunk> want;
  for (const char* transport : {"grpc", "cuda-ipc"}) {
    INFO("transport " << transport);
    v1::PrefillRequest p;
    *p.add_context() = client::cache_ref(a->address(), shared.cache_id());
    p.set_text(kQuestion);
    p.mutable_pull()->set_transport(transport);
    p.mutable_fuser()->set_embedded(true);
    const v1::PrefillResponse made = must(cb->prefill(p));
    REQUIRE(made.context_transports_size() == 1);
    INFO("reason: " << made.context_transports(0).reason());
    CHECK(made.context_transports(0).used() == transport);
    CHECK(made.fuse().slices_fused() == 4);  // gates alternate over aidreams260K's 4 layers
    const std::vector<v1::CacheChunk> got = export_f32(*cb, made.cache_id());
    if (want.empty()) {
      want = got;
    } else {
      CHECK(made.fuse().slices_fused_early() >= 1);
      CHECK(same_stream(got, want));
    }
  }
}
