// End-to-end tests of kvbridge-agent: real agent processes on 127.0.0.1 (free ports, started and
// stopped by each test case) driven through the client library, as a user would.
//
// Token-level comparisons use token ids, not text: a cache of text1 followed by text2 tokenized
// on its own is not the tokenization of text1 + text2, so "context as a cache" and "context as
// text" are compared on the same ids (BOS included in the ids, add_bos = false everywhere).
// All generations are greedy with ignore_eos, so equal caches must give equal ids.
//
// Models: stories260K (.bin + tok512.bin) from $KVBRIDGE_MODELS; aidreams260K for "a different
// model". TLS material is made at test time with the openssl binary.
#include <grpcpp/grpcpp.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <thread>

#include "client/agent_client.h"
#include "client/agent_process.h"
#include "engine/model.h"
#include "kernels/registry.h"
#include "proto/wire_convert.h"
#include "support/test_support.h"

using namespace kvb;
namespace v1 = ::kvbridge::v1;
using client::AgentClient;
using client::AgentProcess;
using Clock = std::chrono::steady_clock;

namespace {

// ============================== fixtures ==============================

constexpr const char* kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with "
    "her big red ball. One day, she saw a small dog sitting under a tree. The dog was sad because it "
    "was lost. Lily wanted to help the dog find its home. She asked her mom, and her mom said yes. "
    "They walked around the park and asked everyone if they knew the dog. Then they saw a boy who was "
    "crying. The boy saw the dog and smiled. It was his dog!";
constexpr const char* kQuestion = " What did Lily do next?";
constexpr const char* kMore =
    " The boy said thank you to Lily. They became good friends and played together every day.";

struct ModelFiles {
  std::string model, tokenizer;
};
ModelFiles stories() {
  return {test::model_path("stories260K/stories260K.bin"), test::model_path("stories260K/tok512.bin")};
}
ModelFiles aidreams() {
  return {test::model_path("aidreams260K/aidreams260K.bin"), test::model_path("aidreams260K/tok512.bin")};
}

template <class T>
T must(Result<T> r) {
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  return std::move(r).value();
}
void must_ok(const Status& s) {
  INFO(s.to_string());
  REQUIRE(s.ok());
}
template <class T>
Status status_of(const Result<T>& r) {
  return r.status();
}
Status status_of(const Status& s) { return s; }

// Asserts the code of a failed call and returns its message.
#define REQUIRE_CODE(expr, want)                  \
  do {                                            \
    const ::kvb::Status kvb_s_ = status_of(expr); \
    INFO("got: " << kvb_s_.to_string());          \
    REQUIRE(kvb_s_.code() == (want));             \
  } while (0)

std::unique_ptr<AgentProcess> start_agent(const std::string& name, std::vector<std::string> extra = {},
                                          const ModelFiles& m = stories()) {
  client::AgentProcessOptions o;
  o.binary = KVB_AGENT_BIN;
  o.args = {"--model", m.model, "--tokenizer", m.tokenizer, "--name", name};
  // One engine thread per agent unless asked otherwise: tests run several agents on few cores.
  if (std::find(extra.begin(), extra.end(), "--threads") == extra.end())
    o.args.insert(o.args.end(), {"--threads", "1"});
  o.args.insert(o.args.end(), extra.begin(), extra.end());
  o.log_path = test::temp_dir() + "/" + name + ".log";
  return must(AgentProcess::start(o));
}

std::unique_ptr<AgentClient> connect_to(const AgentProcess& a, const client::ClientOptions& o = {}) {
  return must(AgentClient::connect(a.address(), o));
}

bool process_alive(const AgentProcess& a) { return a.running() && ::waitpid(a.pid(), nullptr, WNOHANG) == 0; }

const Tokenizer& tokenizer() {
  static const std::unique_ptr<Model> m = must(load_model(stories().model, LoadOptions{stories().tokenizer}));
  return *m->tokenizer;
}
std::vector<int32_t> encode(const std::string& text, bool bos) { return tokenizer().encode(text, EncodeOptions{bos}); }
std::vector<int32_t> concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A greedy Generate over token ids (no BOS added) after `context`.
v1::GenerateRequest greedy(const std::vector<int32_t>& ids, const std::vector<v1::CacheRef>& context = {},
                           uint32_t n = 24, v1::WireDType wire = v1::WIRE_DTYPE_F32) {
  v1::GenerateRequest r;
  r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  for (const v1::CacheRef& c : context) *r.add_context() = c;
  r.set_add_bos(false);
  r.set_max_tokens(n);
  r.set_ignore_eos(true);
  r.mutable_sampling()->set_temperature(0);
  r.mutable_pull()->set_dtype(wire);
  return r;
}

struct Output {
  std::vector<int32_t> ids;
  std::string text;
  v1::GenerateSummary summary;
};

Result<Output> run(AgentClient& agent, const v1::GenerateRequest& req) {
  Output out;
  KVB_ASSIGN_OR_RETURN(out.summary, agent.generate(req, [&](const v1::TokenEvent& t) {
    out.ids.push_back(t.id());
    out.text += t.text();
    return true;
  }));
  return out;
}

v1::PrefillResponse prefill(AgentClient& agent, const std::vector<int32_t>& ids,
                            const std::vector<v1::CacheRef>& context = {}, bool pin = false, uint32_t ttl_s = 0,
                            v1::WireDType wire = v1::WIRE_DTYPE_F32) {
  v1::PrefillRequest r;
  r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  for (const v1::CacheRef& c : context) *r.add_context() = c;
  r.set_add_bos(false);
  r.set_pin(pin);
  r.set_cache_ttl_seconds(ttl_s);
  r.mutable_pull()->set_dtype(wire);
  return must(agent.prefill(r));
}

std::vector<v1::CacheChunk> export_msgs(AgentClient& agent, const std::string& id,
                                        v1::WireDType dtype = v1::WIRE_DTYPE_F32, uint32_t chunk_tokens = 0) {
  client::ExportOptions o;
  o.dtype = dtype;
  o.chunk_tokens = chunk_tokens;
  return must(agent.export_cache_messages(id, o));
}

// A cache's values, decoded from an f32 uncompressed export: [kind][layer][token][head][dim].
struct CacheValues {
  uint32_t n_layer = 0, n_tokens = 0, n_head_kv = 0, head_dim = 0;
  int32_t pos0 = 0;
  std::vector<int32_t> tokens;
  std::vector<float> kv;

