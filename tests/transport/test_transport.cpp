// kvbridge::transport on the CPU: the conformance suite for the in-process transport, the byte
// stream ("grpc") over an in-memory pipe, and the cuda-ipc and NCCL protocol engines over host
// fakes of their device sides; then selection, slice plans, ids, metadata, the pipe, and what is
// particular to each transport (backpressure, malformed frames, init timeouts, the unmap
// handshake, two processes over a socket).
#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include "engine/kv_wire.h"
#include "transport/byte_pipe.h"
#include "transport/fakes.h"
#include "transport/fd_pipe.h"
#include "transport/grpc_stream_transport.h"
#include "transport/in_process_transport.h"
#include "transport/ipc_engine.h"
#include "transport/metadata.h"
#include "transport/nccl_engine.h"
#include "transport/select.h"
#include "transport/suite_support.h"

namespace kvb::test::suite {

using namespace kvb::transport;

// ============================== factories ==============================

struct InProcess {
  static constexpr const char* kName = "in-process";
  static constexpr bool kInjectable = true;
  static void require_available() {}
  static Pair make(const SuiteOptions& so) {
    InProcessOptions o;
    o.timeout = so.timeout;
    o.copy_chunk = so.chunk;
    o.chunk_delay = so.chunk_delay;
    if (so.on_chunk) o.on_chunk = [f = so.on_chunk](const TransferId&, size_t) { f(); };
    auto pr = InProcessTransport::create_pair(o);
    Pair p;
    p.sharer = std::move(pr.sharer);
    p.receiver = std::move(pr.receiver);
    return p;  // the dead peer: the sharer endpoint destroyed
  }
  static std::unique_ptr<Buffer> buffer(Role, size_t n) { return std::make_unique<HostBuffer>(n); }
};

struct ByteStream {
  static constexpr const char* kName = "grpc (memory pipe)";
  static constexpr bool kInjectable = true;
  static void require_available() {}
  static Pair make(const SuiteOptions& so) {
    MemoryPipeOptions po;
    po.window_bytes = size_t(8) << 20;
    po.send_delay = so.chunk_delay;
    if (so.on_chunk) po.on_send = [f = so.on_chunk](size_t) { f(); };
    MemoryPipePair pipe = make_memory_pipe(po);
    StreamOptions o;
    o.timeout = so.timeout;
    o.max_frame_bytes = so.chunk;
    Pair p;
    p.sharer = GrpcStreamTransport::create(Role::kSharer, std::move(pipe.a), o);
    p.receiver = GrpcStreamTransport::create(Role::kReceiver, std::move(pipe.b), o);
    p.kill_sharer = [f = pipe.faults] { f->break_pipe(); };
    p.keep = pipe.faults;
    return p;
  }
  static std::unique_ptr<Buffer> buffer(Role, size_t n) { return std::make_unique<HostBuffer>(n); }
};

FakeDeviceOptions fake_options(const SuiteOptions& so) {
  FakeDeviceOptions fo;
  fo.chunk = so.chunk;
  fo.chunk_delay = so.chunk_delay;
  if (so.on_chunk) fo.on_chunk = [f = so.on_chunk](size_t) { f(); };
  return fo;
}

struct IpcHost {
  static constexpr const char* kName = "cuda-ipc protocol (host ops)";
  static constexpr bool kInjectable = true;
  static void require_available() {}
  static Pair make(const SuiteOptions& so) {
    MemoryPipePair pipe = make_memory_pipe();
    auto stats = std::make_shared<FakeDeviceStats>();
    IpcOptions o;
    o.timeout = so.timeout;
    o.release_timeout = std::chrono::milliseconds(2000);
    Pair p;
    p.sharer = make_ipc_transport(Role::kSharer, make_host_ipc_ops(fake_options(so), stats), std::move(pipe.a), o);
    p.receiver = make_ipc_transport(Role::kReceiver, make_host_ipc_ops(fake_options(so), stats), std::move(pipe.b), o);
    p.kill_sharer = [f = pipe.faults] { f->break_pipe(); };
    p.keep = pipe.faults;
    return p;
  }
  static std::unique_ptr<Buffer> buffer(Role, size_t n) { return std::make_unique<HostBuffer>(n); }
};

struct NcclFake {
  static constexpr const char* kName = "nccl protocol (fake NCCL)";
  static constexpr bool kInjectable = true;
  static void require_available() {}
  static Pair make(const SuiteOptions& so) {
    auto stats = std::make_shared<FakeDeviceStats>();
    NcclOptions o;
    o.timeout = so.timeout;
    o.connect_timeout = std::chrono::milliseconds(5000);
    auto s = make_nccl_transport(Role::kSharer, make_fake_nccl_ops(0, "GPU-fake-0", fake_options(so), stats), o);
    auto r = make_nccl_transport(Role::kReceiver, make_fake_nccl_ops(1, "GPU-fake-1", fake_options(so), stats), o);
    REQUIRE(s.ok());
    REQUIRE(r.ok());
    Pair p;
    p.sharer = std::move(s).value();
    p.receiver = std::move(r).value();
    // NCCL itself does not notice a dead peer before the deadline: the agents' control stream
    // does, and aborts the endpoint.
    p.kill_sharer = [t = p.receiver.get()] { t->abort(unavailable("the control stream to the sharer ended")); };
    return p;
  }
  static std::unique_ptr<Buffer> buffer(Role, size_t n) { return std::make_unique<HostBuffer>(n, /*as_device=*/true); }
};

}  // namespace kvb::test::suite

