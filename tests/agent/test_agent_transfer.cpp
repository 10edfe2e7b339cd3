// Raw cache pulls between two agents: OpenTransfer → TransferStream → slices → CloseTransfer.
//
// The agents run in this process (AgentServer), each with a TransportFactory over the host fakes
// of tests/transport (fakes.h): their "GPU" caches are host memory, NCCL is the fake communicator
// registry, cuda-ipc the host IPC ops (handles are pointers, valid because both agents share this
// process). Everything else is what runs on GPUs: the agents' negotiation, the sessions, the
// control stream, the transports' protocol engines, the receiver's cache. The same pulls over
// real CUDA IPC and NCCL are test_gpu_e2e's (GPU only).
#include <grpcpp/grpcpp.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <thread>
#include <vector>

#include "agent/agent_server.h"
#include "agent/transfer/peer_client.h"
#include "agent/transfer/transfer_factory.h"
#include "client/agent_client.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "fuser/synth_fuser.h"
#include "kernels/registry.h"
#include "support/pair_fuser.h"
#include "support/test_support.h"
#include "transport/fakes.h"
#include "transport/kv_slices.h"
#include "transport/metadata.h"

namespace {

using namespace kvb;
namespace v1 = ::kvbridge::v1;
using client::AgentClient;
using transport::Role;
using transport::TransportKind;

template <class T>
T must(Result<T> r) {
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  return std::move(r).value();
}

// A "GPU" named `uuid` whose transports are the host fakes.
class FakeTransports final : public agent::TransportFactory {
 public:
  explicit FakeTransports(std::string uuid) {
    self_.host_id = transport::local_host_id();
    self_.gpu_uuid = std::move(uuid);
    self_.nccl = true;
    self_.cuda_ipc = true;
  }

  const transport::EndpointInfo& endpoint() const override { return self_; }

  Result<std::unique_ptr<transport::KvTransport>> create(TransportKind kind, Role role,
                                                         std::unique_ptr<transport::BytePipe> control) override {
    if (refuse) return unavailable("injected: the device is gone");
    ++created;
    if (kind == TransportKind::kNccl) {
      transport::NcclOptions o;
      o.timeout = std::chrono::seconds(10);
      o.connect_timeout = std::chrono::seconds(10);
      return transport::make_nccl_transport(role, test::make_fake_nccl_ops(0, self_.gpu_uuid, device, stats), o);
    }
    transport::IpcOptions o;
    o.timeout = std::chrono::seconds(10);
    o.release_timeout = std::chrono::seconds(5);
    return transport::make_ipc_transport(role, test::make_host_ipc_ops(device, stats), std::move(control), o);
  }

  const BufferType& receive_buffers() const override { return receive ? *receive : cpu_device().buffer_type(); }

  // The fake NCCL takes host memory described as device memory (as the transport suite does).
  transport::KvRegion region(TransportKind kind, const KvCache& cache) const override {
    transport::KvRegion r = transport::cache_region(cache);
    if (kind == TransportKind::kNccl) {
      r.is_device = true;
      r.device = 0;
    }
    return r;
  }

  std::atomic<bool> refuse{false};
  std::atomic<int> created{0};
  const BufferType* receive = nullptr;  // where received caches go; null: host memory
  test::FakeDeviceOptions device;
  std::shared_ptr<test::FakeDeviceStats> stats = std::make_shared<test::FakeDeviceStats>();

 private:
  transport::EndpointInfo self_;
};

struct Agent {
  FakeTransports* transports = nullptr;  // owned by the server
  std::unique_ptr<agent::AgentServer> server;
  std::unique_ptr<AgentClient> client;