  size_t index(int kind, uint32_t layer, uint32_t token, uint32_t head, uint32_t dim) const {
    return (((size_t(kind) * n_layer + layer) * n_tokens + token) * n_head_kv + head) * head_dim + dim;
  }
  float at(int kind, uint32_t layer, uint32_t token, uint32_t head, uint32_t dim) const {
    return kv[index(kind, layer, token, head, dim)];
  }
};

CacheValues decode_f32(const std::vector<v1::CacheChunk>& msgs) {
  REQUIRE(msgs.size() >= 2);
  REQUIRE(msgs.front().has_header());
  REQUIRE(msgs.back().has_trailer());
  const v1::KvHeader& h = msgs.front().header();
  REQUIRE(h.dtype() == v1::WIRE_DTYPE_F32);
  REQUIRE(h.compression() == v1::COMPRESSION_NONE);
  CacheValues c;
  c.n_layer = h.n_layer();
  c.n_tokens = uint32_t(h.token_ids_size());
  c.n_head_kv = h.n_head_kv();
  c.head_dim = h.head_dim();
  c.pos0 = h.pos0();
  c.tokens.assign(h.token_ids().begin(), h.token_ids().end());
  c.kv.assign(size_t(2) * c.n_layer * c.n_tokens * c.n_head_kv * c.head_dim, std::nanf(""));
  for (size_t i = 1; i + 1 < msgs.size(); ++i) {
    const v1::KvData& d = msgs[i].data();
    const int kind = d.kind() == v1::KV_KIND_V ? 1 : 0;
    const size_t n = size_t(d.token_count()) * c.n_head_kv * c.head_dim;
    REQUIRE(d.payload().size() == n * sizeof(float));
    std::memcpy(&c.kv[c.index(kind, d.layer(), d.token_begin(), 0, 0)], d.payload().data(), n * sizeof(float));
  }
  for (float x : c.kv) REQUIRE(!std::isnan(x));  // every cell was covered
  return c;
}

// What identifies a cache listing: ids, sizes, pins.
std::set<std::string> listing(AgentClient& agent) {
  std::set<std::string> s;
  const v1::ListCachesResponse l = must(agent.list_caches());
  for (const v1::CacheInfo& c : l.caches()) {
    s.insert(c.cache_id() + ":" + std::to_string(c.n_tokens()) + ":" + std::to_string(c.bytes()) + ":" +
             (c.pinned() ? "pinned" : "unpinned"));
  }
  return s;
}

std::string self_exe() {
  char buf[4096];
  const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  REQUIRE(n > 0);
  return std::string(buf, size_t(n));
}

}  // namespace

// ============================== cache passing ==============================

