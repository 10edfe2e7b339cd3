// proto/wire_convert: native ↔ kvbridge.v1 conversions, CacheStreamReader's message order, and
// snapshot files (round trip, atomic write, truncation at every kind of cut point, corruption).
#include <catch2/catch.hpp>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>

#include "engine/forward.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "kernels/registry.h"
#include "proto/wire_convert.h"
#include "support/test_support.h"

using namespace kvb;
namespace pb = kvbridge::v1;
namespace fs = std::filesystem;

namespace {

struct Stories {
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ModelRunner> runner;
  ModelIdentity id;
};

Stories& stories() {
  static Stories s = [] {
    Stories r;
    auto m = load_model(test::model_path("stories260K/stories260K.gguf"));
    INFO(m.status().to_string());
    REQUIRE(m.ok());
    r.model = std::move(m).value();
    auto b = cpu_device().create_backend();
    REQUIRE(b.ok());
    r.backend = std::move(b).value();
    auto run = ModelRunner::create(*r.model, *r.backend);
    REQUIRE(run.ok());
    r.runner = std::move(run).value();
    r.id = model_identity(*r.model);
    return r;
  }();
  return s;
}

std::unique_ptr<KvCache> prefill(const std::string& text, int32_t n_ctx = 128, int32_t pos0 = 0) {
  Stories& st = stories();
  const std::vector<int32_t> tokens = st.model->tokenizer->encode(text);
  auto c = st.runner->new_cache(n_ctx);
  REQUIRE(c.ok());
  REQUIRE((*c)->set_pos0(pos0).ok());
  std::vector<float> logits(static_cast<size_t>(st.model->config.n_vocab));
  REQUIRE(st.runner->forward(**c, tokens, logits).ok());
  return std::move(c).value();
}

std::unique_ptr<KvWireEncoder> encoder(const KvCache& c, WireDType dtype = WireDType::kF32,
                                       WireCompression comp = WireCompression::kNone, uint32_t chunk_tokens = 0) {
  auto e = KvWireEncoder::create(c, stories().id, dtype, comp, chunk_tokens);
  REQUIRE(e.ok());
  return std::move(e).value();
}

// The whole message stream of a cache, each message serialized (as it travels).
std::vector<std::string> stream_bytes(const KvCache& c, WireDType dtype = WireDType::kF32,
                                      WireCompression comp = WireCompression::kNone, uint32_t chunk_tokens = 0) {
  auto e = encoder(c, dtype, comp, chunk_tokens);
  wire::CacheStreamWriter w(*e);
  std::vector<std::string> out;
  pb::CacheChunk msg;
  while (w.next(&msg)) out.push_back(msg.SerializeAsString());
  return out;
}

pb::CacheChunk parse(const std::string& bytes) {
  pb::CacheChunk m;
  REQUIRE(m.ParseFromString(bytes));
  return m;
}

bool same_cache(const KvCache& a, const KvCache& b) {
  if (!(a.layout() == b.layout()) || a.n_tokens() != b.n_tokens() || a.pos0() != b.pos0()) return false;
  if (!std::equal(a.tokens().begin(), a.tokens().end(), b.tokens().begin(), b.tokens().end())) return false;
  for (int32_t l = 0; l < a.layout().n_layer; ++l) {
    if (std::memcmp(a.k(l).data, b.k(l).data, a.k_used(l).nbytes()) != 0) return false;
    if (std::memcmp(a.v(l).data, b.v(l).data, a.v_used(l).nbytes()) != 0) return false;
  }
  return true;
}

std::string snapshot_of(const KvCache& c, WireDType dtype = WireDType::kF32,
                        WireCompression comp = WireCompression::kNone, uint32_t chunk_tokens = 0) {
  const std::string path = test::temp_dir() + "/snap_tmp.kvc";
  auto e = encoder(c, dtype, comp, chunk_tokens);
  const Status s = wire::write_snapshot(path, *e);
  INFO(s.to_string());
  REQUIRE(s.ok());
  return test::read_file(path);
}

StatusCode decode_code(std::string_view bytes, const KvWireLimits& limits = {}) {
  auto r = wire::decode_snapshot_bytes(bytes, stories().id, cpu_device().buffer_type(), 0, limits);
  return r.ok() ? StatusCode::kOk : r.status().code();
}

const std::string kStory = "Once upon a time, there was a little girl named Lily. She loved to play outside.";

}  // namespace