using InProcess = kvb::test::suite::InProcess;  // short names for the test names
using ByteStream = kvb::test::suite::ByteStream;
using IpcHost = kvb::test::suite::IpcHost;
using NcclFake = kvb::test::suite::NcclFake;
#define KVB_SUITE_TYPES InProcess, ByteStream, IpcHost, NcclFake
#define KVB_SUITE_TAGS "[transport][suite]"
#include "transport/transport_suite.h"

using namespace kvb;
using namespace kvb::transport;
using namespace kvb::test::suite;
using namespace std::chrono_literals;

// ============================== selection ==============================

namespace {

EndpointInfo gpu(const std::string& host, const std::string& uuid, bool nccl = true, bool ipc = true) {
  EndpointInfo e;
  e.host_id = host;
  e.gpu_uuid = uuid;
  e.nccl = nccl;
  e.cuda_ipc = ipc;
  return e;
}

TransportKind pick(TransportChoice c, const EndpointInfo& s, const EndpointInfo& r, SelectOptions o = {}) {
  auto sel = select_transport(c, s, r, o);
  INFO(sel.status().to_string());
  REQUIRE(sel.ok());
  INFO(sel->reason);
  return sel->kind;
}

}  // namespace

TEST_CASE("transport select: names parse and others are INVALID_ARGUMENT", "[transport][select]") {
  for (const TransportChoice c : {TransportChoice::kAuto, TransportChoice::kGrpc, TransportChoice::kNccl,
                                  TransportChoice::kCudaIpc}) {
    auto p = parse_transport(transport_name(c));
    REQUIRE(p.ok());
    CHECK(*p == c);
  }
  for (const char* bad : {"", "NCCL", "cuda_ipc", "tcp", "grpc "}) {
    auto p = parse_transport(bad);
    CHECK(p.status().code() == StatusCode::kInvalidArgument);
    CHECK(p.status().message().find("grpc, nccl, cuda-ipc or auto") != std::string::npos);
  }
  CHECK(transport_name(TransportKind::kCudaIpc) == "cuda-ipc");
}