TEST_CASE("B continuing from A's cache equals B given the context as text", "[e2e][pass]") {
  auto a = start_agent("pass-a");
  auto b = start_agent("pass-b");
  auto ca = connect_to(*a);
  auto cb = connect_to(*b);

  const std::vector<int32_t> ctx = encode(kStory, /*bos=*/true);
  const std::vector<int32_t> q = encode(kQuestion, /*bos=*/false);
  REQUIRE(ctx.size() > 80);
  const v1::PrefillResponse cache = prefill(*ca, ctx);
  REQUIRE(cache.n_tokens() == ctx.size());
  const v1::CacheRef ref = client::cache_ref(a->address(), cache.cache_id());

  const Output text = must(run(*cb, greedy(concat(ctx, q))));
  REQUIRE(text.ids.size() == 24);
  CHECK(text.summary.context_tokens() == 0);
  CHECK(text.summary.prompt_tokens() == ctx.size() + q.size());

  SECTION("f32 and f16 wire: token for token") {
    for (const v1::WireDType wire : {v1::WIRE_DTYPE_F32, v1::WIRE_DTYPE_F16}) {
      INFO("wire " << v1::WireDType_Name(wire));
      const Output passed = must(run(*cb, greedy(q, {ref}, 24, wire)));
      CHECK(passed.ids == text.ids);
      CHECK(passed.text == text.text);
      CHECK(passed.summary.context_tokens() == ctx.size());
      CHECK(passed.summary.prompt_tokens() == q.size());
      // The receiver pulled the cache itself: f32 is 4 bytes per value, f16 2, plus framing.
      const uint64_t raw = uint64_t(ctx.size()) * 1280 / (wire == v1::WIRE_DTYPE_F16 ? 2 : 1);
      CHECK(passed.summary.context_bytes_pulled() >= raw);
      CHECK(passed.summary.context_bytes_pulled() < raw + raw / 10 + 4096);
    }
  }

  SECTION("int8 wire: every value within scale/2 of the original, and the same first tokens") {
    // kv_wire.h: x ≈ scale·q with scale = max|x| / 127 over one head of one token, so the round
    // trip error of each value is at most scale/2 (plus f32 rounding, far below 1e-4·scale).
    // B prefills the question after A's cache pulled as int8; its stored cells [0, n) are the
    // dequantized context and are compared with A's f32 values.
    const v1::PrefillResponse b_cache = prefill(*cb, q, {ref}, false, 0, v1::WIRE_DTYPE_INT8);
    REQUIRE(b_cache.n_tokens() == ctx.size() + q.size());
    const CacheValues orig = decode_f32(export_msgs(*ca, cache.cache_id()));
    const CacheValues recv = decode_f32(export_msgs(*cb, b_cache.cache_id()));
    REQUIRE(recv.tokens == concat(ctx, q));
    double worst_ratio = 0;  // max |error| / scale
    for (int kind = 0; kind < 2; ++kind) {
      for (uint32_t l = 0; l < orig.n_layer; ++l) {
        for (uint32_t t = 0; t < orig.n_tokens; ++t) {
          for (uint32_t h = 0; h < orig.n_head_kv; ++h) {
            float amax = 0;
            for (uint32_t d = 0; d < orig.head_dim; ++d) amax = std::max(amax, std::fabs(orig.at(kind, l, t, h, d)));
            const double scale = double(amax) / 127.0;
            for (uint32_t d = 0; d < orig.head_dim; ++d) {
              const double err = std::fabs(double(recv.at(kind, l, t, h, d)) - double(orig.at(kind, l, t, h, d)));
              REQUIRE(err <= scale * (0.5 + 1e-4) + 1e-30);
              if (scale > 0) worst_ratio = std::max(worst_ratio, err / scale);
            }
          }
        }
      }
    }
    CHECK(worst_ratio > 0.1);  // int8 really is lossy: the bound is being exercised, not bypassed

    // Greedy decoding from the int8 cache: the first kInt8SameTokens tokens are the text ones.
    // (Errors of at most scale/2 move this model's logits by well under the top-2 margin of
    // those first steps; later tokens may diverge and are not asserted.)
    constexpr size_t kInt8SameTokens = 8;
    const Output passed = must(run(*cb, greedy(q, {ref}, 24, v1::WIRE_DTYPE_INT8)));
    REQUIRE(passed.ids.size() == 24);
    CHECK(std::vector<int32_t>(passed.ids.begin(), passed.ids.begin() + kInt8SameTokens) ==
          std::vector<int32_t>(text.ids.begin(), text.ids.begin() + kInt8SameTokens));
    CHECK(passed.summary.context_tokens() == ctx.size());
  }

  SECTION("transport choice: resolved against the sharer's TransportInfo, grpc when nothing else serves") {
    // Both agents report their host; neither moves caches over a device transport.
    const v1::AgentInfo info_a = must(ca->get_info());
    CHECK(!info_a.transport_info().host_id().empty());
    CHECK(info_a.transport_info().host_id() == must(cb->get_info()).transport_info().host_id());
    CHECK_FALSE(info_a.transport_info().nccl());
    CHECK_FALSE(info_a.transport_info().cuda_ipc());
    CHECK(info_a.transport_info().gpu_uuid().empty());

    struct Case {
      const char* asked;
      const char* reported;  // requested, as the summary says it
      const char* reason;    // a piece of select_transport's reason
    };
    for (const Case& c : {Case{"", "auto", "auto: grpc (cuda-ipc: the sharer's caches are not on a GPU"},
                          Case{"auto", "auto", "nccl: the sharer's caches are not on a GPU"},
                          Case{"grpc", "grpc", "grpc as asked"},
                          Case{"nccl", "nccl", "nccl asked, grpc used: the sharer's caches are not on a GPU"},
                          Case{"cuda-ipc", "cuda-ipc", "cuda-ipc asked, grpc used"}}) {
      INFO("transport '" << c.asked << "'");
      v1::GenerateRequest r = greedy(q, {ref}, 24, v1::WIRE_DTYPE_F32);
      r.mutable_pull()->set_transport(c.asked);
      const Output passed = must(run(*cb, r));
      CHECK(passed.ids == text.ids);
      REQUIRE(passed.summary.context_transports_size() == 1);
      const v1::ContextTransport& t = passed.summary.context_transports(0);
      CHECK(t.agent() == a->address());
      CHECK(t.cache_id() == cache.cache_id());
      CHECK(t.requested() == c.reported);
      CHECK(t.used() == "grpc");
      CHECK_THAT(t.reason(), Catch::Matchers::Contains(c.reason));
    }
    // Prefill reports the same; a local context is not a pull and reports nothing.
    v1::PrefillRequest pr;
    *pr.add_context() = ref;
    pr.mutable_tokens()->mutable_ids()->Add(q.begin(), q.end());
    pr.set_add_bos(false);
    pr.mutable_pull()->set_transport("nccl");
    const v1::PrefillResponse p = must(cb->prefill(pr));
    REQUIRE(p.context_transports_size() == 1);
    CHECK(p.context_transports(0).used() == "grpc");
    pr.clear_context();
    *pr.add_context() = client::cache_ref("", p.cache_id());
    CHECK(must(cb->prefill(pr)).context_transports_size() == 0);

    v1::GenerateRequest bad = greedy(q, {ref}, 4, v1::WIRE_DTYPE_F32);
    bad.mutable_pull()->set_transport("rdma");
    REQUIRE_CODE(run(*cb, bad), StatusCode::kInvalidArgument);
  }

  SECTION("zstd-compressed pulls and bf16 are accepted too") {
    v1::GenerateRequest r = greedy(q, {ref}, 24, v1::WIRE_DTYPE_F32);
    r.mutable_pull()->set_compression(v1::COMPRESSION_ZSTD);
    CHECK(must(run(*cb, r)).ids == text.ids);
    r.mutable_pull()->set_dtype(v1::WIRE_DTYPE_BF16);
    const Output bf16 = must(run(*cb, r));
    CHECK(bf16.ids.size() == 24);
    CHECK(bf16.summary.context_tokens() == ctx.size());
  }
}