  const std::string& address() const { return server->bound_address(); }
};

struct ModelFiles {
  const char* model;
  const char* tokenizer;
};
constexpr ModelFiles kStories{"stories260K/stories260K.bin", "stories260K/tok512.bin"};
constexpr ModelFiles kAidreams{"aidreams260K/aidreams260K.bin", "aidreams260K/tok512.bin"};

ModelIdentity identity_of(const ModelFiles& f) {
  return model_identity(*must(load_model(test::model_path(f.model), LoadOptions{test::model_path(f.tokenizer)})));
}

// `fuser_dir`: an embedded fuser (kvbridge-agent --fuser).
Agent start_agent(const std::string& name, const std::string& uuid, const ModelFiles& files = kStories,
                  const std::string& fuser_dir = "") {
  agent::AgentConfig c;
  c.model_path = test::model_path(files.model);
  c.tokenizer_path = test::model_path(files.tokenizer);
  c.fuser_dir = fuser_dir;
  c.listen = {"127.0.0.1", 0};
  c.name = name;
  c.threads = 1;
  auto factory = std::make_unique<FakeTransports>(uuid);
  factory->device.chunk = 4096;  // several chunks per slice
  Agent a;
  a.transports = factory.get();
  a.server = must(agent::AgentServer::create(c, std::move(factory)));
  const Status st = a.server->start();
  INFO(st.to_string());
  REQUIRE(st.ok());
  a.client = must(AgentClient::connect(a.address(), {}));
  return a;
}

v1::GenerateRequest greedy(const std::vector<int32_t>& ids, const std::vector<v1::CacheRef>& context,
                           const std::string& transport) {
  v1::GenerateRequest r;
  r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  for (const v1::CacheRef& c : context) *r.add_context() = c;
  r.set_add_bos(false);
  r.set_max_tokens(24);
  r.set_ignore_eos(true);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_pull()->set_transport(transport);
  return r;
}

struct Output {
  std::vector<int32_t> ids;
  v1::GenerateSummary summary;
};

Output run(AgentClient& agent, const v1::GenerateRequest& req) {
  Output out;
  out.summary = must(agent.generate(req, [&](const v1::TokenEvent& t) {
    out.ids.push_back(t.id());
    return true;
  }));
  return out;
}

std::unique_ptr<v1::AgentService::Stub> stub_for(const Agent& a) {
  return v1::AgentService::NewStub(grpc::CreateChannel(a.address(), grpc::InsecureChannelCredentials()));
}

// A receiver's OpenTransferRequest for `cache_id`, with the metadata of `receiver` (kept alive by
// the caller: the sharer connects to it).
v1::OpenTransferRequest open_request(const std::string& cache_id, TransportKind kind, const FakeTransports& self,
                                     const transport::KvTransport& receiver) {
  v1::OpenTransferRequest r;
  r.set_cache_id(cache_id);
  r.set_transport(std::string(transport::transport_name(kind)));
  v1::TransportInfo* ti = r.mutable_receiver();
  ti->set_host_id(self.endpoint().host_id);
  ti->set_gpu_uuid(self.endpoint().gpu_uuid);
  ti->set_nccl(true);
  ti->set_cuda_ipc(true);
  r.set_receiver_metadata(must(receiver.metadata()));
  return r;
}

StatusCode code_of(const grpc::Status& gs) { return StatusCode(int(gs.error_code())); }

}  // namespace

