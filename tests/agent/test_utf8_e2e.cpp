// Streamed text is valid UTF-8 end to end (issue #15 item 5), and a client ends a call whose
// message it cannot parse instead of hanging.
//
// 1. A real kvbridge-agent on a random-weight Qwen2-shaped model (`synth`: byte-level BPE, whose
//    ids 0..255 are single bytes) generates greedily after emoji, CJK and mixed-script prompts.
//    Random weights sample byte tokens freely, so the raw token bytes split and break UTF-8 all
//    the time. Every TokenEvent.text must be valid UTF-8, the ids must be the local generation's,
//    and the streamed text (+ tail_text) must equal the local raw bytes decoded by an independent
//    reference (tests/support/utf8_reference.h), byte for byte; `kvbridge generate` prints the
//    same bytes with and without --agent.
// 2. Fake servers (in process, raw ByteBuffer handlers) send a message that does not parse, then
//    keep the stream open: AgentClient::generate / export_cache must end with INTERNAL long before
//    the deadline; a server that sends nothing ends with DEADLINE_EXCEEDED at the deadline.
#include <grpcpp/grpcpp.h>

#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "client/agent_client.h"
#include "client/agent_process.h"
#include "engine/generate.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "engine/unicode.h"
#include "kernels/registry.h"
#include "support/test_support.h"
#include "support/utf8_reference.h"

using namespace kvb;
namespace v1 = ::kvbridge::v1;
using Clock = std::chrono::steady_clock;

namespace {

template <class T>
T must(Result<T> r) {
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  return std::move(r).value();
}

constexpr const char* kShape =
    "qwen2.5-0.5b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=16,n_ff=128,n_vocab=1024,n_ctx=256";
constexpr uint32_t kTokens = 40;

const std::string& model_file() {
  static const std::string path = [] {
    std::string p = test::temp_dir() + "/utf8-qwen2.gguf";
    const Status st = write_synth_gguf(kShape, DType::kF32, 11, p);
    INFO(st.to_string());
    REQUIRE(st.ok());
    return p;
  }();
  return path;
}

struct Local {
  std::vector<int32_t> ids;
  std::string raw;  // the tokens' bytes, as the tokenizer gives them (not necessarily UTF-8)
  bool split = false;  // some token's bytes were not valid UTF-8 on their own
};

// Greedy generation in process: one thread, the agent's stopping rule (ignore_eos on both sides).
Local generate_locally(const Model& m, const std::vector<int32_t>& prompt) {
  auto backend = must(cpu_device().create_backend());
  backend->set_n_threads(1);
  auto runner = must(ModelRunner::create(m, *backend));
  auto cache = must(runner->new_cache(0));
  GenerateParams p;
  p.sampling.temperature = 0;
  p.max_tokens = int32_t(kTokens);
  p.stop_at_eos = false;
  Local out;
  int32_t prev = prompt.back();
  must(generate(*runner, *cache, prompt, p, [&](int32_t id) {
    const std::string piece = m.tokenizer->decode_token(id, prev);
    prev = id;
    out.ids.push_back(id);
    out.raw += piece;
    out.split = out.split || utf8_first_invalid(piece) != std::string::npos;
    return true;
  }));
  return out;
}

// Runs `cmd` through the shell; its stdout.
std::string shell_stdout(const std::string& cmd) {
  std::string out;
  FILE* f = ::popen(cmd.c_str(), "r");
  REQUIRE(f != nullptr);
  std::array<char, 4096> buf;
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), f)) > 0) out.append(buf.data(), n);
  INFO(cmd);
  REQUIRE(::pclose(f) == 0);
  return out;
}

}  // namespace