TEST_CASE("caches passed in a row concatenate like the texts", "[e2e][pass]") {
  auto a = start_agent("chain-a");
  auto b = start_agent("chain-b");
  auto c = start_agent("chain-c");
  auto ca = connect_to(*a);
  auto cb = connect_to(*b);
  auto cc = connect_to(*c);

  const std::vector<int32_t> t1 = encode(kStory, true);
  const std::vector<int32_t> t2 = encode(kMore, false);
  const std::vector<int32_t> q = encode(kQuestion, false);

  SECTION("A's cache → B prefills more → C continues from B's cache") {
    const v1::PrefillResponse a1 = prefill(*ca, t1);
    const v1::PrefillResponse b1 = prefill(*cb, t2, {client::cache_ref(a->address(), a1.cache_id())});
    REQUIRE(b1.n_tokens() == t1.size() + t2.size());

    const Output chained = must(run(*cc, greedy(q, {client::cache_ref(b->address(), b1.cache_id())})));
    const Output text = must(run(*cc, greedy(concat(concat(t1, t2), q))));
    CHECK(chained.ids == text.ids);
    CHECK(chained.summary.context_tokens() == t1.size() + t2.size());
  }

  SECTION("a context of two caches [x, y]: x as it was, then y shifted after it") {
    const v1::PrefillResponse x = prefill(*ca, t1);
    const v1::PrefillResponse y = prefill(*cb, concat({tokenizer().bos()}, t2));  // computed at positions 0..
    const std::vector<v1::CacheRef> refs = {client::cache_ref(a->address(), x.cache_id()),
                                            client::cache_ref(b->address(), y.cache_id())};
    const Output out = must(run(*cc, greedy(q, refs, 16)));
    CHECK(out.ids.size() == 16);
    CHECK(!out.text.empty());
    CHECK(out.summary.context_tokens() == x.n_tokens() + y.n_tokens());

    // What C built: x's cells unchanged; y's values unchanged and y's keys re-rotated by
    // delta = |x| positions (RoPE "normal": each adjacent pair (2i, 2i+1) turns by an angle, which
    // keeps the pair's norm and changes the pair).
    const v1::PrefillResponse z = prefill(*cc, q, refs);
    const CacheValues vx = decode_f32(export_msgs(*ca, x.cache_id()));
    const CacheValues vy = decode_f32(export_msgs(*cb, y.cache_id()));
    const CacheValues vz = decode_f32(export_msgs(*cc, z.cache_id()));
    REQUIRE(vz.n_tokens == vx.n_tokens + vy.n_tokens + q.size());
    REQUIRE(vz.pos0 == 0);
    size_t pairs_moved = 0, pairs = 0;
    for (uint32_t l = 0; l < vz.n_layer; ++l) {
      for (uint32_t h = 0; h < vz.n_head_kv; ++h) {
        for (uint32_t d = 0; d < vz.head_dim; ++d) {
          for (uint32_t t = 0; t < vx.n_tokens; ++t) {
            REQUIRE(vz.at(0, l, t, h, d) == vx.at(0, l, t, h, d));
            REQUIRE(vz.at(1, l, t, h, d) == vx.at(1, l, t, h, d));
          }
          for (uint32_t t = 0; t < vy.n_tokens; ++t)
            REQUIRE(vz.at(1, l, vx.n_tokens + t, h, d) == vy.at(1, l, t, h, d));
        }
        for (uint32_t t = 0; t < vy.n_tokens; ++t) {
          for (uint32_t d = 0; d + 1 < vz.head_dim; d += 2) {
            const float k0 = vy.at(0, l, t, h, d), k1 = vy.at(0, l, t, h, d + 1);
            const float z0 = vz.at(0, l, vx.n_tokens + t, h, d), z1 = vz.at(0, l, vx.n_tokens + t, h, d + 1);
            const double norm = std::hypot(double(k0), double(k1));
            REQUIRE(std::fabs(std::hypot(double(z0), double(z1)) - norm) <= 1e-5 * (1 + norm));
            pairs_moved += std::fabs(z0 - k0) + std::fabs(z1 - k1) > 1e-6 * (1 + norm);
            ++pairs;
          }
        }
      }
    }
    CHECK(pairs_moved > pairs / 2);
  }
}

// ============================== errors ==============================

