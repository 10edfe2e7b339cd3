// End-to-end receiver mode (issue #4): a sharer agent (stories260K) hands its context to a receiver
// agent running another model with another tokenizer (aidreams260K) through a C2C fuser — the one
// embedded in the receiver (kvbridge-agent --fuser) or a kvbridge-fuser process. The receiver's
// fused context cache must equal what the fuser library computes in process on the same inputs:
// receiver prefill of the context's text, sharer prefill of the aligned tokens, Fuser::fuse per
// gated-on slice. The fuser is synthetic (random weights of the pair's shapes, bound to both
// models' fingerprints) with gates that leave some layers off, whose bytes must never travel.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <csignal>
#include <thread>

#include "client/agent_client.h"
#include "client/agent_process.h"
#include "engine/forward.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "fuser/align.h"
#include "fuser/fuse_session.h"
#include "fuser/fuser.h"
#include "fuser/synth_fuser.h"
#include "kernels/registry.h"
#include "proto/wire_convert.h"
#include "support/pair_fuser.h"
#include "support/test_support.h"

using namespace kvb;
namespace v1 = ::kvbridge::v1;
using client::AgentClient;
using client::AgentProcess;

namespace {

// aidreams260K's context is 128 tokens and its tokenizer spends ~0.6 tokens per character here.
constexpr const char* kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with "
    "her big red ball.";
constexpr const char* kQuestion = " Then the dog";

template <class T>
T must(Result<T> r) {
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  return std::move(r).value();
}

struct Files {
  std::string model, tokenizer;
};
const Files kSharer{"stories260K/stories260K.bin", "stories260K/tok512.bin"};
const Files kReceiver{"aidreams260K/aidreams260K.bin", "aidreams260K/tok512.bin"};

// Both models in process, and two synthetic fusers: the pair's (gates alternate: receiver layer
// t % 4 = 0 both on, 1 K only, 2 V only, 3 both off) and the reverse pair's (a wrong fuser).
struct World {
  std::unique_ptr<Model> sharer, receiver;
  ModelIdentity sharer_id, receiver_id;
  std::string fuser_dir, wrong_fuser_dir;
};

World& world() {
  static World w = [] {
    World r;
    r.sharer = must(load_model(test::model_path(kSharer.model), LoadOptions{test::model_path(kSharer.tokenizer)}));
    r.receiver =
        must(load_model(test::model_path(kReceiver.model), LoadOptions{test::model_path(kReceiver.tokenizer)}));
    r.sharer_id = model_identity(*r.sharer);
    r.receiver_id = model_identity(*r.receiver);
    fuser::FuserConfig cfg = test::pair_fuser_config(r.sharer_id, r.receiver_id);
    r.fuser_dir = test::temp_dir() + "/fuser";
    REQUIRE(fuser::write_synthetic_fuser(r.fuser_dir, cfg, 7, fuser::GatePattern::kAlternate).ok());
    std::swap(cfg.sharer, cfg.receiver);
    cfg.layer_map.clear();
    r.wrong_fuser_dir = test::temp_dir() + "/fuser-reversed";
    REQUIRE(fuser::write_synthetic_fuser(r.wrong_fuser_dir, cfg, 7, fuser::GatePattern::kAllOn).ok());
    return r;
  }();
  return w;
}

std::unique_ptr<KvCache> prefill(ModelRunner& runner, std::span<const int32_t> ids) {
  auto cache = must(runner.new_cache(int32_t(ids.size()) + 8, DType::kF32));
  std::vector<float> logits(size_t(runner.model().config.n_vocab));
  REQUIRE(runner.forward(*cache, ids, logits).ok());
  return cache;
}

// The library's answer for a sharer cache prefilled from `text`: the receiver's own cache over the
// same text (its tokens), fused; and the same cache unfused.
struct Expected {
  std::unique_ptr<KvCache> fused, plain;
  size_t sharer_slices = 0;  // sharer (layer, K/V) slices the fusion needs
};

Expected library_fused(const std::string& text) {
  World& w = world();
  auto backend = must(cpu_device().create_backend());
  auto s_run = must(ModelRunner::create(*w.sharer, *backend));
  auto r_run = must(ModelRunner::create(*w.receiver, *backend));
  // What the agents do: the sharer's cache is of its own tokens; the receiver re-reads its text.
  const std::vector<int32_t> sharer_ids = w.sharer->tokenizer->encode(text, EncodeOptions{true, false});
  const std::string context = w.sharer->tokenizer->decode(sharer_ids);
  const std::vector<int32_t> ids = w.receiver->tokenizer->encode(context, EncodeOptions{true, false});
  const Tokenizer& st = *w.sharer->tokenizer;
  const fuser::Alignment a =
      must(fuser::align_tokens(ids, *w.receiver->tokenizer, fuser::local_encoder(st), fuser::local_piece_texts(st),
                               fuser::sharer_specials(st), fuser::AlignStrategy::kFirst));
  REQUIRE(a.sharer_ids.size() == ids.size());
  const auto s_cache = prefill(*s_run, a.sharer_ids);
  Expected e;
  e.fused = prefill(*r_run, ids);
  e.plain = prefill(*r_run, ids);
  auto f = must(fuser::Fuser::load(w.fuser_dir, *backend));
  const fuser::FusePlan plan = fuser::fuse_plan(*f);
  e.sharer_slices = plan.sharer.size();
  for (const bool is_v : {false, true}) {
    for (const uint32_t t : is_v ? plan.receiver.v : plan.receiver.k) {
      REQUIRE(f->fuse(int32_t(t), is_v, s_cache->used_rows(f->sharer_layer(int32_t(t)), is_v),
                      e.fused->used_rows(int32_t(t), is_v))
                  .ok());
    }
  }
  return e;
}

std::unique_ptr<AgentProcess> start(const std::string& binary, std::vector<std::string> args, const std::string& name) {
  client::AgentProcessOptions o;
  o.binary = binary;
  o.args = std::move(args);
  o.args.insert(o.args.end(), {"--threads", "1"});
  o.log_path = test::temp_dir() + "/" + name + ".log";
  return must(AgentProcess::start(o));
}

std::unique_ptr<AgentProcess> start_agent(const Files& f, const std::string& name, std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {"--model", test::model_path(f.model), "--tokenizer", test::model_path(f.tokenizer),
                                   "--name", name};
  args.insert(args.end(), extra.begin(), extra.end());
  return start(KVB_AGENT_BIN, std::move(args), name);
}

v1::GenerateRequest fused_request(const std::string& sharer, const std::string& cache_id, const v1::FuserRef& fuser) {
  v1::GenerateRequest r;
  *r.add_context() = client::cache_ref(sharer, cache_id);
  r.set_text(kQuestion);
  r.set_max_tokens(4);
  r.set_ignore_eos(true);
  r.set_keep_cache(true);
  *r.mutable_fuser() = fuser;
  return r;
}

// The receiver's kept cache, decoded.
std::unique_ptr<KvCache> fetch(AgentClient& agent, const std::string& cache_id, const ModelIdentity& id) {
  const std::vector<v1::CacheChunk> msgs = must(agent.export_cache_messages(cache_id, client::ExportOptions{}));
  wire::CacheStreamReader reader(id, cpu_device().buffer_type(), 0);
  for (const v1::CacheChunk& m : msgs) REQUIRE(reader.add(m).ok());
  return must(reader.finish());
}

// Largest |a - b| over the first n cells of layer l's K or V.
float max_diff(const KvCache& a, const KvCache& b, int32_t layer, bool is_v, int32_t n) {
  const Tensor ta = is_v ? a.v(layer) : a.k(layer);
  const Tensor tb = is_v ? b.v(layer) : b.k(layer);
  const int64_t elems = int64_t(n) * a.layout().cell_elems();
  float m = 0;
  for (int64_t i = 0; i < elems; ++i) m = std::max(m, std::fabs(ta.as<const float>()[i] - tb.as<const float>()[i]));
  return m;
}

// The receiver's fused context (its first n_context cells) equals the library's, slice by slice;
// fused slices really differ from the unfused cache.
void check_fused(const KvCache& got, const Expected& e, uint32_t n_context) {
  REQUIRE(n_context == uint32_t(e.fused->n_tokens()));
  REQUIRE(std::equal(e.fused->tokens().begin(), e.fused->tokens().end(), got.tokens().begin()));
  auto f = must(fuser::Fuser::load(world().fuser_dir, *must(cpu_device().create_backend())));
  for (int32_t l = 0; l < int32_t(world().receiver_id.n_layer); ++l) {
    for (const bool is_v : {false, true}) {
      CAPTURE(l, is_v);
      CHECK(max_diff(got, *e.fused, l, is_v, int32_t(n_context)) < 1e-4f);
      const float moved = max_diff(*e.fused, *e.plain, l, is_v, int32_t(n_context));
      if (f->gate(l, is_v)) {
        CHECK(moved > 1e-3f);
      } else {
        CHECK(moved == 0.0f);
      }
    }
  }
}

// GET http://127.0.0.1:port/metrics → the value of one sample line ("name{labels} value").
double scrape(int port, const std::string& sample) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
  const std::string req = "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  REQUIRE(::write(fd, req.data(), req.size()) == ssize_t(req.size()));
  std::string body;
  char buf[4096];
  for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;) body.append(buf, size_t(n));
  ::close(fd);
  const size_t at = body.find("\n" + sample + " ");
  INFO(body);
  REQUIRE(at != std::string::npos);
  return std::stod(body.substr(at + sample.size() + 2));
}