TEST_CASE("utf8 e2e: streamed emoji CJK and mixed-script generations are valid UTF-8 and equal local generation",
          "[e2e][utf8]") {
  const std::unique_ptr<Model> model = must(load_model(model_file()));
  REQUIRE(model->tokenizer);
  client::AgentProcessOptions o;
  o.binary = KVB_AGENT_BIN;
  o.args = {"--model", model_file(), "--name", "utf8", "--threads", "1"};
  o.log_path = test::temp_dir() + "/utf8-agent.log";
  const auto agent = must(client::AgentProcess::start(o));
  client::ClientOptions co;
  co.deadline = std::chrono::seconds(120);
  const auto c = must(client::AgentClient::connect(agent->address(), co));

  bool any_split = false;
  for (const std::string prompt : {"Emoji party: 🚀🔥🎉🚀🔥🎉🚀🔥", "中文文本：你好，世界。日本語も。", "Mixed: Привет, мир! 👋 مرحبا 😀 ok"}) {
    INFO("prompt: " << prompt);
    const std::vector<int32_t> ids = model->tokenizer->encode(prompt, EncodeOptions{});
    const Local local = generate_locally(*model, ids);
    any_split = any_split || local.split;

    v1::GenerateRequest req;
    req.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
    req.set_add_bos(false);
    req.set_max_tokens(kTokens);
    req.set_ignore_eos(true);
    req.mutable_sampling()->set_temperature(0);
    std::vector<int32_t> got_ids;
    std::string streamed;
    auto s = must(c->generate(req, [&](const v1::TokenEvent& t) {
      INFO("token " << got_ids.size());
      REQUIRE(utf8_first_invalid(t.text()) == std::string::npos);
      got_ids.push_back(t.id());
      streamed += t.text();
      return true;
    }));
    REQUIRE(got_ids == local.ids);  // one event per token, even when its bytes are held back
    REQUIRE(s.generated_tokens() == kTokens);
    REQUIRE(utf8_first_invalid(s.tail_text()) == std::string::npos);
    REQUIRE(streamed + s.tail_text() == s.text());
    REQUIRE(s.text() == test::utf8_replace_reference(local.raw));
  }
  // The test means something only if raw token bytes did break UTF-8 somewhere.
  REQUIRE(any_split);

  // The CLI: local and remote `kvbridge generate` print the same bytes, valid UTF-8 (before the
  // fix the remote one hung on the first message the client could not parse).
  const std::string args = " -p 'Emoji party: 🚀🔥🎉🚀🔥🎉🚀🔥' -n 40 --temp 0";
  const std::string cli = std::string("timeout 120 ") + KVB_CLI_BIN + " generate";
  const std::string local_out = shell_stdout(cli + " -m " + model_file() + " -t 1" + args);
  const std::string remote_out = shell_stdout(cli + " --agent " + agent->address() + args);
  REQUIRE(utf8_first_invalid(local_out) == std::string::npos);
  REQUIRE(local_out.size() > std::string("Emoji party: 🚀🔥🎉🚀🔥🎉🚀🔥\n").size());
  REQUIRE(remote_out == local_out);
}

// ============================== clients fed messages they cannot parse ==============================

namespace {

// Serialized GenerateResponse{token{id 7, text "XY"}} with "XY" replaced by F0 28 (a 4-byte lead
// followed by "(": not UTF-8), which protobuf refuses to parse into a proto3 string.
std::string bad_generate_response() {
  v1::GenerateResponse r;
  r.mutable_token()->set_id(7);
  r.mutable_token()->set_text("XY");
  std::string bytes = r.SerializeAsString();
  const size_t at = bytes.find("XY");
  REQUIRE(at != std::string::npos);
  bytes.replace(at, 2, "\xF0\x28");
  v1::GenerateResponse check;
  REQUIRE_FALSE(check.ParseFromString(bytes));
  return bytes;
}

grpc::ByteBuffer to_buffer(const std::string& bytes) {
  grpc::Slice slice(bytes.data(), bytes.size());
  return grpc::ByteBuffer(&slice, 1);
}

// Writes `messages` in order, then holds the stream open until the client cancels (or the test
// ends): exactly the situation in which gRPC's Finish() waits for messages nobody reads.
class HoldOpenWriter final : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  explicit HoldOpenWriter(const std::vector<std::string>& messages) {
    for (const std::string& m : messages) out_.push_back(to_buffer(m));
    next();
  }
  void OnWriteDone(bool ok) override {
    if (ok) next();
  }
  void OnCancel() override { Finish(grpc::Status::CANCELLED); }
  void OnDone() override { delete this; }