TEST_CASE("bad inputs fail with precise codes and harm nothing", "[e2e][errors]") {
  auto a = start_agent("err-a");
  auto ca = connect_to(*a);
  const std::vector<int32_t> ctx = encode(kStory, true);
  const v1::PrefillResponse c1 = prefill(*ca, ctx);
  const v1::PrefillResponse c2 = prefill(*ca, encode(kMore, true), {}, /*pin=*/true);
  const std::set<std::string> before = listing(*ca);
  const std::vector<v1::CacheChunk> c1_msgs = export_msgs(*ca, c1.cache_id(), v1::WIRE_DTYPE_F32, /*chunk_tokens=*/32);
  REQUIRE(c1_msgs.size() > 4);
  const int32_t n_vocab = int32_t(must(ca->get_info()).model().n_vocab());

  SECTION("an unknown cache id is NOT_FOUND, here and through a peer") {
    const std::string unknown(32, 'a');
    REQUIRE_CODE(ca->export_cache_messages(unknown, {}), StatusCode::kNotFound);
    REQUIRE_CODE(ca->drop_cache(unknown), StatusCode::kNotFound);
    REQUIRE_CODE(ca->pin_cache(unknown), StatusCode::kNotFound);
    REQUIRE_CODE(run(*ca, greedy({5}, {client::cache_ref("", unknown)})), StatusCode::kNotFound);
    // An id this agent could never have issued is a malformed request rather than a miss.
    REQUIRE_CODE(ca->export_cache_messages("not-even-hex", {}), StatusCode::kInvalidArgument);
    auto b = start_agent("err-b");
    auto cb = connect_to(*b);
    REQUIRE_CODE(run(*cb, greedy({5}, {client::cache_ref(a->address(), unknown)})), StatusCode::kNotFound);
    REQUIRE(listing(*cb).empty());
  }

  SECTION("bad token ids are INVALID_ARGUMENT") {
    REQUIRE_CODE(run(*ca, greedy({1, n_vocab})), StatusCode::kInvalidArgument);
    REQUIRE_CODE(run(*ca, greedy({1, -1})), StatusCode::kInvalidArgument);
    v1::PrefillRequest p;
    p.mutable_tokens()->add_ids(n_vocab + 1000);
    REQUIRE_CODE(ca->prefill(p), StatusCode::kInvalidArgument);
  }

  SECTION("a flipped payload byte in a snapshot file is DATA_LOSS") {
    const std::string path = test::temp_dir() + "/c1.kvbcache";
    must(ca->save_cache(c1.cache_id(), path, {}));
    // The snapshot is also exactly what the wire library reads (same framing, same checks).
    const ModelIdentity id = wire::from_proto(must(ca->get_info()).model());
    auto cache = must(wire::read_snapshot(path, id, cpu_device().buffer_type(), 0));
    CHECK(cache->n_tokens() == int32_t(ctx.size()));

    std::string bytes = test::read_file(path);
    const v1::KvData& d = c1_msgs[3].data();  // some payload, found in the file by its contents
    const std::string needle = d.payload().substr(d.payload().size() / 2, 64);
    const size_t at = bytes.find(needle);
    REQUIRE(at != std::string::npos);
    bytes[at + 10] = char(bytes[at + 10] ^ 0x40);
    const std::string bad = test::temp_dir() + "/c1-flipped.kvbcache";
    std::ofstream(bad, std::ios::binary) << bytes;
    REQUIRE_CODE(ca->load_cache(bad), StatusCode::kDataLoss);

    std::vector<v1::CacheChunk> msgs = c1_msgs;  // the same over a plain ImportCache stream
    (*msgs[2].mutable_data()->mutable_payload())[7] ^= 1;
    REQUIRE_CODE(ca->import_cache(msgs), StatusCode::kDataLoss);
    msgs = c1_msgs;
    msgs.back().mutable_trailer()->set_digest(msgs.back().trailer().digest() ^ 1);
    REQUIRE_CODE(ca->import_cache(msgs), StatusCode::kDataLoss);
  }

  SECTION("truncated and disordered import streams are INVALID_ARGUMENT") {
    std::vector<v1::CacheChunk> msgs(c1_msgs.begin(), c1_msgs.end() - 1);  // no trailer
    REQUIRE_CODE(ca->import_cache(msgs), StatusCode::kInvalidArgument);
    msgs.resize(1);  // header only
    REQUIRE_CODE(ca->import_cache(msgs), StatusCode::kInvalidArgument);
    msgs.clear();  // nothing at all
    REQUIRE_CODE(ca->import_cache(msgs), StatusCode::kInvalidArgument);
    msgs = c1_msgs;  // a chunk missing, trailer present
    msgs.erase(msgs.begin() + 2);
    REQUIRE_CODE(ca->import_cache(msgs), StatusCode::kInvalidArgument);
    msgs = c1_msgs;  // data before the header
    std::swap(msgs[0], msgs[1]);
    REQUIRE_CODE(ca->import_cache(msgs), StatusCode::kInvalidArgument);
    msgs = c1_msgs;  // a token id outside the vocabulary in the header
    msgs[0].mutable_header()->set_token_ids(3, n_vocab + 7);
    REQUIRE_CODE(ca->import_cache(msgs), StatusCode::kInvalidArgument);

    // A snapshot file cut in the middle of a message: the client's reader stops it.
    const std::string path = test::temp_dir() + "/c1-cut.kvbcache";
    must(ca->save_cache(c1.cache_id(), path, {}));
    std::filesystem::resize_file(path, std::filesystem::file_size(path) / 2);
    REQUIRE_CODE(ca->load_cache(path), StatusCode::kInvalidArgument);
    // And the complete stream still imports (the failures above were about the stream).
    const client::ImportResult ok = must(ca->import_cache(c1_msgs));
    CHECK(ok.reply.n_tokens() == ctx.size());
    must_ok(ca->drop_cache(ok.reply.cache_id()));
  }

  SECTION("a cache from a different model is FAILED_PRECONDITION naming the field") {
    auto d = start_agent("err-aidreams", {}, aidreams());
    auto cd = connect_to(*d);
    // The first identity field that differs, in kv_wire.proto's order.
    const ModelIdentity mine = wire::from_proto(must(cd->get_info()).model());
    const ModelIdentity theirs = wire::from_proto(must(ca->get_info()).model());
    const std::string field = first_difference(mine, theirs);
    REQUIRE(!field.empty());
    for (const Status& s : {status_of(run(*cd, greedy({5}, {client::cache_ref(a->address(), c1.cache_id())}))),
                            status_of(cd->import_cache(c1_msgs))}) {
      INFO(s.to_string());
      CHECK(s.code() == StatusCode::kFailedPrecondition);
      CHECK(s.message().find(field) != std::string::npos);
    }
    CHECK(listing(*cd).empty());
    CHECK(process_alive(*d));
  }

  SECTION("limits: oversized messages are INVALID_ARGUMENT, oversized caches RESOURCE_EXHAUSTED") {
    auto l = start_agent("err-limits", {"--max-message-bytes", "64K", "--max-request-cache-bytes", "64K"});
    auto cl = connect_to(*l);
    // Messages over --max-message-bytes (agent.proto: INVALID_ARGUMENT), a request or a chunk.
    v1::GenerateRequest big = greedy({1});
    big.set_text(std::string(100 * 1024, 'a'));
    REQUIRE_CODE(run(*cl, big), StatusCode::kInvalidArgument);
    // (A cache within the request limit, so that the header passes and the big chunk is reached.)
    const v1::PrefillResponse small = prefill(*ca, std::vector<int32_t>(ctx.begin(), ctx.begin() + 20));
    std::vector<v1::CacheChunk> msgs = export_msgs(*ca, small.cache_id());
    must(cl->import_cache(msgs));
    msgs[1].mutable_data()->mutable_payload()->append(80 * 1024, '\0');
    REQUIRE_CODE(cl->import_cache(msgs), StatusCode::kInvalidArgument);
    must_ok(ca->drop_cache(small.cache_id()));
    // A cache over --max-request-cache-bytes (c1: about 140 KiB), imported, pulled or prefilled.
    REQUIRE_CODE(cl->import_cache(c1_msgs), StatusCode::kResourceExhausted);
    REQUIRE_CODE(run(*cl, greedy({5}, {client::cache_ref(a->address(), c1.cache_id())})),
                 StatusCode::kResourceExhausted);
    v1::PrefillRequest p;
    p.mutable_tokens()->mutable_ids()->Add(ctx.begin(), ctx.end());
    REQUIRE_CODE(cl->prefill(p), StatusCode::kResourceExhausted);
    // Small things still work there, and only the one good import was stored.
    CHECK(must(run(*cl, greedy({1, 400, 401}, {}, 4))).ids.size() == 4);
    CHECK(listing(*cl).size() == 1);
  }

  // Whatever failed above, the agent is alive and its caches are exactly as they were.
  CHECK(process_alive(*a));
  CHECK(listing(*ca) == before);
  const std::vector<v1::CacheChunk> again = export_msgs(*ca, c1.cache_id(), v1::WIRE_DTYPE_F32, 32);
  REQUIRE(again.size() == c1_msgs.size());
  for (size_t i = 0; i < again.size(); ++i) REQUIRE(again[i].SerializeAsString() == c1_msgs[i].SerializeAsString());
  CHECK(must(run(*ca, greedy(encode(kQuestion, false), {client::cache_ref("", c2.cache_id())}, 4))).ids.size() == 4);
}

// ============================== a sharer dying ==============================