TEST_CASE("transport select: auto prefers cuda-ipc then nccl then grpc", "[transport][select]") {
  const EndpointInfo a0 = gpu("boot:a", "GPU-0"), a0b = gpu("boot:a", "GPU-0"), a1 = gpu("boot:a", "GPU-1");
  const EndpointInfo b0 = gpu("boot:b", "GPU-9");
  EndpointInfo host_a;
  host_a.host_id = "boot:a";
  // One GPU, one host: cuda-ipc (NCCL cannot).
  CHECK(pick(TransportChoice::kAuto, a0, a0b) == TransportKind::kCudaIpc);
  // Two GPUs on one host: cuda-ipc with peer access, else nccl.
  CHECK(pick(TransportChoice::kAuto, a0, a1, {false, true}) == TransportKind::kCudaIpc);
  CHECK(pick(TransportChoice::kAuto, a0, a1) == TransportKind::kNccl);
  // Two hosts: nccl.
  CHECK(pick(TransportChoice::kAuto, a0, b0) == TransportKind::kNccl);
  // A host cache on either side: grpc.
  CHECK(pick(TransportChoice::kAuto, host_a, a0) == TransportKind::kGrpc);
  CHECK(pick(TransportChoice::kAuto, a0, host_a) == TransportKind::kGrpc);
  // Not built: skipped.
  CHECK(pick(TransportChoice::kAuto, gpu("boot:a", "GPU-0", true, false), a0b) == TransportKind::kGrpc);  // one GPU, no ipc
  CHECK(pick(TransportChoice::kAuto, gpu("boot:a", "GPU-0", false, true), a1) == TransportKind::kGrpc);
  CHECK(pick(TransportChoice::kAuto, a0, gpu("boot:b", "GPU-9", false, true)) == TransportKind::kGrpc);
  // Unknown hosts are never "one host".
  CHECK(pick(TransportChoice::kAuto, gpu("", "GPU-0"), gpu("", "GPU-0")) == TransportKind::kGrpc);
  auto sel = select_transport(TransportChoice::kAuto, host_a, a0);
  REQUIRE(sel.ok());
  CHECK(!sel->fell_back);
  CHECK(sel->reason.find("not on a GPU") != std::string::npos);
}

TEST_CASE("transport select: explicit choices with fallback or strict", "[transport][select]") {
  const EndpointInfo a0 = gpu("boot:a", "GPU-0"), a0b = gpu("boot:a", "GPU-0"), b0 = gpu("boot:b", "GPU-9");
  CHECK(pick(TransportChoice::kGrpc, a0, a0b) == TransportKind::kGrpc);
  CHECK(pick(TransportChoice::kNccl, a0, b0) == TransportKind::kNccl);
  CHECK(pick(TransportChoice::kCudaIpc, a0, a0b) == TransportKind::kCudaIpc);
  auto sel = select_transport(TransportChoice::kNccl, a0, a0b);
  REQUIRE(sel.ok());
  CHECK(sel->kind == TransportKind::kGrpc);
  CHECK(sel->fell_back);
  CHECK(sel->reason.find("one GPU") != std::string::npos);
  auto strict = select_transport(TransportChoice::kCudaIpc, a0, b0, {true, false});
  CHECK(strict.status().code() == StatusCode::kFailedPrecondition);
  CHECK(strict.status().message().find("different hosts") != std::string::npos);
  CHECK(why_not(TransportKind::kGrpc, EndpointInfo{}, EndpointInfo{}).empty());
}

// ============================== slices ==============================

TEST_CASE("transport kv slices: plan order equals the wire encoder order with distinct tags", "[transport][slices]") {
  Stories& st = stories();
  const std::vector<int32_t> prompt = st.model->tokenizer->encode("Lily and Tom went to the park to play.", {true, false});
  std::unique_ptr<KvCache> cache = prefill(prompt, 64, nullptr);
  const uint32_t n = uint32_t(cache->n_tokens());
  const ModelIdentity id = model_identity(*st.model);
  for (const uint32_t chunk : {0u, 3u, 5u}) {
    for (const bool partial : {false, true}) {
      std::optional<KvLayerSet> layers;
      if (partial) layers = KvLayerSet{{0, 3}, {1, 3, 4}};
      auto plan = plan_kv_slices(cache->layout(), n, layers, chunk);
      REQUIRE(plan.ok());
      auto enc = KvWireEncoder::create(*cache, id, WireDType::kF32, WireCompression::kNone, chunk ? chunk : n, layers);
      REQUIRE(enc.ok());
      std::vector<KvSlice> wire;
      KvWireChunk c;
      while ((*enc)->next(c)) wire.push_back(KvSlice{c.layer, c.is_v, c.token_begin, c.token_count, 0});
      REQUIRE(wire.size() == plan->size());
      std::set<uint64_t> tags;
      for (size_t i = 0; i < wire.size(); ++i) {
        const KvSlice& s = (*plan)[i];
        CHECK(s.layer == wire[i].layer);
        CHECK(s.is_v == wire[i].is_v);
        CHECK(s.token_begin == wire[i].token_begin);
        CHECK(s.token_count == wire[i].token_count);
        CHECK(s.tag == kv_slice_tag(s.layer, s.is_v, s.token_begin));
        CHECK(s.tag != 0);
        tags.insert(s.tag);
        // The byte range is exactly the slice's cells.
        auto b = slice_bytes(*cache, s);
        REQUIRE(b.ok());
        const Tensor t = s.is_v ? cache->v(int32_t(s.layer)) : cache->k(int32_t(s.layer));
        const KvRegion r = cache_region(*cache);
        CHECK(static_cast<char*>(r.ptr) + b->offset ==
              static_cast<char*>(t.data) + size_t(s.token_begin) * cache->layout().cell_bytes());
        CHECK(b->bytes == size_t(s.token_count) * cache->layout().cell_bytes());
      }
      CHECK(tags.size() == plan->size());
    }
  }
  CHECK(plan_kv_slices(cache->layout(), 0).status().code() == StatusCode::kInvalidArgument);
  CHECK(plan_kv_slices(cache->layout(), n, KvLayerSet{{3, 1}, {}}).status().code() == StatusCode::kInvalidArgument);
  CHECK(plan_kv_slices(cache->layout(), n, KvLayerSet{{}, {9}}).status().code() == StatusCode::kInvalidArgument);
  CHECK(slice_bytes(*cache, KvSlice{0, false, 60, 10, 0}).status().code() == StatusCode::kInvalidArgument);
  CHECK(slice_bytes(*cache, KvSlice{5, false, 0, 1, 0}).status().code() == StatusCode::kInvalidArgument);
  const KvRegion r = cache_region(*cache);
  CHECK(!r.is_device);
  CHECK(r.bytes == cache->bytes_allocated());
}