// ============================== conversions ==============================

TEST_CASE("wire enums convert both ways, unknown values are INVALID_ARGUMENT", "[wire_convert]") {
  for (WireDType t : {WireDType::kF32, WireDType::kF16, WireDType::kBF16, WireDType::kInt8}) {
    auto back = wire::wire_dtype_from_proto(wire::to_proto(t));
    REQUIRE(back.ok());
    CHECK(*back == t);
  }
  for (WireCompression c : {WireCompression::kNone, WireCompression::kZstd}) {
    auto back = wire::compression_from_proto(wire::to_proto(c));
    REQUIRE(back.ok());
    CHECK(*back == c);
  }
  CHECK(*wire::wire_dtype_from_proto(pb::WIRE_DTYPE_UNSPECIFIED) == WireDType::kF32);
  for (int bad : {5, -1, 1000, std::numeric_limits<int>::min()}) {
    CHECK(wire::wire_dtype_from_proto(bad).status().code() == StatusCode::kInvalidArgument);
    CHECK(wire::compression_from_proto(bad).status().code() == StatusCode::kInvalidArgument);
  }
}

TEST_CASE("identity, header, chunk and trailer round trip through proto", "[wire_convert][model]") {
  const ModelIdentity& id = stories().id;
  pb::ModelIdentity pid;
  wire::to_proto(id, &pid);
  CHECK(wire::from_proto(pid) == id);
  CHECK(pid.fingerprint() == id.fingerprint);

  const auto cache = prefill(kStory, 64, 9);
  auto e = encoder(*cache, WireDType::kInt8, WireCompression::kZstd, 5);
  const KvWireHeader& h = e->header();
  pb::KvHeader ph;
  wire::to_proto(h, &ph);
  auto h2 = wire::from_proto(ph);
  REQUIRE(h2.ok());
  CHECK(h2->format_version == h.format_version);
  CHECK(h2->model == h.model);
  CHECK(h2->n_layer == h.n_layer);
  CHECK(h2->n_head_kv == h.n_head_kv);
  CHECK(h2->head_dim == h.head_dim);
  CHECK(h2->dtype == WireDType::kInt8);
  CHECK(h2->compression == WireCompression::kZstd);
  CHECK(h2->tokens == h.tokens);
  CHECK(h2->pos0 == 9);
  CHECK(h2->total_bytes == h.total_bytes);
  CHECK(h2->n_chunks == h.n_chunks);

  KvWireChunk c;
  REQUIRE(e->next(c));
  REQUIRE(e->next(c));
  pb::KvData pd;
  wire::to_proto(c, &pd);
  auto c2 = wire::from_proto(pd);
  REQUIRE(c2.ok());
  CHECK(c2->layer == c.layer);
  CHECK(c2->is_v == c.is_v);
  CHECK(c2->token_begin == 5);
  CHECK(c2->token_count == c.token_count);
  CHECK(c2->raw_size == c.raw_size);
  CHECK(c2->payload == c.payload);
  CHECK(c2->xxh3 == c.xxh3);
  auto c3 = wire::from_proto(std::move(pd));  // moves the payload out
  REQUIRE(c3.ok());
  CHECK(c3->payload == c.payload);
  CHECK(pd.payload().empty());

  const KvWireTrailer t{17, 0x1234567890abcdefull};
  pb::KvTrailer pt;
  wire::to_proto(t, &pt);
  const KvWireTrailer t2 = wire::from_proto(pt);
  CHECK(t2.n_chunks == 17);
  CHECK(t2.digest == t.digest);

  SECTION("what the proto can say but the native type cannot") {
    pb::KvHeader bad = ph;
    bad.set_dtype(pb::WIRE_DTYPE_UNSPECIFIED);
    CHECK(wire::from_proto(bad).status().code() == StatusCode::kInvalidArgument);
    bad = ph;
    bad.set_dtype(static_cast<pb::WireDType>(42));
    CHECK(wire::from_proto(bad).status().code() == StatusCode::kInvalidArgument);
    bad = ph;
    bad.set_compression(static_cast<pb::Compression>(7));
    CHECK(wire::from_proto(bad).status().code() == StatusCode::kInvalidArgument);
    bad = ph;
    bad.clear_model();
    CHECK(wire::from_proto(bad).status().code() == StatusCode::kInvalidArgument);
    pb::KvData d = pd;
    d.set_kind(pb::KV_KIND_UNSPECIFIED);
    CHECK(wire::from_proto(d).status().code() == StatusCode::kInvalidArgument);
    d.set_kind(static_cast<pb::KvKind>(3));
    CHECK(wire::from_proto(d).status().code() == StatusCode::kInvalidArgument);
  }
}