TEST_CASE("agents pull caches over the raw transports, with the same tokens as the text path", "[transfer]") {
  // A and B: two "GPUs" of one host. C shares A's GPU.
  Agent a = start_agent("a", "GPU-fake-a");
  Agent b = start_agent("b", "GPU-fake-b");
  Agent c = start_agent("c", "GPU-fake-a");

  std::vector<int32_t> context = {1, 403, 407, 1975, 471, 2053, 263, 931, 29889, 1576};
  for (int32_t& t : context) t %= 512;
  const std::vector<int32_t> q = {322, 278, 165};
  std::vector<int32_t> all = context;
  all.insert(all.end(), q.begin(), q.end());
  const Output text = run(*b.client, greedy(all, {}, ""));
  REQUIRE(text.ids.size() == 24);

  v1::PrefillRequest pr;
  pr.mutable_tokens()->mutable_ids()->Add(context.begin(), context.end());
  pr.set_add_bos(false);
  const v1::PrefillResponse cache = must(a.client->prefill(pr));
  v1::CacheRef ref;
  ref.set_agent(a.address());
  ref.set_cache_id(cache.cache_id());

  SECTION("every transport the pair can use gives the text path's tokens; the summary says which ran") {
    struct Case {
      Agent* receiver;
      const char* asked;
      const char* used;
      bool fell_back;
    };
    for (const Case& k : {Case{&b, "nccl", "nccl", false}, Case{&b, "cuda-ipc", "grpc", true},  // no peer access
                          Case{&b, "auto", "nccl", false},  // two GPUs without peer access
                          Case{&c, "auto", "cuda-ipc", false},  // one GPU
                          Case{&c, "cuda-ipc", "cuda-ipc", false}, Case{&c, "nccl", "grpc", true},
                          Case{&b, "grpc", "grpc", false}}) {
      INFO("receiver " << (k.receiver == &b ? "b" : "c") << ", transport " << k.asked);
      const Output got = run(*k.receiver->client, greedy(q, {ref}, k.asked));
      CHECK(got.ids == text.ids);
      REQUIRE(got.summary.context_transports_size() == 1);
      const v1::ContextTransport& t = got.summary.context_transports(0);
      CHECK(t.requested() == k.asked);
      INFO("reason: " << t.reason());
      CHECK(t.used() == k.used);
      CHECK(got.summary.context_tokens() == context.size());
      if (k.fell_back) CHECK_THAT(t.reason(), Catch::Matchers::Contains("grpc used"));
    }
    // Every cuda-ipc mapping the receivers opened was closed again (the sharer's UNMAP at close).
    CHECK(c.transports->stats->opens.load() > 0);
    CHECK(c.transports->stats->opens.load() == c.transports->stats->closes.load());
    // The sharer's GetInfo advertises what it moves caches with.
    const v1::AgentInfo info = must(a.client->get_info());
    CHECK(info.transport_info().gpu_uuid() == "GPU-fake-a");
    CHECK(info.transport_info().nccl());
    CHECK(info.transport_info().cuda_ipc());
    CHECK(std::vector<std::string>(info.transports().begin(), info.transports().end()) ==
          std::vector<std::string>{"grpc", "nccl", "cuda-ipc"});
  }

  SECTION("a prefill after a raw pull continues the pulled cache") {
    v1::PrefillRequest p2;
    *p2.add_context() = ref;
    p2.mutable_tokens()->mutable_ids()->Add(q.begin(), q.end());
    p2.set_add_bos(false);
    p2.mutable_pull()->set_transport("nccl");
    const v1::PrefillResponse made = must(b.client->prefill(p2));
    REQUIRE(made.context_transports_size() == 1);
    CHECK(made.context_transports(0).used() == "nccl");
    CHECK(made.n_tokens() == all.size());
    // Generating after that local cache continues as the text path over the same tokens does.
    v1::CacheRef local;
    local.set_cache_id(made.cache_id());
    const std::vector<int32_t> next = {100};
    std::vector<int32_t> longer = all;
    longer.push_back(next[0]);
    CHECK(run(*b.client, greedy(next, {local}, "")).ids == run(*b.client, greedy(longer, {}, "")).ids);
  }

  SECTION("a raw transport that fails falls back to grpc, and the summary says why") {
    b.transports->refuse = true;
    const Output got = run(*b.client, greedy(q, {ref}, "nccl"));
    b.transports->refuse = false;
    CHECK(got.ids == text.ids);
    REQUIRE(got.summary.context_transports_size() == 1);
    const v1::ContextTransport& t = got.summary.context_transports(0);
    CHECK(t.used() == "grpc");
    CHECK_THAT(t.reason(), Catch::Matchers::Contains("nccl failed (UNAVAILABLE: injected: the device is gone)"));
  }

  SECTION("a sharer whose transfers fail: the receiver retries over grpc") {
    a.transports->refuse = true;
    const Output got = run(*c.client, greedy(q, {ref}, "cuda-ipc"));
    a.transports->refuse = false;
    CHECK(got.ids == text.ids);
    CHECK(got.summary.context_transports(0).used() == "grpc");
    CHECK_THAT(got.summary.context_transports(0).reason(),
               Catch::Matchers::Contains("cuda-ipc failed (UNAVAILABLE: ") &&
                   Catch::Matchers::Contains("injected: the device is gone"));
  }

  SECTION("an unknown cache is NOT_FOUND, not retried") {
    v1::CacheRef gone = ref;
    gone.set_cache_id(std::string(32, 'f'));
    const auto r = b.client->generate(greedy(q, {gone}, "nccl"), [](const v1::TokenEvent&) { return true; });
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kNotFound);
  }

  SECTION("OpenTransfer, TransferStream and CloseTransfer refuse what they cannot serve") {
    auto stub = stub_for(a);
    auto receiver = must(b.transports->create(TransportKind::kNccl, Role::kReceiver, nullptr));
    const auto open = [&](const v1::OpenTransferRequest& r, v1::OpenTransferResponse* resp = nullptr) {
      grpc::ClientContext ctx;
      v1::OpenTransferResponse ignored;
      return code_of(stub->OpenTransfer(&ctx, r, resp ? resp : &ignored));
    };
    v1::OpenTransferRequest r = open_request(cache.cache_id(), TransportKind::kNccl, *b.transports, *receiver);

    v1::OpenTransferRequest bad = r;
    bad.set_cache_id(std::string(32, 'f'));
    CHECK(open(bad) == StatusCode::kNotFound);
    bad = r;
    bad.set_cache_id("not-an-id");
    CHECK(open(bad) == StatusCode::kInvalidArgument);
    for (const char* name : {"grpc", "auto", "rdma"}) {
      bad = r;
      bad.set_transport(name);
      INFO(name);
      CHECK(open(bad) == StatusCode::kInvalidArgument);
    }
    bad = r;  // NCCL between two endpoints on one GPU: the sharer's selection disagrees
    bad.mutable_receiver()->set_gpu_uuid("GPU-fake-a");
    CHECK(open(bad) == StatusCode::kFailedPrecondition);
    bad = r;  // cuda-ipc from another host
    bad.set_transport("cuda-ipc");
    bad.mutable_receiver()->set_host_id("another-host");
    CHECK(open(bad) == StatusCode::kFailedPrecondition);
    bad = r;
    bad.set_receiver_metadata("garbage");
    CHECK(open(bad) == StatusCode::kInvalidArgument);
    bad = r;
    bad.mutable_layers()->add_k(99);
    CHECK(open(bad) == StatusCode::kInvalidArgument);

    {  // A stream must name an open session first.
      grpc::ClientContext ctx;
      auto s = stub->TransferStream(&ctx);
      v1::TransferFrame f;
      f.set_session_hi(1);
      f.set_session_lo(2);
      s->Write(f);
      s->WritesDone();
      CHECK(code_of(s->Finish()) == StatusCode::kNotFound);
    }
    {  // Closing a session that does not exist is fine (idempotent); a bogus code is not.
      grpc::ClientContext ctx;
      v1::CloseTransferRequest cr;
      cr.set_session_hi(1);
      cr.set_session_lo(2);
      v1::CloseTransferResponse ignored;
      CHECK(stub->CloseTransfer(&ctx, cr, &ignored).ok());
      grpc::ClientContext ctx2;
      cr.set_code(99);
      CHECK(code_of(stub->CloseTransfer(&ctx2, cr, &ignored)) == StatusCode::kInvalidArgument);
    }
  }

  SECTION("an abandoned session expires; its stream is then NOT_FOUND and its close OK") {
    auto stub = stub_for(a);
    auto receiver = must(b.transports->create(TransportKind::kNccl, Role::kReceiver, nullptr));
    v1::OpenTransferRequest r = open_request(cache.cache_id(), TransportKind::kNccl, *b.transports, *receiver);
    r.set_timeout_ms(200);
    r.set_chunk_tokens(4);
    v1::OpenTransferResponse resp;
    {
      grpc::ClientContext ctx;
      const grpc::Status gs = stub->OpenTransfer(&ctx, r, &resp);
      INFO(gs.error_message());
      REQUIRE(gs.ok());
    }
    CHECK(resp.transport() == "nccl");
    CHECK(resp.timeout_ms() == 200);
    CHECK(resp.chunk_tokens() == 4);
    CHECK(resp.header().token_ids_size() == int(context.size()));
    CHECK(resp.header().n_chunks() == 2 * resp.header().n_layer() * 3);  // 10 cells in chunks of 4
    CHECK(resp.header().dtype() == v1::WIRE_DTYPE_F32);
    // The receiver never connects: the sends expire at 200 ms, the session 200 ms later.
    std::this_thread::sleep_for(std::chrono::milliseconds(1500));
    grpc::ClientContext ctx;
    auto s = stub->TransferStream(&ctx);
    v1::TransferFrame f;
    f.set_session_hi(resp.session_hi());
    f.set_session_lo(resp.session_lo());
    s->Write(f);
    s->WritesDone();
    CHECK(code_of(s->Finish()) == StatusCode::kNotFound);
    grpc::ClientContext ctx2;
    v1::CloseTransferRequest cr;
    cr.set_session_hi(resp.session_hi());
    cr.set_session_lo(resp.session_lo());
    v1::CloseTransferResponse ignored;
    CHECK(stub->CloseTransfer(&ctx2, cr, &ignored).ok());
    // The cache is still there, and still moves.
    CHECK(run(*b.client, greedy(q, {ref}, "nccl")).ids == text.ids);
  }

  SECTION("a dropped cache stays readable by the transfer that pinned it") {
    // Slow "device": the pull is in flight when the sharer drops the cache.
    c.transports->device.chunk_delay = std::chrono::milliseconds(10);  // ~100 ms in all
    std::thread dropper([&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(30));
      (void)a.client->drop_cache(cache.cache_id());
    });
    const Output got = run(*c.client, greedy(q, {ref}, "cuda-ipc"));
    dropper.join();
    c.transports->device.chunk_delay = std::chrono::microseconds(0);
    CHECK(got.ids == text.ids);
    CHECK(got.summary.context_transports(0).used() == "cuda-ipc");
  }
}