namespace {

// Stands in for a sharer that dies mid-transfer: serves ExportCache from a snapshot file, sends
// KVB_FAKE_SHARER_SEND messages of it (header and some data), creates KVB_FAKE_SHARER_MARK and
// then hangs until it is killed.
class HangingSharer final : public v1::AgentService::Service {
 public:
  grpc::Status ExportCache(grpc::ServerContext*, const v1::ExportCacheRequest*,
                           grpc::ServerWriter<v1::CacheChunk>* writer) override {
    auto r = must(wire::SnapshotReader::open(std::getenv("KVB_FAKE_SHARER_SNAPSHOT")));
    const int n_send = std::atoi(std::getenv("KVB_FAKE_SHARER_SEND"));
    v1::CacheChunk msg;
    for (int i = 0; i < n_send && must(r->next(msg)); ++i) writer->Write(msg);
    std::ofstream(std::getenv("KVB_FAKE_SHARER_MARK")) << "sent\n";
    while (true) std::this_thread::sleep_for(std::chrono::seconds(1));
  }
};

}  // namespace

// Not a test: the process the next test kills (run by name, with its environment set).
TEST_CASE("hanging sharer process", "[.][helper]") {
  if (!std::getenv("KVB_FAKE_SHARER_SNAPSHOT")) return;
  HangingSharer service;
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(64 << 20);
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  REQUIRE(server);
  std::printf("listening on 127.0.0.1:%d\n", port);
  std::fflush(stdout);
  server->Wait();
}