// ============================== streams ==============================

TEST_CASE("CacheStreamWriter → bytes → CacheStreamReader rebuilds the cache", "[wire_convert][model]") {
  const auto cache = prefill(kStory, 64, 3);
  const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);
  const uint32_t chunk_tokens = GENERATE(1u, 7u, 0u);
  const std::vector<std::string> msgs = stream_bytes(*cache, WireDType::kF32, comp, chunk_tokens);
  REQUIRE(msgs.size() >= 12);

  wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 100);
  CHECK(r.header() == nullptr);
  for (size_t i = 0; i < msgs.size(); ++i) {
    CHECK_FALSE(r.done());
    const Status s = i % 2 ? r.add(parse(msgs[i])) : r.add(static_cast<const pb::CacheChunk&>(parse(msgs[i])));
    INFO(s.to_string());
    REQUIRE(s.ok());
    REQUIRE(r.header() != nullptr);
  }
  CHECK(r.done());
  CHECK(r.chunks_received() == msgs.size() - 2);
  CHECK(r.bytes_received() > 0);
  auto got = r.finish();
  REQUIRE(got.ok());
  CHECK((*got)->n_ctx() == 100);
  CHECK(same_cache(**got, *cache));
  CHECK(r.finish().status().code() == StatusCode::kFailedPrecondition);  // taken once
}

TEST_CASE("CacheStreamReader enforces header → data → trailer, errors are sticky", "[wire_convert][model]") {
  const auto cache = prefill(kStory, 64);
  const std::vector<std::string> msgs = stream_bytes(*cache, WireDType::kF16, WireCompression::kNone, 7);
  const size_t n = msgs.size();
  auto run = [&](const std::vector<size_t>& order) {
    wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
    for (size_t i : order) {
      if (Status s = r.add(parse(msgs[i])); !s.ok()) return s.code();
    }
    auto c = r.finish();
    return c.ok() ? StatusCode::kOk : c.status().code();
  };
  std::vector<size_t> all(n);
  for (size_t i = 0; i < n; ++i) all[i] = i;
  REQUIRE(run(all) == StatusCode::kOk);

  CHECK(run({1, 0}) == StatusCode::kInvalidArgument);         // data before the header
  CHECK(run({n - 1}) == StatusCode::kInvalidArgument);        // trailer before the header
  CHECK(run({0, 0}) == StatusCode::kInvalidArgument);         // a second header
  CHECK(run({}) == StatusCode::kInvalidArgument);             // nothing at all
  CHECK(run({0}) == StatusCode::kInvalidArgument);            // header only: truncated
  std::vector<size_t> order = all;
  order.pop_back();
  CHECK(run(order) == StatusCode::kInvalidArgument);          // no trailer: truncated
  order = all;
  order.erase(order.begin() + 3);
  CHECK(run(order) == StatusCode::kInvalidArgument);          // a chunk missing
  order = all;
  order.insert(order.begin() + 3, 2);
  CHECK(run(order) == StatusCode::kInvalidArgument);          // a chunk twice
  order = all;
  order.push_back(1);
  CHECK(run(order) == StatusCode::kInvalidArgument);          // data after the trailer
  order = all;
  order.push_back(n - 1);
  CHECK(run(order) == StatusCode::kInvalidArgument);          // a second trailer

  SECTION("an empty message") {
    wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
    CHECK(r.add(pb::CacheChunk()).code() == StatusCode::kInvalidArgument);
  }
  SECTION("sticky: a good message after an error still fails with the first error") {
    wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
    REQUIRE(r.add(parse(msgs[0])).ok());
    pb::CacheChunk bad = parse(msgs[1]);
    (*bad.mutable_data()->mutable_payload())[0] ^= 1;
    const Status first = r.add(bad);
    CHECK(first.code() == StatusCode::kDataLoss);
    CHECK(r.header() == nullptr);  // the half-built cache is released at once
    for (size_t i = 1; i < n; ++i) CHECK(r.add(parse(msgs[i])).message() == first.message());
    CHECK(r.finish().status().message() == first.message());
  }
  SECTION("another model's header: FAILED_PRECONDITION names the field") {
    pb::CacheChunk h = parse(msgs[0]);
    h.mutable_header()->mutable_model()->set_n_vocab(32000);
    wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
    const Status s = r.add(h);
    CHECK(s.code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(s.message(), Catch::Contains("n_vocab"));
  }
  SECTION("a bad token id in the header") {
    pb::CacheChunk h = parse(msgs[0]);
    h.mutable_header()->set_token_ids(2, 512);
    wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
    CHECK(r.add(h).code() == StatusCode::kInvalidArgument);
  }
  SECTION("limits") {
    wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0, KvWireLimits{4, uint64_t(1) << 30});
    CHECK(r.add(parse(msgs[0])).code() == StatusCode::kResourceExhausted);
  }
}