// ============================== ids, metadata, pipe ==============================

TEST_CASE("transport ids: unique across threads and never null", "[transport][ids]") {
  constexpr int kThreads = 4, kPer = 20000;
  std::vector<std::vector<TransferId>> got(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPer; ++i) got[size_t(t)].push_back(TransferId::generate());
    });
  }
  for (auto& t : threads) t.join();
  std::set<TransferId> all;
  for (const auto& v : got) {
    for (const TransferId& id : v) {
      CHECK(!id.is_null());
      all.insert(id);
    }
  }
  CHECK(all.size() == size_t(kThreads * kPer));
  const std::string s = TransferId::generate().to_string();
  CHECK(s.size() == 32);
  CHECK(s.find_first_not_of("0123456789abcdef") == std::string::npos);
}

TEST_CASE("transport metadata: envelope round trip and malformed or foreign blobs", "[transport][metadata]") {
  CHECK(!local_host_id().empty());
  CHECK(process_nonce() == process_nonce());
  Envelope e;
  e.transport = "grpc";
  e.role = Role::kSharer;
  e.endpoint = TransferId::generate();
  e.process = process_nonce();
  e.host_id = local_host_id();
  e.body = std::string("\0\1\2body", 7);
  const std::string blob = encode_envelope(e);
  auto d = decode_peer_envelope(blob, "grpc", Role::kReceiver);
  REQUIRE(d.ok());
  CHECK(d->endpoint == e.endpoint);
  CHECK(d->body == e.body);
  CHECK(d->host_id == e.host_id);
  CHECK(decode_peer_envelope(blob, "grpc", Role::kSharer).status().code() == StatusCode::kFailedPrecondition);
  CHECK(decode_peer_envelope(blob, "nccl", Role::kReceiver).status().code() == StatusCode::kInvalidArgument);
  for (size_t cut = 0; cut < blob.size(); cut += 3) {
    CHECK(decode_peer_envelope(blob.substr(0, cut), "grpc", Role::kReceiver).status().code() ==
          StatusCode::kInvalidArgument);
  }
  CHECK(decode_peer_envelope(blob + "x", "grpc", Role::kReceiver).status().code() == StatusCode::kInvalidArgument);
  std::string v2 = blob;
  v2[4] = 2;  // version
  CHECK(decode_peer_envelope(v2, "grpc", Role::kReceiver).status().message().find("version 2") != std::string::npos);
}