// Host memory that calls itself device memory: where a GPU agent's raw pulls land.
class FakeDeviceBuffers final : public BufferType {
 public:
  std::string name() const override { return "fake-device"; }
  size_t alignment() const override { return 64; }
  bool is_host() const override { return false; }
  Result<std::unique_ptr<Buffer>> alloc(size_t bytes) const override {
    return std::unique_ptr<Buffer>(new Block(bytes));
  }

 private:
  class Block final : public Buffer {
   public:
    explicit Block(size_t n) : bytes_(n) {}
    void* data() override { return bytes_.data(); }
    size_t size() const override { return bytes_.size(); }
    bool is_host() const override { return false; }
    Status set(size_t offset, const void* src, size_t n) override {
      if (offset + n > bytes_.size()) return out_of_range("fake-device: set past the end");
      std::memcpy(bytes_.data() + offset, src, n);
      return Status::Ok();
    }
    Status get(size_t offset, void* dst, size_t n) const override {
      if (offset + n > bytes_.size()) return out_of_range("fake-device: get past the end");
      std::memcpy(dst, bytes_.data() + offset, n);
      return Status::Ok();
    }

   private:
    std::vector<char> bytes_;
  };
};

TEST_CASE("a pull read in host memory stays on grpc where raw pulls land in device memory", "[transfer]") {
  Agent a = start_agent("a", "GPU-fake-a");
  v1::PrefillRequest pr;
  pr.set_text("Once upon a time, there was a little girl named Lily.");
  const v1::PrefillResponse cache = must(a.client->prefill(pr));

  // A receiver on another "GPU" whose raw pulls land in (fake) device memory.
  FakeTransports self("GPU-fake-b");
  FakeDeviceBuffers device_memory;
  self.receive = &device_memory;
  agent::PeerClientOptions o;
  o.identity = identity_of(kStories);
  o.endpoint = self.endpoint();
  o.transports = &self;
  agent::PeerClient peers(o);
  runtime::CancelToken cancel;
  const auto pull = [&](transport::TransportChoice choice, bool host_cache) {
    agent::PullOptions po;
    po.transport = choice;
    po.host_cache = host_cache;
    return must(peers.pull(a.address(), cache.cache_id(), po, cancel));
  };

  const agent::PulledCache raw = pull(transport::TransportChoice::kNccl, false);
  CHECK(raw.transport.selection.kind == TransportKind::kNccl);
  CHECK_FALSE(raw.cache->is_host());
  CHECK(raw.cache->n_tokens() == int32_t(cache.n_tokens()));

  const agent::PulledCache host = pull(transport::TransportChoice::kNccl, true);
  CHECK(host.transport.selection.kind == TransportKind::kGrpc);
  CHECK(host.transport.selection.fell_back);  // nccl was asked for
  CHECK_THAT(host.transport.selection.reason, Catch::Matchers::Contains("host memory"));
  CHECK(host.cache->is_host());
  CHECK(host.cache->n_tokens() == int32_t(cache.n_tokens()));
  const agent::PulledCache automatic = pull(transport::TransportChoice::kAuto, true);
  CHECK(automatic.transport.selection.kind == TransportKind::kGrpc);
  CHECK_FALSE(automatic.transport.selection.fell_back);  // auto just picked what works

  // Raw pulls that land in host memory (a receiver whose transports are host memory) need not
  // avoid them.
  self.receive = nullptr;
  const agent::PulledCache host_raw = pull(transport::TransportChoice::kNccl, true);
  CHECK(host_raw.transport.selection.kind == TransportKind::kNccl);
  CHECK(host_raw.cache->is_host());
}