TEST_CASE("SerializedStreamWriter: CacheStreamWriter's bytes, payloads out of line", "[wire_convert][model]") {
  const auto cache = prefill(kStory, 64, 2);
  const WireDType dtype = GENERATE(WireDType::kF32, WireDType::kF16, WireDType::kInt8);
  const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);
  const std::vector<std::string> want = stream_bytes(*cache, dtype, comp, 7);
  auto e = encoder(*cache, dtype, comp, 7);
  wire::SerializedStreamWriter w(*e);
  wire::SerializedChunk m;
  std::vector<std::string> got;
  while (w.next(&m)) {
    got.push_back(m.head + std::string(m.payload()) + m.tail);
    CHECK(got.back().size() == m.size());
    if (e->zero_copy() && !m.borrowed.empty()) {
      CHECK(m.owned.empty());
      const auto* base = static_cast<const char*>(cache->k(0).data);
      CHECK((m.borrowed.data() >= base && m.borrowed.data() < base + cache->bytes_allocated()));
    }
  }
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == want[i]);
}

TEST_CASE("data_message_framing matches protobuf, zero fields and long lengths included", "[wire_convert]") {
  KvWireChunk c;
  c.is_v = true;
  c.token_count = 3;
  c.payload = std::string(300, 'x');  // a two-byte length
  pb::CacheChunk msg;
  wire::to_proto(c, msg.mutable_data());
  std::string head, tail;
  wire::data_message_framing(view_of(c), &head, &tail);
  CHECK(head + c.payload + tail == msg.SerializeAsString());
  c.layer = 300;
  c.token_begin = 1u << 31;
  c.raw_size = uint64_t(1) << 40;
  c.xxh3 = ~uint64_t(0);
  msg.Clear();
  wire::to_proto(c, msg.mutable_data());
  wire::data_message_framing(view_of(c), &head, &tail);
  CHECK(head + c.payload + tail == msg.SerializeAsString());
}