TEST_CASE("transport memory pipe: order window close break and stall", "[transport][pipe]") {
  MemoryPipeOptions o;
  o.window_bytes = 100;
  MemoryPipePair p = make_memory_pipe(o);
  const auto soon = [] { return Clock::now() + 50ms; };
  REQUIRE(p.a->send("one", soon()).ok());
  REQUIRE(p.a->send(std::string(95, 'x'), soon()).ok());
  // The window is full: the third message waits, then gives up, queuing nothing.
  CHECK(p.a->send("three", soon()).code() == StatusCode::kDeadlineExceeded);
  auto m = p.b->recv(soon());
  REQUIRE(m.ok());
  REQUIRE(m->has_value());
  CHECK(**m == "one");
  m = p.b->recv(soon());
  REQUIRE(m.ok());
  CHECK((*m)->size() == 95);
  m = p.b->recv(soon());
  REQUIRE(m.ok());
  CHECK(!m->has_value());  // timeout
  // Stalled: nothing is delivered.
  p.faults->set_stalled(true);
  REQUIRE(p.b->send("back", soon()).ok());
  m = p.a->recv(soon());
  REQUIRE(m.ok());
  CHECK(!m->has_value());
  p.faults->set_stalled(false);
  m = p.a->recv(soon());
  REQUIRE(m.ok());
  CHECK(**m == "back");
  // Closed: the peer reads what was sent, then UNAVAILABLE.
  REQUIRE(p.a->send("last", soon()).ok());
  p.a->close();
  CHECK(p.a->send("more", soon()).code() == StatusCode::kUnavailable);
  m = p.b->recv(soon());
  REQUIRE(m.ok());
  CHECK(**m == "last");
  CHECK(p.b->recv(soon()).status().code() == StatusCode::kUnavailable);
  // Broken: at once.
  MemoryPipePair q = make_memory_pipe();
  REQUIRE(q.a->send("lost", soon()).ok());
  q.faults->break_pipe();
  CHECK(q.b->recv(soon()).status().code() == StatusCode::kUnavailable);
  CHECK(q.a->send("x", soon()).code() == StatusCode::kUnavailable);
}

// ============================== grpc stream specifics ==============================

TEST_CASE("transport grpc stream: unmatched frames are buffered and then the stream waits for a recv",
          "[transport][grpc]") {
  MemoryPipePair pipe = make_memory_pipe();
  StreamOptions o;
  o.max_frame_bytes = 16 << 10;
  o.max_unmatched_bytes = 64 << 10;
  auto s = GrpcStreamTransport::create(Role::kSharer, std::move(pipe.a), o);
  auto r = GrpcStreamTransport::create(Role::kReceiver, std::move(pipe.b), o);
  constexpr size_t kA = 256 << 10, kB = 16 << 10;
  HostBuffer src(kA + kB), dst(kA + kB);
  const std::vector<char> data = random_bytes(kA + kB, 4);
  src.write(0, data.data(), data.size());
  MemoryHandle hs = must_register(*s, src), hr = must_register(*r, dst);
  Pair p{std::move(s), std::move(r), nullptr, nullptr};
  connect(p);
  auto sa = must_post(p.sharer->post_send(hs, 0, kA, 1));
  auto sb = must_post(p.sharer->post_send(hs, kA, kB, 2));
  // B is behind A in the stream, and A does not fit the buffer: B waits until A has a recv.
  auto rb = must_post(p.receiver->post_recv(hr, kA, kB, 2));
  std::this_thread::sleep_for(100ms);
  CHECK(rb.poll().in_progress());
  auto ra = must_post(p.receiver->post_recv(hr, 0, kA, 1));
  require_done(ra);
  require_done(rb);
  require_done(sa);
  require_done(sb);
  CHECK(dst.all() == data);
}