 private:
  void next() {
    if (i_ < out_.size()) StartWrite(&out_[i_++]);
  }
  std::vector<grpc::ByteBuffer> out_;
  size_t i_ = 0;
};

class FakeAgent final : public v1::AgentService::WithRawCallbackMethod_Generate<
                            v1::AgentService::WithRawCallbackMethod_ExportCache<v1::AgentService::Service>> {
 public:
  std::vector<std::string> generate_messages, export_messages;

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Generate(grpc::CallbackServerContext*, const grpc::ByteBuffer*) override {
    return new HoldOpenWriter(generate_messages);
  }
  grpc::ServerWriteReactor<grpc::ByteBuffer>* ExportCache(grpc::CallbackServerContext*,
                                                          const grpc::ByteBuffer*) override {
    return new HoldOpenWriter(export_messages);
  }
};

struct FakeServer {
  FakeAgent service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;

  void start() {
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    b.RegisterService(&service);
    server = b.BuildAndStart();
    REQUIRE(server);
    REQUIRE(port > 0);
  }
  ~FakeServer() {
    if (server) server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  }
  std::unique_ptr<client::AgentClient> connect(std::chrono::milliseconds deadline) const {
    client::ClientOptions o;
    o.deadline = deadline;
    return must(client::AgentClient::connect("127.0.0.1:" + std::to_string(port), o));
  }
};

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace

TEST_CASE("utf8 e2e: Generate whose token text is not UTF-8 ends with INTERNAL not a hang", "[utf8][rpc]") {
  FakeServer f;
  v1::GenerateResponse good;
  good.mutable_token()->set_id(1);
  good.mutable_token()->set_text("ok");
  // A good token, the bad one, then more good ones behind it: unread messages, as in the bug.
  f.service.generate_messages = {good.SerializeAsString(), bad_generate_response(), good.SerializeAsString(),
                                 good.SerializeAsString()};
  f.start();
  const auto c = f.connect(std::chrono::seconds(30));
  int n_tokens = 0;
  const auto t0 = Clock::now();
  auto r = c->generate(v1::GenerateRequest(), [&](const v1::TokenEvent& t) {
    REQUIRE(t.text() == "ok");
    ++n_tokens;
    return true;
  });
  INFO(r.status().to_string());
  REQUIRE(r.status().code() == StatusCode::kInternal);
  REQUIRE(r.status().message().find("kvbridge.v1.GenerateResponse") != std::string::npos);
  REQUIRE(n_tokens == 1);  // nothing after the message that did not parse
  REQUIRE(seconds_since(t0) < 10);
}

TEST_CASE("utf8 e2e: ExportCache with a truncated message ends with INTERNAL not a hang", "[utf8][rpc]") {
  FakeServer f;
  // CacheChunk field 1 (header), length 16, but only two bytes follow.
  f.service.export_messages = {std::string("\x0A\x10\x08\x01", 4)};
  f.start();
  const auto c = f.connect(std::chrono::seconds(30));
  const auto t0 = Clock::now();
  auto r = c->export_cache("cache", client::ExportOptions(), [](v1::CacheChunk&&) { return Status::Ok(); });
  INFO(r.status().to_string());
  REQUIRE(r.status().code() == StatusCode::kInternal);
  REQUIRE(r.status().message().find("kvbridge.v1.CacheChunk") != std::string::npos);
  REQUIRE(seconds_since(t0) < 10);
}

TEST_CASE("utf8 e2e: a Generate that never answers ends at the client's deadline", "[utf8][rpc]") {
  FakeServer f;
  f.start();
  const auto c = f.connect(std::chrono::milliseconds(500));
  const auto t0 = Clock::now();
  auto r = c->generate(v1::GenerateRequest());
  INFO(r.status().to_string());
  REQUIRE(r.status().code() == StatusCode::kDeadlineExceeded);
  REQUIRE(seconds_since(t0) < 10);
}