TEST_CASE("CacheStreamReader::add_serialized: any slicing of the bytes, any encoding", "[wire_convert][model]") {
  const auto cache = prefill(kStory, 64, 5);
  const WireDType dtype = GENERATE(WireDType::kF32, WireDType::kBF16, WireDType::kInt8);
  const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);
  const std::vector<std::string> msgs = stream_bytes(*cache, dtype, comp, 6);
  std::mt19937 rng(11);
  // Splits `bytes` into pieces of random sizes (empty ones included).
  auto slice = [&](const std::string& bytes) {
    std::vector<std::string_view> pieces;
    std::string_view rest = bytes;
    while (!rest.empty()) {
      const size_t k = std::min<size_t>(rest.size(), rng() % 61);
      pieces.push_back(rest.substr(0, k));
      rest.remove_prefix(k);
    }
    return pieces;
  };
  wire::CacheStreamReader want(stories().id, cpu_device().buffer_type(), 0);
  for (const std::string& m : msgs) REQUIRE(want.add(parse(m)).ok());
  auto want_cache = want.finish();
  REQUIRE(want_cache.ok());

  SECTION("sliced messages rebuild the same cache") {
    wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0, {}, 9);
    for (const std::string& m : msgs) {
      const Status st = r.add_serialized(slice(m));
      INFO(st.to_string());
      REQUIRE(st.ok());
    }
    CHECK(r.bytes_received() == want.bytes_received());
    auto got = r.finish();
    REQUIRE(got.ok());
    CHECK(same_cache(**got, **want_cache));
    CHECK((*got)->n_ctx() == (*got)->n_tokens() + 9);
  }
  SECTION("repeated or unknown fields: read as protobuf reads them") {
    wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
    for (size_t i = 0; i < msgs.size(); ++i) {
      std::string m = msgs[i];
      if (i % 3 == 1) {
        // The data message again, with a repeated token_count (the last one wins) and an unknown
        // field 100 appended to the KvData.
        pb::KvData extra;
        extra.set_token_count(parse(m).data().token_count());
        const std::string data = parse(m).data().SerializeAsString() + extra.SerializeAsString() +
                                 std::string("\xa0\x06\x01", 3);
        m = std::string(1, char(0x12));
        for (uint64_t v = data.size();; v >>= 7) {
          m.push_back(char((v & 0x7f) | (v >= 0x80 ? 0x80 : 0)));
          if (v < 0x80) break;
        }
        m += data;
      }
      const Status st = r.add_serialized(slice(m));
      INFO(i << ": " << st.to_string());
      REQUIRE(st.ok());
    }
    auto got = r.finish();
    REQUIRE(got.ok());
    CHECK(same_cache(**got, **want_cache));
  }
  SECTION("errors as add(): order, kind, checksum, garbage; sticky") {
    {
      wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
      CHECK(r.add_serialized(slice(msgs[1])).code() == StatusCode::kInvalidArgument);  // data before the header
    }
    {
      wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
      REQUIRE(r.add_serialized(slice(msgs[0])).ok());
      pb::CacheChunk c = parse(msgs[1]);
      c.mutable_data()->set_kind(pb::KV_KIND_UNSPECIFIED);
      CHECK(r.add_serialized(slice(c.SerializeAsString())).code() == StatusCode::kInvalidArgument);
    }
    {
      wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
      REQUIRE(r.add_serialized(slice(msgs[0])).ok());
      std::string m = msgs[1];
      m[m.size() / 2] ^= 0x20;  // inside the payload
      const Status first = r.add_serialized(slice(m));
      CHECK(first.code() == StatusCode::kDataLoss);
      CHECK(r.add_serialized(slice(msgs[2])).message() == first.message());
    }
    {
      wire::CacheStreamReader r(stories().id, cpu_device().buffer_type(), 0);
      const std::string garbage = "\x12\xff\xff\xff";
      const std::vector<std::string_view> one = {garbage};
      CHECK(r.add_serialized(one).code() == StatusCode::kInvalidArgument);
    }
  }
}

// ============================== snapshot files ==============================

TEST_CASE("snapshot files: round trip, atomic write, header peek", "[wire_convert][snapshot][model]") {
  const auto cache = prefill(kStory, 64, 5);
  const std::string dir = test::temp_dir() + "/snapshots";
  fs::create_directories(dir);
  const std::string path = dir + "/story.kvc";
  const WireDType dtype = GENERATE(WireDType::kF32, WireDType::kBF16);
  const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);

  auto e = encoder(*cache, dtype, comp, 4);
  REQUIRE(wire::write_snapshot(path, *e).ok());
  CHECK(fs::directory_iterator(dir) != fs::directory_iterator());
  size_t files = 0;
  for (const auto& f : fs::directory_iterator(dir)) {
    ++files;
    CHECK(f.path().filename() == "story.kvc");  // no temporary left behind
  }
  CHECK(files == 1);
  CHECK(test::read_file(path).substr(0, 8) == "KVBCACHE");

  auto got = wire::read_snapshot(path, stories().id, cpu_device().buffer_type(), 0);
  INFO(got.status().to_string());
  REQUIRE(got.ok());
  CHECK((*got)->pos0() == 5);
  CHECK((*got)->n_tokens() == cache->n_tokens());
  if (dtype == WireDType::kF32) CHECK(same_cache(**got, *cache));

  auto h = wire::read_snapshot_header(path);
  REQUIRE(h.ok());
  CHECK(h->model == stories().id);
  CHECK(h->dtype == dtype);
  CHECK(h->tokens == std::vector<int32_t>(cache->tokens().begin(), cache->tokens().end()));

  SECTION("overwriting replaces the file whole") {
    const auto other = prefill("Tom.", 16);
    auto e2 = encoder(*other);
    REQUIRE(wire::write_snapshot(path, *e2).ok());
    auto again = wire::read_snapshot(path, stories().id, cpu_device().buffer_type(), 0);
    REQUIRE(again.ok());
    CHECK(same_cache(**again, *other));
  }
  SECTION("file system errors") {
    CHECK(wire::read_snapshot(dir + "/missing.kvc", stories().id, cpu_device().buffer_type(), 0).status().code() ==
          StatusCode::kNotFound);
    CHECK(wire::read_snapshot_header(dir + "/missing.kvc").status().code() == StatusCode::kNotFound);
    auto e3 = encoder(*cache);
    CHECK(wire::write_snapshot(dir + "/no/such/dir/x.kvc", *e3).code() == StatusCode::kNotFound);
    CHECK(wire::read_snapshot(dir, stories().id, cpu_device().buffer_type(), 0).status().code() ==
          StatusCode::kInvalidArgument);  // a directory
  }
}