TEST_CASE("transport grpc stream: a malformed frame fails the endpoint with INVALID_ARGUMENT", "[transport][grpc]") {
  MemoryPipePair pipe = make_memory_pipe();
  auto r = GrpcStreamTransport::create(Role::kReceiver, std::move(pipe.b));
  HostBuffer dst(64);
  MemoryHandle hr = must_register(*r, dst);
  auto t = must_post(r->post_recv(hr, 0, 64, 1));
  REQUIRE(pipe.a->send(std::string("\x01garbage", 8), Clock::now() + 1s).ok());
  require_error(t, StatusCode::kInvalidArgument);
  CHECK(r->post_recv(hr, 0, 64, 2).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("transport grpc stream: two processes over a socket", "[transport][grpc][process]") {
  const auto [data_a, data_b] = test::socket_pair();
  const auto [ctl_a, ctl_b] = test::socket_pair();
  REQUIRE(data_a >= 0);
  REQUIRE(ctl_a >= 0);
  constexpr size_t kSize = 3 << 20;
  constexpr int kTags = 6;
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {  // the sharer process: exit code 0 when every send completed
    ::close(data_b);
    ::close(ctl_b);
    int rc = 1;
    {
      auto ctl = test::make_fd_pipe(ctl_a);
      auto t = GrpcStreamTransport::create(Role::kSharer, test::make_fd_pipe(data_a));
      HostBuffer src(kSize);
      const std::vector<char> data = random_bytes(kSize, 77);
      src.write(0, data.data(), kSize);
      auto h = t->register_memory(src.region());
      auto md = t->metadata();
      auto peer = ctl->recv(Clock::now() + 20s);
      if (h.ok() && md.ok() && ctl->send(*md, Clock::now() + 5s).ok() && peer.ok() && *peer &&
          t->connect(**peer).ok()) {
        std::vector<Transfer> sends;
        for (int i = 0; i < kTags; ++i) {
          auto x = t->post_send(*h, size_t(i) * (kSize / kTags), kSize / kTags, uint64_t(i));
          if (x.ok()) sends.push_back(std::move(x).value());
        }
        rc = sends.size() == kTags ? 0 : 2;
        for (auto& x : sends) {
          if (!x.wait(Clock::now() + 20s).done()) rc = 3;
        }
        (void)ctl->recv(Clock::now() + 20s);  // the receiver's "done"
      }
    }
    _exit(rc);
  }
  ::close(data_a);
  ::close(ctl_a);
  auto ctl = test::make_fd_pipe(ctl_b);
  auto t = GrpcStreamTransport::create(Role::kReceiver, test::make_fd_pipe(data_b));
  HostBuffer dst(kSize);
  MemoryHandle h = must_register(*t, dst);
  std::vector<Transfer> recvs;
  for (int i = kTags; i-- > 0;) {  // in reverse: tags match across processes
    recvs.push_back(must_post(t->post_recv(h, size_t(i) * (kSize / kTags), kSize / kTags, uint64_t(i))));
  }
  auto md = t->metadata();
  REQUIRE(md.ok());
  REQUIRE(ctl->send(*md, Clock::now() + 5s).ok());
  auto peer = ctl->recv(Clock::now() + 20s);
  REQUIRE(peer.ok());
  REQUIRE(peer->has_value());
  REQUIRE(t->connect(**peer).ok());
  for (auto& x : recvs) require_done(x);
  CHECK(dst.all() == random_bytes(kSize, 77));
  REQUIRE(ctl->send("done", Clock::now() + 5s).ok());
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

// ============================== nccl protocol specifics ==============================

namespace {

struct FakeNcclPair {
  std::shared_ptr<test::FakeDeviceStats> stats = std::make_shared<test::FakeDeviceStats>();
  std::unique_ptr<KvTransport> sharer, receiver;
};

FakeNcclPair fake_nccl(const NcclOptions& o, const test::FakeDeviceOptions& fo = {}, const std::string& uuid_r = "GPU-1") {
  FakeNcclPair p;
  auto s = make_nccl_transport(Role::kSharer, test::make_fake_nccl_ops(0, "GPU-0", fo, p.stats), o);
  auto r = make_nccl_transport(Role::kReceiver, test::make_fake_nccl_ops(1, uuid_r, fo, p.stats), o);
  REQUIRE(s.ok());
  REQUIRE(r.ok());
  p.sharer = std::move(s).value();
  p.receiver = std::move(r).value();
  return p;
}

}  // namespace

TEST_CASE("transport nccl protocol: two endpoints on one GPU are refused", "[transport][nccl]") {
  FakeNcclPair p = fake_nccl({}, {}, "GPU-0");
  auto ms = p.sharer->metadata();
  REQUIRE(ms.ok());
  const Status st = p.receiver->connect(*ms);
  CHECK(st.code() == StatusCode::kFailedPrecondition);
  CHECK(st.message().find("cuda-ipc") != std::string::npos);
}

TEST_CASE("transport nccl protocol: a peer that never joins times out the init (UNAVAILABLE)", "[transport][nccl]") {
  NcclOptions o;
  o.connect_timeout = 200ms;
  FakeNcclPair p = fake_nccl(o);
  HostBuffer dst(4096, true);
  MemoryHandle h = must_register(*p.receiver, dst);
  auto r = must_post(p.receiver->post_recv(h, 0, 4096, 1));
  auto ms = p.sharer->metadata();
  REQUIRE(ms.ok());
  REQUIRE(p.receiver->connect(*ms).ok());  // the sharer never connects: rank 0 never joins
  require_error(r, StatusCode::kUnavailable);
  CHECK(r.poll().status.message().find("never joined") != std::string::npos);
  CHECK(p.receiver->connection().error());
  CHECK(p.stats->aborts >= 1);
}

TEST_CASE("transport nccl protocol: sizes that differ hang until the deadline and then abort", "[transport][nccl]") {
  FakeNcclPair p = fake_nccl({});
  HostBuffer src(4096, true), dst(4096, true);
  MemoryHandle hs = must_register(*p.sharer, src), hr = must_register(*p.receiver, dst);
  Pair pair{std::move(p.sharer), std::move(p.receiver), nullptr, nullptr};
  connect(pair);
  auto s = must_post(pair.sharer->post_send(hs, 0, 4096, 1, PostOptions{Clock::now() + 300ms}));
  auto r = must_post(pair.receiver->post_recv(hr, 0, 2048, 1, PostOptions{Clock::now() + 300ms}));
  require_error(s, StatusCode::kUnavailable);
  require_error(r, StatusCode::kUnavailable);
  CHECK(p.stats->aborts == 2);
}

TEST_CASE("transport nccl protocol: posting order and events in flight and a cancel aborts the rest",
          "[transport][nccl]") {
  Gate gate;
  test::FakeDeviceOptions fo;
  fo.chunk = 4096;
  fo.enqueue_polls = 3;
  fo.on_chunk = [&](size_t) { gate.pass(); };
  FakeNcclPair p = fake_nccl({}, fo);
  HostBuffer src(3 * 16384, true), dst(3 * 16384, true);
  const std::vector<char> data = random_bytes(3 * 16384, 8);
  src.write(0, data.data(), data.size());
  MemoryHandle hs = must_register(*p.sharer, src), hr = must_register(*p.receiver, dst);
  Pair pair{std::move(p.sharer), std::move(p.receiver), nullptr, nullptr};
  connect(pair);
  gate.close();
  std::vector<Transfer> s, r;
  for (uint64_t i = 0; i < 3; ++i) {
    s.push_back(must_post(pair.sharer->post_send(hs, i * 16384, 16384, i)));
    r.push_back(must_post(pair.receiver->post_recv(hr, i * 16384, 16384, i)));
  }
  REQUIRE(gate.wait_arrival(1));
  // The first copy is on the "stream": its event appears once its group was enqueued.
  const auto until = Clock::now() + 2s;
  while (r[0].native_event() == nullptr && Clock::now() < until) std::this_thread::sleep_for(1ms);
  CHECK(r[0].native_event() != nullptr);
  CHECK(r[0].poll().in_progress());
  r[2].cancel();
  gate.open();
  require_error(r[2], StatusCode::kCancelled);
  // The first copy was on the device when the abort came: it ends with the abort.
  for (auto* t : {&r[0], &r[1]}) {
    const PollResult x = finish(*t);
    INFO(x.status.to_string());
    CHECK((x.done() || x.status.code() == StatusCode::kAborted));
  }
  CHECK(pair.receiver->post_recv(hr, 0, 16, 9).status().code() == StatusCode::kAborted);
  pair.sharer->abort(unavailable("the receiver's side went away"));
  for (auto& t : s) CHECK(!finish(t).in_progress());
}

// ============================== cuda-ipc protocol specifics ==============================

namespace {

struct HostIpcPair {
  std::shared_ptr<test::FakeDeviceStats> stats = std::make_shared<test::FakeDeviceStats>();
  std::shared_ptr<MemoryPipeFaults> faults;
  Pair pair;
};

HostIpcPair host_ipc(const test::FakeDeviceOptions& fo = {}, IpcOptions o = {}) {
  HostIpcPair p;
  MemoryPipePair pipe = make_memory_pipe();
  p.faults = pipe.faults;
  p.pair.sharer = make_ipc_transport(Role::kSharer, test::make_host_ipc_ops(fo, p.stats), std::move(pipe.a), o);
  p.pair.receiver = make_ipc_transport(Role::kReceiver, test::make_host_ipc_ops(fo, p.stats), std::move(pipe.b), o);
  return p;
}

}  // namespace

TEST_CASE("transport cuda-ipc protocol: one mapping per region released before the sharer memory",
          "[transport][ipc]") {
  Gate gate;
  test::FakeDeviceOptions fo;
  fo.chunk = 4096;
  fo.on_chunk = [&](size_t) { gate.pass(); };
  HostIpcPair p = host_ipc(fo);
  auto src = std::make_unique<HostBuffer>(65536);
  HostBuffer dst(65536);
  const std::vector<char> data = random_bytes(65536, 12);
  src->write(0, data.data(), data.size());
  auto hs = std::make_unique<MemoryHandle>(must_register(*p.pair.sharer, *src));
  MemoryHandle hr = must_register(*p.pair.receiver, dst);
  connect(p.pair);
  for (uint64_t i = 0; i < 4; ++i) {
    auto s = must_post(p.pair.sharer->post_send(*hs, i * 16384, 16384, i));
    auto r = must_post(p.pair.receiver->post_recv(hr, i * 16384, 16384, i));
    require_done(r);
    require_done(s);  // DONE: the receiver finished reading
  }
  CHECK(dst.all() == data);
  CHECK(p.stats->opens == 1);
  CHECK(p.stats->closes == 0);
  // A copy in flight: destroying the sharer's handle waits for the receiver to unmap, which waits
  // for the copy.
  gate.close();
  auto s = must_post(p.pair.sharer->post_send(*hs, 0, 16384, 10));
  auto r = must_post(p.pair.receiver->post_recv(hr, 0, 16384, 10));
  REQUIRE(gate.wait_arrival(1));
  std::atomic<bool> released{false};
  std::thread t([&] {
    hs.reset();
    released = true;
  });
  std::this_thread::sleep_for(100ms);
  CHECK(!released);  // the receiver is still reading the sharer's memory
  gate.open();
  t.join();
  CHECK(released);
  CHECK(p.stats->closes == 1);
  require_error(s, StatusCode::kCancelled);  // cancelled by the handle's destruction
  const PollResult pr = finish(r);
  INFO(pr.status.to_string());
  CHECK(pr.error());  // the sharer revoked it; the copy had run to its end first
  src.reset();        // now the sharer may free it
}

TEST_CASE("transport cuda-ipc protocol: sends wait for their ready event and other hosts are refused", "[transport][ipc]") {
  HostIpcPair p = host_ipc();
  HostBuffer src(4096), dst(4096);
  const std::vector<char> data = random_bytes(4096, 13);
  src.write(0, data.data(), data.size());
  MemoryHandle hs = must_register(*p.pair.sharer, src), hr = must_register(*p.pair.receiver, dst);
  connect(p.pair);
  test::FakeEvent ev;
  PostOptions po;
  po.ready_event = &ev;
  auto s = must_post(p.pair.sharer->post_send(hs, 0, 4096, 1, po));
  auto r = must_post(p.pair.receiver->post_recv(hr, 0, 4096, 1));
  std::this_thread::sleep_for(50ms);
  CHECK(r.poll().in_progress());
  ev.fired = true;
  require_done(r);
  require_done(s);
  CHECK(dst.all() == data);
  // Direction and host checks.
  CHECK(p.pair.receiver->post_send(hr, 0, 16, 2).status().code() == StatusCode::kUnimplemented);
  HostIpcPair q = host_ipc();
  Envelope e;
  e.transport = test::host_ipc_caps().name;
  e.role = Role::kSharer;
  e.endpoint = TransferId::generate();
  e.process = process_nonce();
  e.host_id = "boot:another-host";
  CHECK(q.pair.receiver->connect(encode_envelope(e)).code() == StatusCode::kFailedPrecondition);
}

// ============================== in-process specifics ==============================

TEST_CASE("transport in-process: only the pair's own endpoints connect", "[transport][in-process]") {
  auto a = InProcessTransport::create_pair();
  auto b = InProcessTransport::create_pair();
  auto mb = b.sharer->metadata();
  REQUIRE(mb.ok());
  CHECK(a.receiver->connect(*mb).code() == StatusCode::kFailedPrecondition);
  CHECK(InProcessTransport::capabilities().name == "in-process");
  CHECK(InProcessTransport::capabilities().supports(MemoryKind::kHost));
  CHECK(!InProcessTransport::capabilities().supports(MemoryKind::kDevice));
}
