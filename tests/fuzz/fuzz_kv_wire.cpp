// libFuzzer target: arbitrary bytes as a cache snapshot file (magic, length-prefixed CacheChunk
// messages), decoded against stories260K's identity. Everything a hostile peer can send over
// ImportCache / ExportCache reaches the same code (CacheStreamReader → KvWireDecoder).
// Each input is decoded twice: as is, and — when its framing parses — with every data checksum
// and the trailer digest re-signed, so that mutated payloads get past the checksums into zstd and
// the value decoders (what a hostile sender, who computes its own checksums, can reach). Each of
// those also goes message by message through both reader entries (protobuf-parsed and raw bytes in
// pieces), which must agree.
//
// Build and run: tests/fuzz/run_fuzz.sh <seconds> (clang-14, -fsanitize=fuzzer,address,undefined).
// The model is found as the tests find it: $KVBRIDGE_MODELS, else ../shared/models.
#include <google/protobuf/stubs/logging.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "engine/kv_wire.h"
#include "engine/model.h"
#include "kernels/registry.h"
#include "proto/wire_convert.h"

namespace {

const kvb::ModelIdentity& identity() {
  static const kvb::ModelIdentity id = [] {
    const char* env = std::getenv("KVBRIDGE_MODELS");
    const std::string dir = env && *env ? env : std::string(KVB_DEFAULT_SHARED) + "/models";
    auto m = kvb::load_model(dir + "/stories260K/stories260K.gguf");
    if (!m.ok()) {
      std::fprintf(stderr, "fuzz_kv_wire: %s\n", m.status().to_string().c_str());
      std::abort();
    }
    return kvb::model_identity(**m);
  }();
  return id;
}

// The snapshot with its checksums and digest recomputed; empty when the framing does not parse.
std::string resign(std::string_view in) {
  namespace pb = kvbridge::v1;
  const std::string_view magic = kvb::wire::kSnapshotMagic;
  if (in.substr(0, magic.size()) != magic) return {};
  std::string out(magic);
  std::vector<uint64_t> sums;
  size_t off = magic.size();
  pb::CacheChunk msg;
  while (off + 4 <= in.size()) {
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len |= uint32_t(uint8_t(in[off + size_t(i)])) << (8 * i);
    off += 4;
    if (len > in.size() - off || !msg.ParseFromArray(in.data() + off, int(len))) return {};
    off += len;
    if (msg.has_data()) {
      const std::string& p = msg.data().payload();
      msg.mutable_data()->set_xxh3(XXH3_64bits(p.data(), p.size()));
      sums.push_back(msg.data().xxh3());
    } else if (msg.has_trailer()) {
      msg.mutable_trailer()->set_digest(XXH3_64bits(sums.data(), sums.size() * 8));
    }
    const std::string bytes = msg.SerializeAsString();
    const uint32_t n = uint32_t(bytes.size());
    for (int i = 0; i < 4; ++i) out.push_back(char(n >> (8 * i)));
    out += bytes;
  }
  return out;
}

void decode(std::string_view bytes) {
  // Limits small enough that no input can make the decoder allocate more than a few MiB.
  const kvb::KvWireLimits limits{4096, uint64_t(64) << 20};
  auto r = kvb::wire::decode_snapshot_bytes(bytes, identity(), kvb::cpu_device().buffer_type(), /*n_ctx_min=*/0,
                                            limits);
  if (r.ok()) {
    // A cache that decoded must be self-consistent.
    const kvb::KvCache& c = **r;
    if (c.n_tokens() > c.n_ctx() || c.pos0() < 0 || int64_t(c.pos0()) + c.n_tokens() > INT32_MAX) std::abort();
    for (int32_t t : c.tokens()) {
      if (t < 0 || uint32_t(t) >= identity().n_vocab) std::abort();
    }
  }
}

// The snapshot's messages through both CacheStreamReader entries: parsed by protobuf (add) and
// as raw bytes cut into pieces (add_serialized, the agent's pull path, whose data messages are read
// in place). Both must agree: the same status code at the same message, and the same cache.
void decode_both_ways(std::string_view in) {
  namespace pb = kvbridge::v1;
  const std::string_view magic = kvb::wire::kSnapshotMagic;
  if (in.substr(0, magic.size()) != magic) return;
  const kvb::KvWireLimits limits{4096, uint64_t(64) << 20};
  const kvb::BufferType& host = kvb::cpu_device().buffer_type();
  kvb::wire::CacheStreamReader parsed(identity(), host, 0, limits), raw(identity(), host, 0, limits);
  std::vector<std::string_view> pieces;
  size_t off = magic.size();
  while (off + 4 <= in.size()) {
    uint32_t len = 0;
    for (int i = 0; i < 4; ++i) len |= uint32_t(uint8_t(in[off + size_t(i)])) << (8 * i);
    off += 4;
    if (len > in.size() - off) return;
    const std::string_view bytes = in.substr(off, len);
    off += len;
    pb::CacheChunk msg;
    const kvb::Status a = msg.ParseFromArray(bytes.data(), int(bytes.size()))
                              ? parsed.add(msg)
                              : kvb::invalid_argument("cache stream: a message does not parse");
    // Pieces cut where the message's own bytes say (deterministic for the input).
    pieces.clear();
    for (size_t p = 0; p < bytes.size();) {
      const size_t k = std::min<size_t>(bytes.size() - p, 1 + uint8_t(bytes[p]) % 64);
      pieces.push_back(bytes.substr(p, k));
      p += k;
    }
    const kvb::Status b = raw.add_serialized(pieces);
    if (a.code() != b.code()) std::abort();
    if (!a.ok()) return;
  }
  auto ca = parsed.finish();
  auto cb = raw.finish();
  if (ca.ok() != cb.ok() || (!ca.ok() && ca.status().code() != cb.status().code())) std::abort();
  if (!ca.ok()) return;
  const kvb::KvCache &x = **ca, &y = **cb;
  if (x.n_tokens() != y.n_tokens() || x.n_ctx() != y.n_ctx() || x.pos0() != y.pos0()) std::abort();
  for (int32_t l = 0; l < x.layout().n_layer; ++l) {
    if (std::memcmp(x.k(l).data, y.k(l).data, x.k_used(l).nbytes()) != 0) std::abort();
    if (std::memcmp(x.v(l).data, y.v(l).data, x.v_used(l).nbytes()) != 0) std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);  // hostile strings make protobuf log invalid UTF-8
  (void)identity();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  decode(bytes);
  decode_both_ways(bytes);
  const std::string signed_bytes = resign(bytes);
  if (!signed_bytes.empty() && signed_bytes != bytes) {
    decode(signed_bytes);
    decode_both_ways(signed_bytes);
  }
  return 0;
}