TEST_CASE("snapshot message-level writer and reader", "[wire_convert][snapshot][model]") {
  const auto cache = prefill(kStory, 64);
  const std::vector<std::string> msgs = stream_bytes(*cache, WireDType::kInt8, WireCompression::kZstd, 8);
  const std::string dir = test::temp_dir() + "/msg_level";
  fs::create_directories(dir);
  const std::string path = dir + "/a.kvc";

  SECTION("an uncommitted writer leaves nothing behind") {
    {
      auto w = wire::SnapshotWriter::create(path);
      REQUIRE(w.ok());
      REQUIRE((*w)->append(parse(msgs[0])).ok());
    }
    CHECK(fs::is_empty(dir));
  }
  SECTION("write, commit, read back message by message") {
    auto w = wire::SnapshotWriter::create(path);
    REQUIRE(w.ok());
    for (const std::string& m : msgs) REQUIRE((*w)->append(parse(m)).ok());
    REQUIRE((*w)->commit().ok());
    CHECK((*w)->append(parse(msgs[0])).code() == StatusCode::kFailedPrecondition);
    CHECK((*w)->commit().code() == StatusCode::kFailedPrecondition);
    CHECK((*w)->bytes_written() == fs::file_size(path));

    auto r = wire::SnapshotReader::open(path);
    REQUIRE(r.ok());
    CHECK((*r)->file_bytes() == fs::file_size(path));
    pb::CacheChunk m;
    size_t n = 0;
    for (;;) {
      auto more = (*r)->next(m);
      REQUIRE(more.ok());
      if (!*more) break;
      REQUIRE(n < msgs.size());
      CHECK(m.SerializeAsString() == msgs[n]);
      ++n;
    }
    CHECK(n == msgs.size());
    CHECK((*r)->bytes_left() == 0);
    auto cache2 = wire::read_snapshot(path, stories().id, cpu_device().buffer_type(), 0);
    CHECK(cache2.ok());
  }
  SECTION("bad magic and missing files") {
    CHECK(wire::SnapshotReader::open(dir + "/nope.kvc").status().code() == StatusCode::kNotFound);
    CHECK(wire::SnapshotReader::from_bytes("KVBCACH").status().code() == StatusCode::kInvalidArgument);
    CHECK(wire::SnapshotReader::from_bytes("KVBCACHX").status().code() == StatusCode::kInvalidArgument);
    auto empty = wire::SnapshotReader::from_bytes("KVBCACHE");
    REQUIRE(empty.ok());
    pb::CacheChunk m;
    auto more = (*empty)->next(m);
    REQUIRE(more.ok());
    CHECK_FALSE(*more);
  }
}

TEST_CASE("snapshot truncated at any cut point is an error, never a crash", "[wire_convert][snapshot][model]") {
  const auto cache = prefill(kStory, 64);
  const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);
  const std::string bytes = snapshot_of(*cache, WireDType::kInt8, comp, 6);
  REQUIRE(decode_code(bytes) == StatusCode::kOk);

  // Every cut in memory (the files are small: a few KB).
  for (size_t cut = 0; cut < bytes.size(); ++cut) {
    const StatusCode c = decode_code(std::string_view(bytes).substr(0, cut));
    if (c != StatusCode::kInvalidArgument) FAIL_CHECK("cut at " << cut << ": " << int(c));
  }
  // And through real files at a spread of cut points.
  const std::string path = test::temp_dir() + "/cut.kvc";
  for (size_t cut = 0; cut < bytes.size(); cut += 1 + bytes.size() / 97) {
    {
      std::ofstream f(path, std::ios::binary | std::ios::trunc);
      f.write(bytes.data(), std::streamsize(cut));
    }
    auto r = wire::read_snapshot(path, stories().id, cpu_device().buffer_type(), 0);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
  }
  // Bytes after the trailer.
  CHECK(decode_code(bytes + "x") == StatusCode::kInvalidArgument);
  CHECK(decode_code(bytes + bytes.substr(8)) == StatusCode::kInvalidArgument);
}