// The "metrics on HOST:PORT" line an agent prints after its listening line (in its log).
int metrics_port(const std::string& log) {
  const std::regex re("metrics on [^:\\s]+:(\\d+)");
  for (int i = 0; i < 200; ++i) {
    std::ifstream f(log);
    std::stringstream ss;
    ss << f.rdbuf();
    std::smatch m;
    const std::string s = ss.str();
    if (std::regex_search(s, m, re)) return std::stoi(m[1]);
    std::this_thread::sleep_for(std::chrono::milliseconds(25));
  }
  FAIL("no metrics line in " << log);
  return 0;
}

constexpr const char* kBytesSent = "kvbridge_transport_bytes_sent_total{transport=\"grpc\"}";

}  // namespace

TEST_CASE("receiver mode with the embedded fuser: the fused cache equals the library's", "[e2e][fuse]") {
  World& w = world();
  auto sharer = start_agent(kSharer, "fuse-sharer", {"--metrics-listen", "127.0.0.1:0"});
  auto receiver = start_agent(kReceiver, "fuse-receiver", {"--fuser", w.fuser_dir});
  auto cs = must(AgentClient::connect(sharer->address(), {}));
  auto cr = must(AgentClient::connect(receiver->address(), {}));
  CHECK(must(cr->get_info()).fuser() == "stories260K -> aidreams260K");

  v1::PrefillRequest p;
  p.set_text(kStory);
  const v1::PrefillResponse cache = must(cs->prefill(p));
  const Expected e = library_fused(kStory);

  const int port = metrics_port(test::temp_dir() + "/fuse-sharer.log");
  const double sent_before = scrape(port, kBytesSent);
  v1::FuserRef embedded;
  embedded.set_embedded(true);
  const v1::GenerateSummary s = must(cr->generate(fused_request(sharer->address(), cache.cache_id(), embedded)));
  const double sent = scrape(port, kBytesSent) - sent_before;

  CHECK(s.fuse().aligned());
  CHECK(s.fuse().fused_tokens() == uint32_t(e.fused->n_tokens()));
  CHECK(s.fuse().slices_fused() == 4);  // aidreams260K's 4 layers, gates alternate: K0 V0 K1 V2
  CHECK(s.generated_tokens() == 4);
  check_fused(*fetch(*cr, s.cache_id(), w.receiver_id), e, s.context_tokens());

  // Gated-off layers never travel: of the sharer's 5 layers x K/V, only the mapped slices do.
  const double slice_bytes = double(e.fused->n_tokens()) * w.sharer_id.n_head_kv * w.sharer_id.head_dim * 4;
  const double full = slice_bytes * 2 * w.sharer_id.n_layer;
  CHECK(e.sharer_slices == 4);
  CHECK(double(s.fuse().sharer_bytes()) >= 4 * slice_bytes);
  CHECK(double(s.fuse().sharer_bytes()) < 4 * slice_bytes + 4096);
  // The sharer's own counter: that pull plus the small alignment and bookkeeping replies.
  CHECK(sent >= 4 * slice_bytes);
  CHECK(sent < 0.5 * full);
}