// ============================== receiver mode ==============================

// A synthetic fuser from stories260K to aidreams260K, gates alternating as in test_fuse_e2e (receiver
// layer t % 4 = 0 both on, 1 K only, 2 V only, 3 both off): aidreams260K's 4 layers fuse K0 V0 K1 V2,
// from 4 sharer slices.
const std::string& fuser_dir() {
  static const std::string dir = [] {
    const fuser::FuserConfig cfg = test::pair_fuser_config(identity_of(kStories), identity_of(kAidreams));
    const std::string d = test::temp_dir() + "/fuser";
    REQUIRE(fuser::write_synthetic_fuser(d, cfg, 7, fuser::GatePattern::kAlternate).ok());
    return d;
  }();
  return dir;
}

std::vector<std::string> export_stream(AgentClient& agent, const std::string& cache_id) {
  std::vector<std::string> out;
  for (const v1::CacheChunk& m : must(agent.export_cache_messages(cache_id, client::ExportOptions{}))) {
    out.push_back(m.SerializeAsString());
  }
  return out;
}

TEST_CASE("receiver mode over nccl and cuda-ipc: each slice is fused as it lands; the cache is grpc's",
          "[transfer][fuse]") {
  // The sharer on "GPU a"; receivers with another model and an embedded fuser on "GPU b" (nccl from
  // the sharer) and on "GPU a" (cuda-ipc).
  Agent s = start_agent("sharer", "GPU-fake-a");
  Agent r = start_agent("receiver-b", "GPU-fake-b", kAidreams, fuser_dir());
  Agent r2 = start_agent("receiver-a", "GPU-fake-a", kAidreams, fuser_dir());
  // Slices land one after another, a few ms apart.
  for (Agent* a : {&s, &r, &r2}) a->transports->device.chunk_delay = std::chrono::milliseconds(1);

  v1::PrefillRequest sp;
  sp.set_text("Once upon a time, there was a little girl named Lily. She loved to play outside in the park.");
  const v1::PrefillResponse shared = must(s.client->prefill(sp));
  v1::CacheRef ref;
  ref.set_agent(s.address());
  ref.set_cache_id(shared.cache_id());

  const auto fused_prefill = [&](Agent& receiver, const std::string& transport) {
    v1::PrefillRequest p;
    *p.add_context() = ref;
    p.set_text(" Then the dog");
    p.mutable_pull()->set_transport(transport);
    p.mutable_fuser()->set_embedded(true);
    const v1::PrefillResponse made = must(receiver.client->prefill(p));
    REQUIRE(made.context_transports_size() == 1);
    CHECK(made.context_transports(0).requested() == transport);
    CHECK(made.context_transports(0).agent() == s.address());
    CHECK(made.fuse().slices_fused() == 4);
    CHECK(made.fuse().aligned());
    return made;
  };

  // The reference: the sharer's slices over the grpc stream (test_fuse_e2e checks that path against
  // the fuser library computed in process).
  const v1::PrefillResponse by_grpc = fused_prefill(r, "grpc");
  CHECK(by_grpc.context_transports(0).used() == "grpc");
  const std::vector<std::string> want = export_stream(*r.client, by_grpc.cache_id());
  // Raw slices are the sharer cache's own f32 rows: 4 slices of n_tokens x kv heads x head_dim.
  const ModelIdentity sid = identity_of(kStories);
  const uint64_t raw_bytes = uint64_t(by_grpc.fuse().fused_tokens()) * 4 * uint64_t(sid.n_head_kv * sid.head_dim) * 4;

  SECTION("nccl and cuda-ipc (and auto, which picks them) give grpc's cache byte for byte") {
    struct Case {
      Agent* receiver;
      const char* asked;
      const char* used;
    };
    for (const Case& k : {Case{&r, "nccl", "nccl"}, Case{&r, "auto", "nccl"}, Case{&r2, "cuda-ipc", "cuda-ipc"},
                          Case{&r2, "auto", "cuda-ipc"}}) {
      INFO("transport " << k.asked << " → " << k.used);
      const v1::PrefillResponse made = fused_prefill(*k.receiver, k.asked);
      INFO("reason: " << made.context_transports(0).reason());
      CHECK(made.context_transports(0).used() == k.used);
      CHECK(made.fuse().sharer_bytes() == raw_bytes);
      CHECK(made.fuse().fused_tokens() == by_grpc.fuse().fused_tokens());
      // The fuser started before the pull was over: every slice but those the last sharer slice
      // completes was fused while later ones were still landing.
      CHECK(made.fuse().slices_fused_early() >= 1);
      CHECK(made.fuse().slices_fused_early() < made.fuse().slices_fused());
      CHECK(export_stream(*k.receiver->client, made.cache_id()) == want);
    }
  }

  SECTION("an NCCL communicator that dies mid-pull: the rest comes over grpc, nothing is fused twice") {
    // Two of the four slices land (and are fused), then the communicator fails on both sides.
    for (Agent* a : {&s, &r}) a->transports->device.fail_after_pairs = 2;
    const v1::PrefillResponse made = fused_prefill(r, "nccl");
    for (Agent* a : {&s, &r}) a->transports->device.fail_after_pairs = 0;
    const v1::ContextTransport& t = made.context_transports(0);
    CHECK(t.used() == "grpc");
    CHECK_THAT(t.reason(), Catch::Matchers::Contains("nccl failed (UNAVAILABLE: "));
    CHECK(made.fuse().slices_fused_early() >= 1);  // over nccl, before it died
    CHECK(export_stream(*r.client, made.cache_id()) == want);
  }

  SECTION("a receiver that cannot open its endpoint pulls over grpc and fuses the same") {
    r.transports->refuse = true;
    const v1::PrefillResponse made = fused_prefill(r, "nccl");
    r.transports->refuse = false;
    CHECK(made.context_transports(0).used() == "grpc");
    CHECK_THAT(made.context_transports(0).reason(),
               Catch::Matchers::Contains("nccl failed (UNAVAILABLE: injected: the device is gone)"));
    CHECK(export_stream(*r.client, made.cache_id()) == want);
  }
}