TEST_CASE("snapshot framing and corruption", "[wire_convert][snapshot][model]") {
  const auto cache = prefill(kStory, 64);
  const std::string bytes = snapshot_of(*cache, WireDType::kF16, WireCompression::kZstd, 5);

  SECTION("bad magic") {
    std::string b = bytes;
    b[0] = 'X';
    CHECK(decode_code(b) == StatusCode::kInvalidArgument);
    CHECK(decode_code("") == StatusCode::kInvalidArgument);
  }
  SECTION("a length over the limit or past the end") {
    std::string b = bytes;
    for (int i = 8; i < 12; ++i) b[size_t(i)] = char(0xff);
    CHECK(decode_code(b) == StatusCode::kInvalidArgument);
    b = bytes;
    b[11] = 0x03;  // ~50 MiB: under the limit, past the end
    CHECK(decode_code(b) == StatusCode::kInvalidArgument);
  }
  SECTION("an unparsable message") {
    std::string b = bytes;
    b[12] = char(0xff);  // first byte of the header message: a bad tag
    CHECK(decode_code(b) != StatusCode::kOk);
  }
  SECTION("random byte flips: an error or (header bytes only) another valid cache, never a crash") {
    std::mt19937 rng(1234);
    int errors = 0;
    for (int trial = 0; trial < 2000; ++trial) {
      std::string b = bytes;
      const int flips = 1 + int(rng() % 3);
      for (int f = 0; f < flips; ++f) b[rng() % b.size()] ^= char(1 + rng() % 255);
      errors += decode_code(b) != StatusCode::kOk;
    }
    CHECK(errors > 1800);
  }
  SECTION("small limits") {
    CHECK(decode_code(bytes, KvWireLimits{3, uint64_t(1) << 30}) == StatusCode::kResourceExhausted);
  }
}

// Writes the fuzz seed corpus (tests/fuzz/corpus): hidden, run by hand with
//   KVB_FUZZ_CORPUS_OUT=tests/fuzz/corpus ./test_wire_convert "[.corpus]"
TEST_CASE("write fuzz seed corpus", "[.corpus]") {
  const char* out = std::getenv("KVB_FUZZ_CORPUS_OUT");
  REQUIRE(out != nullptr);
  fs::create_directories(out);
  struct Seed {
    const char* name;
    const char* text;
    WireDType dtype;
    WireCompression comp;
    uint32_t chunk_tokens;
    int32_t pos0;
  };
  const Seed seeds[] = {
      {"f32_plain", "Lily.", WireDType::kF32, WireCompression::kNone, 2, 0},
      {"f16_zstd", "Tom ran.", WireDType::kF16, WireCompression::kZstd, 3, 7},
      {"bf16_plain", "A dog.", WireDType::kBF16, WireCompression::kNone, 0, 0},
      {"int8_zstd", "Once upon a time.", WireDType::kInt8, WireCompression::kZstd, 4, 2},
      {"int8_plain", "Hi", WireDType::kInt8, WireCompression::kNone, 1, 0},
  };
  for (const Seed& s : seeds) {
    const auto cache = prefill(s.text, 32, s.pos0);
    const std::string bytes = snapshot_of(*cache, s.dtype, s.comp, s.chunk_tokens);
    REQUIRE(decode_code(bytes) == StatusCode::kOk);
    std::ofstream(std::string(out) + "/" + s.name + ".kvc", std::ios::binary) << bytes;
  }
  // An empty cache.
  auto e = KvCache::create(cpu_device().buffer_type(), stories().runner->kv_layout(), 4);
  REQUIRE(e.ok());
  std::ofstream(std::string(out) + "/empty.kvc", std::ios::binary) << snapshot_of(**e);
}