TEST_CASE("receiver mode through kvbridge-fuser: same cache, same answer as embedded", "[e2e][fuse]") {
  World& w = world();
  auto sharer = start_agent(kSharer, "fsvc-sharer");
  auto receiver = start_agent(kReceiver, "fsvc-receiver");
  auto fuser = start(KVB_FUSER_BIN, {"--weights", w.fuser_dir}, "fsvc-fuser");
  auto cs = must(AgentClient::connect(sharer->address(), {}));
  auto cr = must(AgentClient::connect(receiver->address(), {}));
  v1::PrefillRequest p;
  p.set_text(kStory);
  const v1::PrefillResponse cache = must(cs->prefill(p));

  v1::FuserRef remote;
  remote.set_address(fuser->address());
  const v1::GenerateSummary s = must(cr->generate(fused_request(sharer->address(), cache.cache_id(), remote)));
  CHECK(s.fuse().slices_fused() == 4);
  CHECK(s.fuse().fuser_bytes_sent() > 0);
  CHECK(s.fuse().fuser_bytes_received() > 0);
  const Expected e = library_fused(kStory);
  check_fused(*fetch(*cr, s.cache_id(), w.receiver_id), e, s.context_tokens());

  SECTION("a fuser for another pair is refused before anything moves") {
    auto wrong = start(KVB_FUSER_BIN, {"--weights", w.wrong_fuser_dir}, "fsvc-wrong");
    v1::FuserRef r;
    r.set_address(wrong->address());
    auto g = cr->generate(fused_request(sharer->address(), cache.cache_id(), r));
    INFO(g.status().to_string());
    CHECK(g.status().code() == StatusCode::kFailedPrecondition);
  }
  SECTION("without a fuser, another model's cache is FAILED_PRECONDITION") {
    v1::GenerateRequest r = fused_request(sharer->address(), cache.cache_id(), {});
    r.clear_fuser();
    CHECK(cr->generate(r).status().code() == StatusCode::kFailedPrecondition);
  }
  SECTION("an embedded fuser the receiver does not have is FAILED_PRECONDITION") {
    v1::FuserRef r;
    r.set_embedded(true);
    CHECK(cr->generate(fused_request(sharer->address(), cache.cache_id(), r)).status().code() ==
          StatusCode::kFailedPrecondition);
  }
  SECTION("the fuser dies mid-call: UNAVAILABLE, and the receiver keeps serving") {
    ::kill(fuser->pid(), SIGSTOP);
    Status st;
    std::thread t([&] { st = cr->generate(fused_request(sharer->address(), cache.cache_id(), remote)).status(); });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    fuser->kill(SIGKILL);
    t.join();
    INFO(st.to_string());
    CHECK(st.code() == StatusCode::kUnavailable);
    v1::GenerateRequest plain;
    plain.set_text("Once upon a time");
    plain.set_max_tokens(4);
    CHECK(cr->generate(plain).ok());
  }
}