TEST_CASE("a sharer killed mid-transfer: UNAVAILABLE promptly, the receiver keeps serving", "[e2e][kill]") {
  auto a = start_agent("kill-a");
  auto b = start_agent("kill-b");
  auto ca = connect_to(*a);
  auto cb = connect_to(*b);
  const std::vector<int32_t> ctx = encode(kStory, true);
  const std::vector<int32_t> q = encode(kQuestion, false);
  const v1::PrefillResponse cache = prefill(*ca, ctx);
  const Output reference = must(run(*cb, greedy(concat(ctx, q), {}, 8)));
  const std::set<std::string> b_before = listing(*cb);

  // Runs B's Generate pulling `ref` on a thread while wait_then_kill() kills the sharer; returns
  // the Generate's status and how long it took after the kill.
  auto pull_and_kill = [&](const v1::CacheRef& ref, const std::function<bool()>& wait_then_kill) {
    std::atomic<bool> done{false};
    Status status;
    std::thread t([&] {
      status = status_of(run(*cb, greedy(q, {ref}, 8)));
      done = true;
    });
    const bool waited = wait_then_kill();
    const auto killed_at = Clock::now();
    while (!done && Clock::now() - killed_at < std::chrono::seconds(30)) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    const double secs = std::chrono::duration<double>(Clock::now() - killed_at).count();
    t.join();
    REQUIRE(waited);
    return std::make_pair(status, secs);
  };

  SECTION("the sharer dies after the header and some chunks") {
    // The stream of a real cache, in small chunks, replayed by a stand-in that hangs after 6 of
    // its messages (the header and 5 of its ~120 data chunks) until SIGKILL.
    const std::string snap = test::temp_dir() + "/kill.kvbcache";
    client::ExportOptions o;
    o.chunk_tokens = 16;
    must(ca->save_cache(cache.cache_id(), snap, o));
    const std::string mark = test::temp_dir() + "/kill.mark";
    client::AgentProcessOptions po;
    po.binary = self_exe();
    po.listen_flag = false;
    po.args = {"hanging sharer process"};
    po.env = {"KVB_FAKE_SHARER_SNAPSHOT=" + snap, "KVB_FAKE_SHARER_SEND=6", "KVB_FAKE_SHARER_MARK=" + mark};
    po.log_path = test::temp_dir() + "/kill-sharer.log";
    auto sharer = must(AgentProcess::start(po));

    const auto [status, secs] = pull_and_kill(client::cache_ref(sharer->address(), std::string(32, 'f')), [&] {
      const auto t0 = Clock::now();
      while (!std::filesystem::exists(mark) && Clock::now() - t0 < std::chrono::seconds(20)) {
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
      const bool sent = std::filesystem::exists(mark);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the receiver is waiting mid-stream
      sharer->kill(SIGKILL);
      return sent;
    });
    INFO(status.to_string());
    CHECK(status.code() == StatusCode::kUnavailable);
    CHECK(secs < 10.0);
  }

  SECTION("the sharer is frozen when the pull starts, then killed") {
    ::kill(a->pid(), SIGSTOP);
    const auto [status, secs] = pull_and_kill(client::cache_ref(a->address(), cache.cache_id()), [&] {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // B has connected and waits
      a->kill(SIGKILL);
      return true;
    });
    INFO(status.to_string());
    CHECK(status.code() == StatusCode::kUnavailable);
    CHECK(secs < 10.0);
  }

  // The receiver is alive, stored nothing from the failed pull, and serves the next request.
  CHECK(process_alive(*b));
  CHECK(listing(*cb) == b_before);
  CHECK(must(run(*cb, greedy(concat(ctx, q), {}, 8))).ids == reference.ids);
}

// ============================== security ==============================

namespace {

struct Pki {
  std::string dir;
  std::string ca, server_cert, server_key, client_cert, client_key;  // one CA
  std::string other_ca, other_client_cert, other_client_key;         // an unrelated CA
};

// A CA, a server certificate for 127.0.0.1/localhost and a client certificate signed by it, and
// a second CA with its own client certificate. EC P-256 keys: fast to make.
const Pki& pki() {
  static const Pki p = [] {
    Pki k;
    k.dir = test::temp_dir() + "/pki";
    std::filesystem::create_directories(k.dir);
    const std::string script = R"(set -e
cd ")" + k.dir + R"("
key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1"; }
ca() { key "$1.key"; openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$1"; }
cert() {  # name ca san
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1"
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -out "$1.pem" -days 2 -extfile "$1.ext"
}
ca ca; ca other-ca
cert server ca "subjectAltName=IP:127.0.0.1,DNS:localhost"
cert client ca "subjectAltName=DNS:kvb-client"
cert other-client other-ca "subjectAltName=DNS:kvb-client"
)";
    std::ofstream(k.dir + "/make.sh") << script;
    const int rc = std::system(("bash " + k.dir + "/make.sh > " + k.dir + "/openssl.log 2>&1").c_str());
    INFO("openssl failed (is the openssl binary installed?): see " << k.dir << "/openssl.log");
    REQUIRE(rc == 0);
    k.ca = k.dir + "/ca.pem";
    k.server_cert = k.dir + "/server.pem";
    k.server_key = k.dir + "/server.key";
    k.client_cert = k.dir + "/client.pem";
    k.client_key = k.dir + "/client.key";
    k.other_ca = k.dir + "/other-ca.pem";
    k.other_client_cert = k.dir + "/other-client.pem";
    k.other_client_key = k.dir + "/other-client.key";
    return k;
  }();
  return p;
}

// The status of a GetInfo through a fresh client with options `o`.
Status info_status(const AgentProcess& a, const client::ClientOptions& o) {
  auto c = AgentClient::connect(a.address(), o);
  if (!c.ok()) return c.status();
  return (*c)->get_info().status();
}

}  // namespace

TEST_CASE("TLS, mutual TLS and bearer tokens: good credentials pass, others are refused", "[e2e][security]") {
  const Pki& k = pki();
  client::ClientOptions good;
  good.tls_ca_file = k.ca;

  SECTION("TLS") {
    auto a = start_agent("tls", {"--tls-cert", k.server_cert, "--tls-key", k.server_key});
    must_ok(info_status(*a, good));
    REQUIRE_CODE(info_status(*a, {}), StatusCode::kUnavailable);  // plaintext against TLS
    client::ClientOptions wrong_ca;
    wrong_ca.tls_ca_file = k.other_ca;
    REQUIRE_CODE(info_status(*a, wrong_ca), StatusCode::kUnavailable);
    client::ClientOptions wrong_name = good;  // the certificate is for 127.0.0.1/localhost only
    wrong_name.tls_server_name = "elsewhere.example";
    REQUIRE_CODE(info_status(*a, wrong_name), StatusCode::kUnavailable);
  }

  SECTION("mutual TLS") {
    auto a = start_agent("mtls", {"--tls-cert", k.server_cert, "--tls-key", k.server_key, "--tls-client-ca", k.ca});
    client::ClientOptions mutual = good;
    mutual.tls_cert_file = k.client_cert;
    mutual.tls_key_file = k.client_key;
    must_ok(info_status(*a, mutual));
    REQUIRE_CODE(info_status(*a, good), StatusCode::kUnavailable);  // no client certificate
    client::ClientOptions other = good;
    other.tls_cert_file = k.other_client_cert;
    other.tls_key_file = k.other_client_key;
    REQUIRE_CODE(info_status(*a, other), StatusCode::kUnavailable);  // a certificate from another CA
  }

  SECTION("bearer token") {
    const std::string token_file = test::temp_dir() + "/token";
    std::ofstream(token_file) << "s3cret-token-0123456789\n";
    auto a = start_agent("token", {"--auth-token-file", token_file});
    client::ClientOptions with_token;
    with_token.auth_token_file = token_file;
    auto c = must(AgentClient::connect(a->address(), with_token));
    must(c->get_info());
    const v1::PrefillResponse p = prefill(*c, encode(kStory, true));

    client::ClientOptions wrong;
    wrong.auth_token = "s3cret-token-0123456788";
    for (const client::ClientOptions& o : {client::ClientOptions{}, wrong}) {
      auto bad = must(AgentClient::connect(a->address(), o));
      REQUIRE_CODE(bad->get_info(), StatusCode::kUnauthenticated);
      REQUIRE_CODE(bad->list_caches(), StatusCode::kUnauthenticated);
      REQUIRE_CODE(run(*bad, greedy({1, 400})), StatusCode::kUnauthenticated);
      REQUIRE_CODE(bad->export_cache_messages(p.cache_id(), {}), StatusCode::kUnauthenticated);
      REQUIRE_CODE(bad->drop_cache(p.cache_id()), StatusCode::kUnauthenticated);
    }
    CHECK(must(c->list_caches()).caches_size() == 1);  // the refused drop dropped nothing
  }

  SECTION("two mutual-TLS agents with tokens pass a cache between them") {
    const std::string token_file = test::temp_dir() + "/token-pass";
    std::ofstream(token_file) << "shared-token\n";
    const std::vector<std::string> flags = {"--tls-cert",      k.server_cert, "--tls-key",         k.server_key,
                                            "--tls-client-ca", k.ca,          "--auth-token-file", token_file};
    auto a = start_agent("secure-a", flags);
    auto b = start_agent("secure-b", flags);
    client::ClientOptions o = good;
    o.tls_cert_file = k.client_cert;
    o.tls_key_file = k.client_key;
    o.auth_token_file = token_file;
    auto ca = connect_to(*a, o);
    auto cb = connect_to(*b, o);
    const std::vector<int32_t> ctx = encode(kStory, true), q = encode(kQuestion, false);
    const v1::PrefillResponse p = prefill(*ca, ctx);
    const Output passed = must(run(*cb, greedy(q, {client::cache_ref(a->address(), p.cache_id())}, 12)));
    CHECK(passed.ids == must(run(*cb, greedy(concat(ctx, q), {}, 12))).ids);
  }
}

// ============================== cache store ==============================

TEST_CASE("cache store: budget, LRU of unpinned caches, pinning, TTL", "[e2e][store]") {
  // Every cache below holds kTokens tokens; stories260K keeps 2 (K, V) × 5 layers × 4 kv heads ×
  // 8 dims × 4 bytes = 1280 bytes per token.
  constexpr uint32_t kTokens = 50;
  std::vector<std::vector<int32_t>> texts;
  for (int i = 0; i < 8; ++i) {
    std::vector<int32_t> t = {tokenizer().bos()};
    for (uint32_t j = 1; j < kTokens; ++j) t.push_back(int32_t(300 + (i * 7 + j) % 200));
    texts.push_back(t);
  }
  auto exists = [](AgentClient& c, const std::string& id) {
    const Status s = c.export_cache_messages(id, {}).status();
    INFO(s.to_string());
    REQUIRE((s.ok() || s.code() == StatusCode::kNotFound));
    return s.ok();
  };

  SECTION("budget and LRU, pinned caches survive, no room is RESOURCE_EXHAUSTED") {
    const uint64_t per_cache = uint64_t(kTokens) * 1280;
    const uint64_t budget = per_cache * 7 / 2;  // room for three caches
    auto a = start_agent("store", {"--max-cache-bytes", std::to_string(budget)});
    auto c = connect_to(*a);
    const std::string c1 = prefill(*c, texts[0]).cache_id();
    REQUIRE(must(c->list_caches()).caches(0).bytes() == per_cache);
    const std::string c2 = prefill(*c, texts[1]).cache_id();
    const std::string c3 = prefill(*c, texts[2]).cache_id();
    REQUIRE(exists(*c, c1));  // c1 is now the most recently used; c2 the least

    const std::string c4 = prefill(*c, texts[3]).cache_id();
    CHECK(!exists(*c, c2));
    CHECK(exists(*c, c1));
    CHECK(exists(*c, c3));
    CHECK(exists(*c, c4));
    v1::ListCachesResponse l = must(c->list_caches());
    CHECK(l.stats().evictions() == 1);
    CHECK(l.stats().n_caches() == 3);
    CHECK(l.stats().bytes_used() <= budget);

    // Pin the least recently used (c1 after the checks above touched c1, c3, c4 in that order).
    must(c->pin_cache(c1));
    const std::string c5 = prefill(*c, texts[4]).cache_id();  // evicts c3, not the pinned c1
    CHECK(exists(*c, c1));
    CHECK(!exists(*c, c3));
    const std::string c6 = prefill(*c, texts[5], {}, /*pin=*/true).cache_id();  // evicts c4
    CHECK(!exists(*c, c4));
    must(c->pin_cache(c5));
    // Everything is pinned now: a new cache does not fit and nothing is evicted.
    const std::set<std::string> full = listing(*c);
    v1::PrefillRequest p;
    p.mutable_tokens()->mutable_ids()->Add(texts[6].begin(), texts[6].end());
    REQUIRE_CODE(c->prefill(p), StatusCode::kResourceExhausted);
    CHECK(listing(*c) == full);
    // Unpinning makes room again; the unpinned one goes.
    must(c->pin_cache(c6, false));
    const std::string c7 = prefill(*c, texts[6]).cache_id();
    CHECK(!exists(*c, c6));
    CHECK(exists(*c, c1));
    CHECK(exists(*c, c5));
    CHECK(exists(*c, c7));
    // A single cache larger than the whole budget never evicts anything.
    std::vector<int32_t> huge = {tokenizer().bos()};
    for (int j = 0; j < 200; ++j) huge.push_back(300 + j);
    const std::set<std::string> now = listing(*c);
    p.mutable_tokens()->mutable_ids()->Assign(huge.begin(), huge.end());
    REQUIRE_CODE(c->prefill(p), StatusCode::kResourceExhausted);
    CHECK(listing(*c) == now);
    // Drop is explicit and final.
    must_ok(c->drop_cache(c7));
    CHECK(!exists(*c, c7));
  }

  SECTION("TTL: idle caches expire, pinned ones too; a longer per-request TTL is kept") {
    auto a = start_agent("store-ttl", {"--cache-ttl", "1"});
    auto c = connect_to(*a);
    const std::string short1 = prefill(*c, texts[0]).cache_id();
    const std::string pinned = prefill(*c, texts[1], {}, /*pin=*/true).cache_id();
    const std::string long1 = prefill(*c, texts[2], {}, false, /*ttl_s=*/120).cache_id();
    CHECK(must(c->list_caches()).caches_size() == 3);
    std::this_thread::sleep_for(std::chrono::milliseconds(2300));
    CHECK(!exists(*c, short1));
    CHECK(!exists(*c, pinned));
    CHECK(exists(*c, long1));
    const v1::ListCachesResponse l = must(c->list_caches());
    CHECK(l.caches_size() == 1);
    CHECK(l.stats().expirations() == 2);
    CHECK(l.stats().evictions() == 0);
  }
}

// ============================== concurrency ==============================

TEST_CASE("32 concurrent clients x 20 requests: all succeed, outputs equal the sequential ones", "[e2e][load]") {
  auto a = start_agent("load", {"--threads", "2"});
  auto c = connect_to(*a);
  // Half of the requests carry a context cache, half plain token ids.
  const v1::PrefillResponse story = prefill(*c, encode(kStory, true));
  const std::vector<std::string> prompts = {" Lily", " The dog", " One day", " Then", " Her mom", " The boy said"};
  std::vector<v1::GenerateRequest> requests;
  for (const std::string& p : prompts) {
    requests.push_back(greedy(encode("Once upon a time," + p, true), {}, 8));
    requests.push_back(greedy(encode(p, false), {client::cache_ref("", story.cache_id())}, 8));
  }
  std::vector<std::vector<int32_t>> expected;
  for (const v1::GenerateRequest& r : requests) expected.push_back(must(run(*c, r)).ids);

  constexpr int kClients = 32, kRequests = 20;
  std::atomic<int> ok{0};
  std::vector<std::string> failures(kClients);
  const auto t0 = Clock::now();
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i) {
    threads.emplace_back([&, i] {
      auto client = AgentClient::connect(a->address(), {});
      if (!client.ok()) return void(failures[size_t(i)] = client.status().to_string());
      for (int j = 0; j < kRequests; ++j) {
        const size_t k = size_t(i + j) % requests.size();
        auto out = run(**client, requests[k]);
        if (!out.ok()) return void(failures[size_t(i)] = out.status().to_string());
        if (out->ids != expected[k])
          return void(failures[size_t(i)] = "different tokens for request " + std::to_string(k));
        ++ok;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  for (const std::string& f : failures) CHECK(f.empty());
  CHECK(ok == kClients * kRequests);
  WARN(kClients * kRequests << " requests in " << secs << " s");
  CHECK(process_alive(*a));
}

TEST_CASE("an agent started with --peers connects to them and learns their transports", "[e2e][peers]") {
  auto a = start_agent("peers-a");
  auto b = start_agent("peers-b", {"--peers", a->address()});
  const std::string want = "peer ready";
  bool ready = false;
  for (int i = 0; i < 200 && !ready; ++i) {  // up to 10 s; it takes milliseconds
    std::ifstream f(test::temp_dir() + "/peers-b.log");
    const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    ready = text.find(want) != std::string::npos && text.find(a->address()) != std::string::npos;
    if (!ready) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  CHECK(ready);
}