TEST_CASE("an agent refuses an embedded fuser built for another model at startup", "[e2e][fuse]") {
  client::AgentProcessOptions o;
  o.binary = KVB_AGENT_BIN;
  o.args = {"--model", test::model_path(kReceiver.model), "--tokenizer", test::model_path(kReceiver.tokenizer),
            "--fuser", world().wrong_fuser_dir};
  o.log_path = test::temp_dir() + "/fuse-wrong-embedded.log";
  o.start_timeout = std::chrono::milliseconds(20000);
  auto r = AgentProcess::start(o);
  CHECK_FALSE(r.ok());
  std::ifstream f(o.log_path);
  std::stringstream ss;
  ss << f.rdbuf();
  CHECK_THAT(ss.str(), Catch::Contains("not this model"));
}

TEST_CASE("scoring a continuation over a fused context gives the receiver's log-probabilities over that cache",
          "[e2e][fuse][scoring]") {
  World& w = world();
  auto sharer = start_agent(kSharer, "score-sharer");
  auto receiver = start_agent(kReceiver, "score-receiver", {"--fuser", w.fuser_dir});
  auto cs = must(AgentClient::connect(sharer->address(), {}));
  auto cr = must(AgentClient::connect(receiver->address(), {}));
  v1::PrefillRequest p;
  p.set_text(kStory);
  const v1::PrefillResponse cache = must(cs->prefill(p));
  const Expected e = library_fused(kStory);

  // The receiver's tokens of the input and of the continuation to score (raw: no dummy prefix).
  const Tokenizer& rt = *w.receiver->tokenizer;
  const std::vector<int32_t> input = rt.encode(kQuestion, EncodeOptions{false, false});
  EncodeOptions raw{false, false};
  raw.add_space_prefix = false;
  const std::vector<int32_t> forced = rt.encode(" ran to the ball.", raw);
  REQUIRE(forced.size() >= 4);
  REQUIRE(forced == must(cr->tokenize(" ran to the ball.", true)));

  v1::FuserRef embedded;
  embedded.set_embedded(true);
  v1::GenerateRequest r = fused_request(sharer->address(), cache.cache_id(), embedded);
  r.mutable_tokens()->mutable_ids()->Add(input.begin(), input.end());
  r.set_add_bos(false);
  r.set_keep_cache(false);
  r.mutable_forced()->mutable_ids()->Add(forced.begin(), forced.end());
  r.set_top_logprobs(2);
  std::vector<v1::TokenEvent> events;
  const v1::GenerateSummary s = must(cr->generate(r, [&](const v1::TokenEvent& t) {
    events.push_back(t);
    return true;
  }));
  CHECK(s.stop_reason() == v1::STOP_REASON_MAX_TOKENS);
  REQUIRE(events.size() == forced.size());

  // The library's fused cache, then the input and the forced tokens through the receiver's runner.
  auto backend = must(cpu_device().create_backend());
  auto run = must(ModelRunner::create(*w.receiver, *backend));
  const int32_t n_ctx = e.fused->n_tokens();
  auto c = must(run->new_cache(n_ctx + int32_t(input.size() + forced.size()), DType::kF32));
  REQUIRE(c->copy_from(*backend, *e.fused, n_ctx).ok());
  std::vector<int32_t> tail = input;
  tail.insert(tail.end(), forced.begin(), forced.end());
  const size_t nv = size_t(w.receiver->config.n_vocab);
  std::vector<float> logits(tail.size() * nv);
  REQUIRE(run->forward(*c, tail, logits, true).ok());
  double fused_sum = 0, plain_sum = 0;
  for (size_t i = 0; i < forced.size(); ++i) {
    const float* row = logits.data() + (input.size() - 1 + i) * nv;
    const double mx = *std::max_element(row, row + nv);
    double z = 0;
    for (size_t j = 0; j < nv; ++j) z += std::exp(double(row[j]) - mx);
    const double want = double(row[forced[i]]) - mx - std::log(z);
    CAPTURE(i);
    CHECK(events[i].id() == forced[i]);
    CHECK(std::abs(events[i].logprob() - want) <= 1e-3);
    REQUIRE(events[i].top_size() == 2);
    CHECK(events[i].top(0).logprob() >= events[i].top(1).logprob());
    fused_sum += events[i].logprob();
  }
  // The same continuation after the context as text (unfused) scores differently.
  v1::GenerateRequest text;
  text.set_text(std::string(kStory) + kQuestion);
  text.mutable_forced()->mutable_ids()->Add(forced.begin(), forced.end());
  must(cr->generate(text, [&](const v1::TokenEvent& t) {
    plain_sum += t.logprob();
    return true;
  }));
  CHECK(std::abs(fused_sum - plain_sum) > 1e-3);
}

TEST_CASE("a sharer whose vocabulary uses no BOS: the receiver still starts the context with its own BOS",
          "[e2e][fuse]") {
  // SmolLM2 adds no BOS; stories260K (llama2.c) always starts with one, and kvbridge fuser dump
  // trains fusers on contexts that do.
  const std::string smol_path = test::model_path("smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
  auto smol = must(load_model(smol_path));
  World& w = world();
  fuser::FuserConfig cfg = test::pair_fuser_config(model_identity(*smol), w.sharer_id, "SmolLM2-135M", "stories260K");
  const std::string dir = test::temp_dir() + "/fuser-smollm2-stories";
  REQUIRE(fuser::write_synthetic_fuser(dir, cfg, 3, fuser::GatePattern::kAllOn).ok());
  auto sharer = start(KVB_AGENT_BIN, {"--model", smol_path, "--name", "smollm2-sharer"}, "smollm2-sharer");
  auto receiver = start_agent(kSharer, "stories-receiver", {"--fuser", dir});
  auto cs = must(AgentClient::connect(sharer->address(), {}));
  auto cr = must(AgentClient::connect(receiver->address(), {}));
  v1::PrefillRequest p;
  p.set_text(kStory);
  const v1::PrefillResponse cache = must(cs->prefill(p));
  v1::FuserRef embedded;
  embedded.set_embedded(true);
  v1::GenerateRequest r = fused_request(sharer->address(), cache.cache_id(), embedded);
  r.set_keep_cache(false);
  const v1::GenerateSummary s = must(cr->generate(r));

  const Tokenizer& st = *smol->tokenizer;
  const std::vector<int32_t> sharer_ids = st.encode(kStory, EncodeOptions{true, false});
  REQUIRE(sharer_ids.front() != st.bos());
  const std::string text = st.decode(sharer_ids);
  const Tokenizer& rt = *w.sharer->tokenizer;
  const std::vector<int32_t> with_bos = rt.encode(text, EncodeOptions{true, false});
  REQUIRE(with_bos.front() == rt.bos());
  CHECK(s.context_tokens() == with_bos.size());
  CHECK(s.fuse().fused_tokens() == with_bos.size());
}
