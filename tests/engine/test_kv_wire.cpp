// The native KV wire codec (engine/kv_wire.h) on real caches of stories260K, and cache
// concatenation (KvCache::append_shifted): round trips per wire dtype, identity checks, and a
// hostile sender's every lever (sizes, ranges, checksums, order) — errors, never crashes. The
// value codecs (engine/kv_wire_values.h) against the scalar definitions, on every ISA path.
#include <catch2/catch.hpp>

#include <xxhash.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/kv_wire.h"
#include "engine/kv_wire_values.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "kernels/registry.h"
#include "support/model_checks.h"
#include "support/test_support.h"

using namespace kvb;

namespace {

using test::max_abs_diff;

std::unique_ptr<Model> load(const std::string& model, const std::string& tokenizer = "") {
  auto m = load_model(test::model_path(model), LoadOptions{tokenizer.empty() ? "" : test::model_path(tokenizer)});
  INFO(m.status().to_string());
  REQUIRE(m.ok());
  return std::move(m).value();
}

// stories260K with a CPU runner, loaded once for the whole binary.
struct Stories {
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ModelRunner> runner;
  ModelIdentity id;
};

Stories& stories() {
  static Stories s = [] {
    Stories r;
    r.model = load("stories260K/stories260K.gguf");
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

std::vector<int32_t> encode_text(const std::string& text, bool bos = true) {
  return stories().model->tokenizer->encode(text, EncodeOptions{bos, false});
}

// A fresh cache of the runner holding `tokens` at positions pos0 ...
std::unique_ptr<KvCache> prefill(std::span<const int32_t> tokens, int32_t n_ctx = 256, int32_t pos0 = 0,
                                 DType dtype = DType::kF32) {
  ModelRunner& runner = *stories().runner;
  auto c = runner.new_cache(n_ctx, dtype);
  REQUIRE(c.ok());
  std::unique_ptr<KvCache> cache = std::move(c).value();
  REQUIRE(cache->set_pos0(pos0).ok());
  if (!tokens.empty()) {
    std::vector<float> logits(static_cast<size_t>(runner.model().config.n_vocab));
    const Status s = runner.forward(*cache, tokens, logits);
    INFO(s.to_string());
    REQUIRE(s.ok());
  }
  return cache;
}

const std::string kStory =
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the park "
    "with her friend Tom.";

struct Stream {
  KvWireHeader header;
  std::vector<KvWireChunk> chunks;
  KvWireTrailer trailer;
};

Stream encode(const KvCache& cache, const ModelIdentity& id, WireDType dtype,
              WireCompression comp = WireCompression::kNone, uint32_t chunk_tokens = 0) {
  auto e = KvWireEncoder::create(cache, id, dtype, comp, chunk_tokens);
  INFO(e.status().to_string());
  REQUIRE(e.ok());
  Stream s;
  s.header = (*e)->header();
  KvWireChunk c;
  while ((*e)->next(c)) s.chunks.push_back(c);
  s.trailer = (*e)->trailer();
  return s;
}

// Header → chunks → trailer; the first error.
Result<std::unique_ptr<KvCache>> decode(const Stream& s, const ModelIdentity& id, const KvWireLimits& limits = {},
                                        int32_t n_ctx_min = 0) {
  KVB_ASSIGN_OR_RETURN(auto d, KvWireDecoder::create(s.header, id, cpu_device().buffer_type(), n_ctx_min, limits));
  for (const KvWireChunk& c : s.chunks) KVB_RETURN_IF_ERROR(d->add(c));
  return d->finish(s.trailer);
}

StatusCode decode_code(const Stream& s, const ModelIdentity& id, const KvWireLimits& limits = {}) {
  auto r = decode(s, id, limits);
  return r.ok() ? StatusCode::kOk : r.status().code();
}

std::span<const float> floats(const Tensor& t) { return {t.as<const float>(), size_t(t.numel())}; }

uint64_t xxh3(const std::string& s) { return XXH3_64bits(s.data(), s.size()); }

uint64_t digest(const std::vector<KvWireChunk>& chunks) {
  std::vector<uint64_t> sums;
  for (const KvWireChunk& c : chunks) sums.push_back(c.xxh3);
  return XXH3_64bits(sums.data(), sums.size() * 8);
}

}  // namespace

// ============================== identity ==============================

TEST_CASE("model identity: stable, self-consistent, and names the first differing field", "[kv_wire][model]") {
  const ModelIdentity& id = stories().id;
  CHECK(id.arch == "llama");
  CHECK(id.n_layer == 5);
  CHECK(id.n_head_kv == 4);
  CHECK(id.head_dim == 8);
  CHECK(id.n_vocab == 512);
  CHECK(id.rope_type == "normal");
  CHECK(id.tokenizer_hash != 0);
  CHECK(id.weights_hash != 0);
  CHECK(id.fingerprint == identity_fingerprint(id));
  CHECK(model_identity(*stories().model) == id);  // deterministic
  CHECK(first_difference(id, id).empty());

  SECTION("each field is compared") {
    ModelIdentity other = id;
    other.rope_theta = 20000.0f;
    CHECK(first_difference(id, other) == "rope_theta");
    other = id;
    other.tokenizer_hash ^= 1;
    CHECK(first_difference(id, other) == "tokenizer_hash");
    CHECK(identity_fingerprint(other) != id.fingerprint);
    other = id;
    other.fingerprint ^= 1;
    CHECK(first_difference(id, other) == "fingerprint");
  }
  SECTION("other models") {
    const ModelIdentity aid = model_identity(*load("aidreams260K/aidreams260K.bin", "aidreams260K/tok512.bin"));
    CHECK(first_difference(id, aid) == "n_layer");
    const ModelIdentity tiny = model_identity(*load("llama-2-tiny-random/llama-2-tiny-random.gguf"));
    CHECK_FALSE(first_difference(id, tiny).empty());
    CHECK(tiny.fingerprint != id.fingerprint);
  }
  SECTION("same shapes and tokenizer, other weights: weights_hash") {
    auto s1 = synth_model("stories260K", DType::kF32, 1);
    auto s2 = synth_model("stories260K", DType::kF32, 2);
    REQUIRE(s1.ok());
    REQUIRE(s2.ok());
    const ModelIdentity i1 = model_identity(**s1), i2 = model_identity(**s2);
    CHECK(first_difference(i1, i2) == "weights_hash");
    CHECK(model_identity(**synth_model("stories260K", DType::kF32, 1)) == i1);
  }
  SECTION("no tokenizer hashes as 0") {
    auto m = synth_model("stories260K", DType::kF32, 1);
    REQUIRE(m.ok());
    (*m)->tokenizer.reset();
    CHECK(model_identity(**m).tokenizer_hash == 0);
  }
}

// ============================== round trips ==============================

TEST_CASE("kv wire round trip per dtype, compression and chunk size", "[kv_wire][model]") {
  const ModelIdentity& id = stories().id;
  const std::vector<int32_t> tokens = encode_text(kStory);
  REQUIRE(tokens.size() > 20);
  const auto cache = prefill(tokens);

  const WireDType dtype = GENERATE(WireDType::kF32, WireDType::kF16, WireDType::kBF16, WireDType::kInt8);
  const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);
  const uint32_t chunk_tokens = GENERATE(1u, 7u, 0u);
  CAPTURE(wire_dtype_name(dtype), comp == WireCompression::kZstd, chunk_tokens);

  const Stream s = encode(*cache, id, dtype, comp, chunk_tokens);
  const uint32_t n = uint32_t(tokens.size());
  const uint32_t per_slice = chunk_tokens == 0 ? n : chunk_tokens;  // auto: all 30-odd cells fit 1 MiB
  CHECK(s.header.n_chunks == 2 * id.n_layer * ((n + per_slice - 1) / per_slice));
  CHECK(s.chunks.size() == s.header.n_chunks);
  CHECK(s.trailer.n_chunks == s.header.n_chunks);
  CHECK(s.header.tokens == tokens);
  uint64_t raw = 0;
  for (const KvWireChunk& c : s.chunks) {
    raw += c.raw_size;
    if (comp == WireCompression::kNone) CHECK(c.payload.size() == c.raw_size);
  }
  CHECK(raw == s.header.total_bytes);
  CHECK(s.header.total_bytes == 2 * id.n_layer * wire_payload_bytes(dtype, id.n_head_kv, id.head_dim, n));

  auto r = decode(s, id);
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  const KvCache& got = **r;
  CHECK(got.layout() == cache->layout());
  CHECK(std::vector<int32_t>(got.tokens().begin(), got.tokens().end()) == tokens);
  CHECK(got.pos0() == 0);
  CHECK(got.n_ctx() == int32_t(n));

  for (int32_t l = 0; l < int32_t(id.n_layer); ++l) {
    for (const bool is_v : {false, true}) {
      const Tensor a = is_v ? cache->v_used(l) : cache->k_used(l);
      const Tensor b = is_v ? got.v_used(l) : got.k_used(l);
      REQUIRE(a.nbytes() == b.nbytes());
      const auto x = floats(a), y = floats(b);
      switch (dtype) {
        case WireDType::kF32: REQUIRE(std::memcmp(a.data, b.data, a.nbytes()) == 0); break;
        case WireDType::kF16:
          for (size_t i = 0; i < x.size(); ++i) {
            REQUIRE(y[i] == fp16_to_fp32(fp32_to_fp16(x[i])));
            REQUIRE(std::fabs(x[i] - y[i]) <= std::fabs(x[i]) * 0x1p-11f + 0x1p-24f);
          }
          break;
        case WireDType::kBF16:
          for (size_t i = 0; i < x.size(); ++i) {
            REQUIRE(y[i] == bf16_to_fp32(fp32_to_bf16(x[i])));
            REQUIRE(std::fabs(x[i] - y[i]) <= std::fabs(x[i]) * 0x1p-8f);
          }
          break;
        case WireDType::kInt8: {
          // The documented bound: |x - x̂| <= scale/2 with scale = max|x|/127 over one head of one
          // token (+ f32 rounding, < 5e-5 scale).
          const size_t hd = id.head_dim;
          for (size_t row = 0; row < x.size() / hd; ++row) {
            float amax = 0;
            for (size_t d = 0; d < hd; ++d) amax = std::max(amax, std::fabs(x[row * hd + d]));
            const float scale = amax / 127.0f;
            for (size_t d = 0; d < hd; ++d) {
              REQUIRE(std::fabs(x[row * hd + d] - y[row * hd + d]) <= scale * (0.5f + 5e-5f));
            }
          }
          break;
        }
      }
    }
  }
}

TEST_CASE("kv wire keeps positions, handles empty and f16 caches", "[kv_wire][model]") {
  const ModelIdentity& id = stories().id;
  const std::vector<int32_t> tokens = encode_text("Tom had a red ball.");

  SECTION("pos0 travels") {
    const auto cache = prefill(tokens, 64, /*pos0=*/100);
    auto r = decode(encode(*cache, id, WireDType::kF32), id, {}, /*n_ctx_min=*/64);
    REQUIRE(r.ok());
    CHECK((*r)->pos0() == 100);
    CHECK((*r)->next_pos() == 100 + int32_t(tokens.size()));
    CHECK((*r)->n_ctx() == 64);
  }
  SECTION("an empty cache is a header and a trailer") {
    const auto cache = prefill({}, 8);
    const Stream s = encode(*cache, id, WireDType::kInt8, WireCompression::kZstd);
    CHECK(s.header.n_chunks == 0);
    CHECK(s.chunks.empty());
    CHECK(s.header.total_bytes == 0);
    auto r = decode(s, id, {}, 16);
    REQUIRE(r.ok());
    CHECK((*r)->n_tokens() == 0);
    CHECK((*r)->n_ctx() == 16);
  }
  SECTION("an f16 cache encodes its exact values") {
    const auto cache = prefill(tokens, 64, 0, DType::kF16);
    auto r = decode(encode(*cache, id, WireDType::kF16, WireCompression::kZstd, 3), id);
    REQUIRE(r.ok());
    for (int32_t l = 0; l < int32_t(id.n_layer); ++l) {
      const Tensor a = cache->k_used(l);
      std::vector<float> x(static_cast<size_t>(a.numel()));
      to_f32(DType::kF16, a.data, x.data(), a.numel());
      const auto y = floats((*r)->k_used(l));
      REQUIRE(std::equal(x.begin(), x.end(), y.begin(), y.end()));
    }
  }
  SECTION("chunk_tokens above n_tokens is capped") {
    const auto cache = prefill(tokens, 64);
    const Stream s = encode(*cache, id, WireDType::kF32, WireCompression::kNone, 1000);
    CHECK(s.header.n_chunks == 2 * id.n_layer);
    CHECK(decode(s, id).ok());
  }
}

TEST_CASE("kv wire encoder rejects what it cannot encode", "[kv_wire][model]") {
  const auto cache = prefill(encode_text("Hi."), 16);
  ModelIdentity other = stories().id;
  other.n_head_kv = 8;
  CHECK(KvWireEncoder::create(*cache, other, WireDType::kF32, WireCompression::kNone).status().code() ==
        StatusCode::kInvalidArgument);
  CHECK(KvWireEncoder::create(*cache, stories().id, static_cast<WireDType>(9), WireCompression::kNone)
            .status()
            .code() == StatusCode::kInvalidArgument);
  CHECK(KvWireEncoder::create(*cache, stories().id, WireDType::kF32, static_cast<WireCompression>(5))
            .status()
            .code() == StatusCode::kInvalidArgument);
}

// ============================== identity mismatch ==============================

TEST_CASE("kv wire decoder refuses a cache of another model, naming the field", "[kv_wire][model]") {
  const auto cache = prefill(encode_text("Lily and Tom."), 32);
  const Stream s = encode(*cache, stories().id, WireDType::kF32);

  auto expect_field = [&](const ModelIdentity& receiver, const std::string& field) {
    auto r = decode(s, receiver);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(r.status().message(), Catch::Contains(field + " differs"));
  };
  SECTION("aidreams260K") {
    expect_field(model_identity(*load("aidreams260K/aidreams260K.bin", "aidreams260K/tok512.bin")), "n_layer");
  }
  SECTION("llama-2-tiny-random") {
    const ModelIdentity tiny = model_identity(*load("llama-2-tiny-random/llama-2-tiny-random.gguf"));
    expect_field(tiny, first_difference(tiny, stories().id));
  }
  SECTION("a synthetic stories260K whose only difference is its weights") {
    auto a = synth_model("stories260K", DType::kF32, 7);
    auto b = synth_model("stories260K", DType::kF32, 8);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    auto backend = cpu_device().create_backend();
    REQUIRE(backend.ok());
    auto runner = ModelRunner::create(**a, **backend);
    REQUIRE(runner.ok());
    auto c = (*runner)->new_cache(16);
    REQUIRE(c.ok());
    std::vector<float> logits(512);
    const std::vector<int32_t> toks{1, 300, 301, 302};
    REQUIRE((*runner)->forward(**c, toks, logits).ok());
    const Stream sa = encode(**c, model_identity(**a), WireDType::kF16);
    CHECK(decode(sa, model_identity(**a)).ok());
    auto r = decode(sa, model_identity(**b));
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(r.status().message(), Catch::Contains("weights_hash differs"));
  }
  SECTION("a sender that tampers with its fingerprint") {
    Stream t = s;
    t.header.model.fingerprint ^= 0x10;
    auto r = decode(t, stories().id);
    CHECK(r.status().code() == StatusCode::kFailedPrecondition);
    CHECK_THAT(r.status().message(), Catch::Contains("fingerprint differs"));
  }
}

// ============================== hostile headers ==============================

TEST_CASE("kv wire decoder validates every header field before allocating", "[kv_wire][model]") {
  const ModelIdentity& id = stories().id;
  const auto cache = prefill(encode_text(kStory), 64);
  const Stream good = encode(*cache, id, WireDType::kF16, WireCompression::kNone, 7);
  REQUIRE(decode_code(good, id) == StatusCode::kOk);
  const BufferType& host = cpu_device().buffer_type();
  auto header_code = [&](const KvWireHeader& h, const KvWireLimits& limits = {}) {
    auto d = KvWireDecoder::create(h, id, host, 0, limits);
    return d.ok() ? StatusCode::kOk : d.status().code();
  };
  KvWireHeader h = good.header;

  SECTION("version") {
    h.format_version = 2;
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
  }
  SECTION("layout must equal the identity's") {
    h.n_layer = 6;
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
    h = good.header;
    h.n_head_kv = 2;
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
    h = good.header;
    h.head_dim = 0;
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
  }
  SECTION("enums") {
    h.dtype = static_cast<WireDType>(17);
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
    h = good.header;
    h.compression = static_cast<WireCompression>(-3);
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
  }
  SECTION("token ids") {
    h.tokens[3] = -1;
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
    h.tokens[3] = 512;
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
    h.tokens[3] = std::numeric_limits<int32_t>::max();
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
    h.tokens[3] = 511;
    CHECK(header_code(h) == StatusCode::kOk);
  }
  SECTION("positions") {
    h.pos0 = -1;
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
    h.pos0 = std::numeric_limits<int32_t>::max() - 3;
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
    h.pos0 = std::numeric_limits<int32_t>::max() - int32_t(h.tokens.size());
    CHECK(header_code(h) == StatusCode::kOk);
  }
  SECTION("total_bytes must be exactly what dtype and n_tokens imply") {
    for (uint64_t t : {uint64_t(0), good.header.total_bytes - 1, good.header.total_bytes + 1,
                       good.header.total_bytes * 2, std::numeric_limits<uint64_t>::max()}) {
      h.total_bytes = t;
      CHECK(header_code(h) == StatusCode::kInvalidArgument);
    }
    h = good.header;
    h.dtype = WireDType::kF32;  // the same total for another dtype is wrong
    CHECK(header_code(h) == StatusCode::kInvalidArgument);
  }
  SECTION("n_chunks must be able to carry the cache") {
    for (uint32_t n : {0u, 9u, 2 * 5 * uint32_t(h.tokens.size()) + 1, std::numeric_limits<uint32_t>::max()}) {
      h.n_chunks = n;
      CHECK(header_code(h) == StatusCode::kInvalidArgument);
    }
    h.n_chunks = 10;  // 2 x n_layer: one chunk per layer and K/V
    CHECK(header_code(h) == StatusCode::kOk);
  }
  SECTION("limits: RESOURCE_EXHAUSTED") {
    CHECK(header_code(h, KvWireLimits{10, uint64_t(1) << 30}) == StatusCode::kResourceExhausted);
    CHECK(header_code(h, KvWireLimits{1u << 20, 1000}) == StatusCode::kResourceExhausted);
    // A million-token header within limits but with a wrong total is refused before allocating.
    KvWireHeader big = h;
    big.tokens.assign(1u << 20, 5);
    CHECK(header_code(big, KvWireLimits{1u << 19, uint64_t(1) << 40}) == StatusCode::kResourceExhausted);
    CHECK(header_code(big) == StatusCode::kInvalidArgument);
    big.total_bytes = 2 * 5 * wire_payload_bytes(big.dtype, 4, 8, 1u << 20);
    big.n_chunks = 10;
    CHECK(header_code(big, KvWireLimits{1u << 20, 1u << 20}) == StatusCode::kResourceExhausted);
  }
  SECTION("payload sizes saturate instead of wrapping") {
    CHECK(wire_payload_bytes(WireDType::kF32, 0xffffffffu, 0xffffffffu, 0xffffffffu) ==
          std::numeric_limits<uint64_t>::max());
    CHECK(wire_payload_bytes(WireDType::kInt8, 4, 8, 3) == 3 * (32 + 16));
    CHECK(wire_payload_bytes(WireDType::kBF16, 4, 8, 3) == 3 * 64);
  }
}

// ============================== hostile chunks ==============================

TEST_CASE("kv wire decoder: corrupted, missing, duplicate, overlapping, odd-sized chunks", "[kv_wire][model]") {
  const ModelIdentity& id = stories().id;
  const std::vector<int32_t> tokens = encode_text(kStory);  // > 14 tokens: at least 3 slices of 7
  const auto cache = prefill(tokens, 64);
  const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);
  const WireDType dtype = GENERATE(WireDType::kF32, WireDType::kInt8);
  CAPTURE(comp == WireCompression::kZstd, wire_dtype_name(dtype));
  const Stream good = encode(*cache, id, dtype, comp, 7);
  REQUIRE(decode_code(good, id) == StatusCode::kOk);
  Stream s = good;

  SECTION("a flipped payload byte is DATA_LOSS, wherever it is") {
    for (size_t k : {size_t(0), s.chunks.size() / 2, s.chunks.size() - 1}) {
      for (size_t at : {size_t(0), s.chunks[k].payload.size() / 2, s.chunks[k].payload.size() - 1}) {
        s = good;
        s.chunks[k].payload[at] ^= 0x01;
        CHECK(decode_code(s, id) == StatusCode::kDataLoss);
      }
    }
  }
  SECTION("a wrong checksum is DATA_LOSS") {
    s.chunks[3].xxh3 ^= 1;
    CHECK(decode_code(s, id) == StatusCode::kDataLoss);
  }
  SECTION("a wrong trailer digest is DATA_LOSS; so are reordered chunks under the sender's digest") {
    s.trailer.digest ^= 1;
    CHECK(decode_code(s, id) == StatusCode::kDataLoss);
    s = good;
    std::reverse(s.chunks.begin(), s.chunks.end());
    CHECK(decode_code(s, id) == StatusCode::kDataLoss);
    s.trailer.digest = digest(s.chunks);  // any order the sender signs is fine
    CHECK(decode_code(s, id) == StatusCode::kOk);
  }
  SECTION("a missing chunk") {
    s.chunks.erase(s.chunks.begin() + 4);
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
    s.trailer.digest = digest(s.chunks);
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
  }
  SECTION("a duplicate chunk") {
    s.chunks.insert(s.chunks.begin() + 2, s.chunks[1]);
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
  }
  SECTION("more chunks than announced") {
    s.chunks.push_back(s.chunks[0]);
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
  }
  SECTION("an overlapping slice") {
    REQUIRE(s.chunks[1].token_begin == 7);
    s.chunks[0].token_begin = 3;  // [3, 10) and [7, 14)
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
  }
  SECTION("out-of-range slices and layers") {
    s.chunks[2].token_begin = uint32_t(tokens.size()) - 1;
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
    s = good;
    s.chunks[2].token_begin = std::numeric_limits<uint32_t>::max() - 2;
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
    s = good;
    s.chunks[2].token_count = 0;
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
    s = good;
    s.chunks[2].layer = 5;
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
    s = good;
    s.chunks[2].layer = std::numeric_limits<uint32_t>::max();
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
  }
  SECTION("wrong sizes") {
    s.chunks[1].raw_size += 1;
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
    s = good;
    s.chunks[1].raw_size = std::numeric_limits<uint64_t>::max();
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
    s = good;
    s.chunks[1].payload.push_back('x');
    s.chunks[1].xxh3 = xxh3(s.chunks[1].payload);
    CHECK(decode_code(s, id) == (comp == WireCompression::kNone ? StatusCode::kInvalidArgument
                                                                 : StatusCode::kDataLoss));
    s = good;
    s.chunks[1].payload.pop_back();
    s.chunks[1].xxh3 = xxh3(s.chunks[1].payload);
    CHECK(decode_code(s, id) == (comp == WireCompression::kNone ? StatusCode::kInvalidArgument
                                                                 : StatusCode::kDataLoss));
    s = good;
    s.chunks[1].payload.clear();
    s.chunks[1].xxh3 = xxh3(s.chunks[1].payload);
    CHECK(decode_code(s, id) != StatusCode::kOk);
  }
  SECTION("a K chunk relabelled V collides with the real V chunk") {
    s.chunks[0].is_v = true;
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
  }
  SECTION("trailer counts") {
    s.trailer.n_chunks += 1;
    CHECK(decode_code(s, id) == StatusCode::kInvalidArgument);
  }
  SECTION("the decoder is spent after finish") {
    auto d = KvWireDecoder::create(s.header, id, cpu_device().buffer_type(), 0);
    REQUIRE(d.ok());
    for (const KvWireChunk& c : s.chunks) REQUIRE((*d)->add(c).ok());
    CHECK((*d)->bytes_received() > 0);
    REQUIRE((*d)->finish(s.trailer).ok());
    CHECK((*d)->add(s.chunks[0]).code() == StatusCode::kFailedPrecondition);
    CHECK((*d)->finish(s.trailer).status().code() == StatusCode::kFailedPrecondition);
  }
  SECTION("a failed add leaves the decoder usable for the right chunk") {
    auto d = KvWireDecoder::create(s.header, id, cpu_device().buffer_type(), 0);
    REQUIRE(d.ok());
    KvWireChunk bad = s.chunks[0];
    bad.payload[0] ^= 0x40;
    CHECK((*d)->add(bad).code() == StatusCode::kDataLoss);
    for (const KvWireChunk& c : s.chunks) REQUIRE((*d)->add(c).ok());
    CHECK((*d)->finish(s.trailer).ok());
  }
}

TEST_CASE("kv wire decoder: hostile zstd frames with valid checksums", "[kv_wire][model]") {
  const ModelIdentity& id = stories().id;
  const auto cache = prefill(encode_text(kStory), 64);
  const Stream good = encode(*cache, id, WireDType::kF32, WireCompression::kZstd, 5);
  // Flip each byte of one frame in turn (the checksum re-signed): decompression must fail cleanly
  // or yield exactly raw_size bytes; the result is DATA_LOSS or (rarely) OK, never a crash.
  const std::string frame = good.chunks[1].payload;
  int data_loss = 0;
  for (size_t at = 0; at < frame.size(); ++at) {
    Stream s = good;
    s.chunks[1].payload[at] = char(s.chunks[1].payload[at] ^ 0x5a);
    s.chunks[1].xxh3 = xxh3(s.chunks[1].payload);
    s.trailer.digest = digest(s.chunks);
    const StatusCode c = decode_code(s, id);
    CHECK((c == StatusCode::kDataLoss || c == StatusCode::kOk));
    data_loss += c == StatusCode::kDataLoss;
  }
  CHECK(data_loss > 0);
  // A frame that inflates to more than raw_size.
  Stream s = good;
  s.chunks[1].payload = good.chunks[0].payload + good.chunks[0].payload;  // two frames
  s.chunks[1].xxh3 = xxh3(s.chunks[1].payload);
  CHECK(decode_code(s, id) != StatusCode::kOk);
  // Garbage that is not zstd at all.
  s.chunks[1].payload = std::string(100, 'z');
  s.chunks[1].xxh3 = xxh3(s.chunks[1].payload);
  CHECK(decode_code(s, id) == StatusCode::kDataLoss);
}

// ============================== concatenation ==============================

namespace {

// Reference: rotates head vector v (f32) by `delta` positions in double precision.
void rotate_ref(float* v, int64_t delta, const RopeParams& p) {
  const int half = p.n_rot / 2;
  for (int i = 0; i < half; ++i) {
    const double theta = double(delta) * double(p.freq_scale) * std::pow(double(p.theta_base), -2.0 * i / p.n_rot);
    const int a = p.type == RopeType::kNormal ? 2 * i : i;
    const int b = p.type == RopeType::kNormal ? 2 * i + 1 : i + half;
    const double x0 = v[a], x1 = v[b];
    v[a] = float(x0 * std::cos(theta) - x1 * std::sin(theta));
    v[b] = float(x0 * std::sin(theta) + x1 * std::cos(theta));
  }
}

}  // namespace

TEST_CASE("append_shifted concatenates caches, re-rotating keys", "[kv_cache][kv_wire][model]") {
  Stories& st = stories();
  const ModelConfig& cfg = st.model->config;
  const std::vector<int32_t> ta = encode_text(kStory);
  const std::vector<int32_t> tb = encode_text("Tom saw a big dog. The dog was happy.", /*bos=*/false);
  const int32_t na = int32_t(ta.size()), nb = int32_t(tb.size());
  const auto a = prefill(ta, 64);
  const auto b = prefill(tb, 64);

  auto c = prefill({}, 128);
  REQUIRE(c->append_shifted(*st.backend, *a, cfg.rope).ok());  // delta 0: a plain copy
  REQUIRE(c->append_shifted(*st.backend, *b, cfg.rope).ok());  // delta na
  REQUIRE(c->n_tokens() == na + nb);
  CHECK(c->pos0() == 0);
  std::vector<int32_t> tab = ta;
  tab.insert(tab.end(), tb.begin(), tb.end());
  CHECK(std::vector<int32_t>(c->tokens().begin(), c->tokens().end()) == tab);

  for (int32_t l = 0; l < cfg.n_layer; ++l) {
    // A's cells: bit-identical.
    REQUIRE(std::memcmp(c->k(l).data, a->k(l).data, a->k_used(l).nbytes()) == 0);
    REQUIRE(std::memcmp(c->v(l).data, a->v(l).data, a->v_used(l).nbytes()) == 0);
    // B's values: bit-identical; B's keys: B's keys turned by na positions.
    const Tensor cv = c->v(l).slice_rows(na, nb), ck = c->k(l).slice_rows(na, nb);
    REQUIRE(std::memcmp(cv.data, b->v(l).data, b->v_used(l).nbytes()) == 0);
    std::vector<float> want(floats(b->k_used(l)).begin(), floats(b->k_used(l)).end());
    for (size_t h = 0; h < want.size() / size_t(cfg.head_dim); ++h) rotate_ref(&want[h * size_t(cfg.head_dim)], na, cfg.rope);
    CHECK(max_abs_diff(floats(ck), want) < 1e-5f);
  }

  SECTION("equal to B prefilled directly at the shifted positions") {
    // Attention depends on relative positions only, so B alone at positions na.. has the same hidden
    // states as B at 0.., and its keys are exactly B's keys turned by na (up to f32 rounding).
    const auto b_at = prefill(tb, 64, /*pos0=*/na);
    for (int32_t l = 0; l < cfg.n_layer; ++l) {
      CHECK(max_abs_diff(floats(c->k(l).slice_rows(na, nb)), floats(b_at->k_used(l))) < 1e-4f);
      CHECK(max_abs_diff(floats(c->v(l).slice_rows(na, nb)), floats(b_at->v_used(l))) < 1e-4f);
    }
  }
  SECTION("generation continues from the concatenated cache") {
    GenerateParams p;
    p.max_tokens = 12;
    p.stop_at_eos = false;
    const std::vector<int32_t> prompt = encode_text(" Lily", false);
    auto g = generate(*st.runner, *c, prompt, p);
    INFO(g.status().to_string());
    REQUIRE(g.ok());
    CHECK(g->tokens.size() == 12);
    CHECK(c->n_tokens() == na + nb + int32_t(prompt.size()) + 11);
  }
  SECTION("a wire-decoded cache concatenates too (its positions travel with it)") {
    const auto b_far = prefill(tb, 64, /*pos0=*/300);
    auto got = decode(encode(*b_far, st.id, WireDType::kF32), st.id);
    REQUIRE(got.ok());
    auto d = prefill(ta, 128);
    REQUIRE(d->append_shifted(*st.backend, **got, cfg.rope).ok());
    for (int32_t l = 0; l < cfg.n_layer; ++l) {
      CHECK(max_abs_diff(floats(d->k(l).slice_rows(na, nb)), floats(c->k(l).slice_rows(na, nb))) < 1e-4f);
    }
  }
  SECTION("errors leave the cache unchanged") {
    auto small = prefill(ta, na + nb - 1);
    std::vector<float> before(floats(small->k_used(0)).begin(), floats(small->k_used(0)).end());
    CHECK(small->append_shifted(*st.backend, *b, cfg.rope).code() == StatusCode::kResourceExhausted);
    CHECK(small->n_tokens() == na);
    CHECK(max_abs_diff(floats(small->k_used(0)), before) == 0.0f);

    auto f16 = prefill(ta, 128, 0, DType::kF16);
    auto b16 = prefill(tb, 64, 0, DType::kF16);
    CHECK(f16->append_shifted(*st.backend, *b16, cfg.rope).code() == StatusCode::kInvalidArgument);
    CHECK(f16->n_tokens() == na);
    CHECK(c->append_shifted(*st.backend, *b16, cfg.rope).code() == StatusCode::kInvalidArgument);
    CHECK(c->append_shifted(*st.backend, *c, cfg.rope).code() == StatusCode::kInvalidArgument);
    auto other = KvCache::create(cpu_device().buffer_type(), KvLayout{5, 2, 8, DType::kF32}, 8);
    REQUIRE(other.ok());
    CHECK(c->append_shifted(*st.backend, **other, cfg.rope).code() == StatusCode::kInvalidArgument);
    CHECK(c->n_tokens() == na + nb);
  }
  SECTION("set_pos0 only on an empty cache") {
    CHECK(c->set_pos0(3).code() == StatusCode::kFailedPrecondition);
    auto e = prefill({}, 8);
    CHECK(e->set_pos0(-1).code() == StatusCode::kInvalidArgument);
    CHECK(e->set_pos0(40).ok());
    CHECK(e->next_pos() == 40);
  }
}

// ============================== value codecs ==============================

TEST_CASE("kv wire value codecs are exact against the scalar definitions, on every path", "[kv_wire]") {
  INFO("dispatched implementation: " << kv_wire_values::implementation());
  using EncodeFn = void (*)(WireDType, const float*, int64_t, int64_t, char*);
  using DecodeFn = void (*)(WireDType, const char*, int64_t, int64_t, float*);
  const EncodeFn encoders[] = {kv_wire_values::encode, kv_wire_values::encode_generic};
  const DecodeFn decoders[] = {kv_wire_values::decode, kv_wire_values::decode_generic};
  auto bits = [](float f) { return std::bit_cast<uint32_t>(f); };

  // Every f32 class: zeros, subnormals (f32 and f16), halfway cases, overflow, inf, NaNs with
  // payloads, then random bit patterns. 64 per row, so the vector loops and their tails both run.
  std::vector<float> x;
  for (uint32_t u : {0x00000000u, 0x80000000u, 0x00000001u, 0x807fffffu, 0x33000000u, 0x33000001u, 0x387fc000u,
                     0x387fe000u, 0x38800000u, 0x3f800000u, 0x3f801000u, 0x3f803000u, 0x477fe000u, 0x477fefffu,
                     0x477ff000u, 0x7f7fffffu, 0x7f800000u, 0xff800000u, 0x7f800001u, 0x7fc00000u, 0xffffffffu,
                     0x7fa00000u, 0x3f808000u, 0x3f818000u}) {
    x.push_back(std::bit_cast<float>(u));
  }
  std::mt19937 rng(7);
  while (x.size() < 64 * 1024 + 37) x.push_back(std::bit_cast<float>(uint32_t(rng())));
  const int64_t n = int64_t(x.size());

  for (const EncodeFn enc : encoders) {
    std::vector<uint16_t> h(x.size());
    enc(WireDType::kF16, x.data(), 1, n, reinterpret_cast<char*>(h.data()));
    for (size_t i = 0; i < x.size(); ++i) REQUIRE(h[i] == fp32_to_fp16(x[i]));
    enc(WireDType::kBF16, x.data(), 1, n, reinterpret_cast<char*>(h.data()));
    for (size_t i = 0; i < x.size(); ++i) REQUIRE(h[i] == fp32_to_bf16(x[i]));
  }
  std::vector<uint16_t> all(65536 + 5);
  for (size_t i = 0; i < all.size(); ++i) all[i] = uint16_t(i);
  for (const DecodeFn dec : decoders) {
    std::vector<float> y(all.size());
    dec(WireDType::kF16, reinterpret_cast<const char*>(all.data()), 1, int64_t(all.size()), y.data());
    for (size_t i = 0; i < all.size(); ++i) REQUIRE(bits(y[i]) == bits(fp16_to_fp32(all[i])));
    dec(WireDType::kBF16, reinterpret_cast<const char*>(all.data()), 1, int64_t(all.size()), y.data());
    for (size_t i = 0; i < all.size(); ++i) REQUIRE(bits(y[i]) == bits(bf16_to_fp32(all[i])));
  }

  // int8: the definition in kv_wire.h, with std::lrint, for odd and even row lengths.
  for (const int64_t head_dim : {1, 7, 8, 33, 64, 96, 128}) {
    const int64_t rows = 19;
    std::vector<float> v(size_t(rows * head_dim));
    std::normal_distribution<float> normal(0.0f, 3.0f);
    for (float& f : v) f = normal(rng);
    v[3] = std::numeric_limits<float>::quiet_NaN();
    v[size_t(head_dim + 1) % v.size()] = std::numeric_limits<float>::infinity();
    std::fill(v.end() - head_dim, v.end(), 0.0f);                                        // an all-zero row
    for (int64_t d = 0; d < head_dim; ++d) v[size_t(2 * head_dim + d) % v.size()] *= 1e-30f;  // tiny values
    std::vector<char> want(size_t(rows * (head_dim + 4)));
    auto* q = reinterpret_cast<int8_t*>(want.data() + rows * 4);
    for (int64_t r = 0; r < rows; ++r) {
      float amax = 0;
      for (int64_t d = 0; d < head_dim; ++d) amax = std::max(amax, std::fabs(v[size_t(r * head_dim + d)]));
      const float scale = amax / 127.0f, inv = amax > 0.0f ? 127.0f / amax : 0.0f;
      std::memcpy(want.data() + r * 4, &scale, 4);
      for (int64_t d = 0; d < head_dim; ++d) {
        float t = v[size_t(r * head_dim + d)] * inv;
        if (!(t >= -127.0f)) t = -127.0f;
        if (t > 127.0f) t = 127.0f;
        q[r * head_dim + d] = static_cast<int8_t>(std::lrint(t));
      }
    }
    for (const EncodeFn enc : encoders) {
      std::vector<char> got(want.size());
      enc(WireDType::kInt8, v.data(), rows, head_dim, got.data());
      REQUIRE(got == want);
    }
    for (const DecodeFn dec : decoders) {
      std::vector<float> y(v.size());
      dec(WireDType::kInt8, want.data(), rows, head_dim, y.data());
      for (int64_t r = 0; r < rows; ++r) {
        float scale;
        std::memcpy(&scale, want.data() + r * 4, 4);
        for (int64_t d = 0; d < head_dim; ++d) {
          REQUIRE(bits(y[size_t(r * head_dim + d)]) == bits(scale * float(q[r * head_dim + d])));
        }
      }
    }
  }
}

TEST_CASE("kv wire zero-copy views, payloads in pieces and reserved cells", "[kv_wire][model]") {
  const ModelIdentity& id = stories().id;
  const std::vector<int32_t> tokens = encode_text(kStory);
  const auto cache = prefill(tokens);

  SECTION("next(view) and next(chunk) give the same stream; f32 views are the cache's own bytes") {
    const WireDType dtype = GENERATE(WireDType::kF32, WireDType::kF16, WireDType::kInt8);
    const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);
    auto a = KvWireEncoder::create(*cache, id, dtype, comp, 7);
    auto b = KvWireEncoder::create(*cache, id, dtype, comp, 7);
    REQUIRE((a.ok() && b.ok()));
    CHECK((*a)->zero_copy() == (dtype == WireDType::kF32 && comp == WireCompression::kNone));
    KvWireChunk c;
    KvWireChunkView v;
    size_t n = 0;
    while ((*a)->next(c)) {
      REQUIRE((*b)->next(v));
      CHECK((v.layer == c.layer && v.is_v == c.is_v && v.token_begin == c.token_begin &&
             v.token_count == c.token_count && v.raw_size == c.raw_size && v.xxh3 == c.xxh3));
      CHECK(v.payload == std::string_view(c.payload));
      if ((*b)->zero_copy()) {
        const Tensor cells = (v.is_v ? cache->v(int32_t(v.layer)) : cache->k(int32_t(v.layer)))
                                 .slice_rows(v.token_begin, v.token_count);
        CHECK(static_cast<const void*>(v.payload.data()) == cells.data);
      }
      ++n;
    }
    CHECK_FALSE((*b)->next(v));
    CHECK(n == (*a)->header().n_chunks);
    CHECK((*a)->trailer().digest == (*b)->trailer().digest);
  }

  SECTION("a payload split into pieces decodes exactly as a whole one") {
    const WireDType dtype = GENERATE(WireDType::kF32, WireDType::kBF16, WireDType::kInt8);
    const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);
    const Stream s = encode(*cache, id, dtype, comp, 5);
    auto whole = decode(s, id);
    REQUIRE(whole.ok());
    auto d = KvWireDecoder::create(s.header, id, cpu_device().buffer_type(), 0);
    REQUIRE(d.ok());
    std::mt19937 rng(3);
    for (const KvWireChunk& c : s.chunks) {
      std::vector<std::string_view> pieces;
      std::string_view rest = c.payload;
      while (!rest.empty()) {
        const size_t k = std::min<size_t>(rest.size(), rng() % 97);  // empty pieces too
        pieces.push_back(rest.substr(0, k));
        rest.remove_prefix(k);
      }
      KvWireChunkView v = view_of(c);
      v.payload = "ignored when there are pieces";
      v.pieces = pieces;
      REQUIRE((*d)->add(v).ok());
    }
    auto got = (*d)->finish(s.trailer);
    REQUIRE(got.ok());
    for (int32_t l = 0; l < int32_t(id.n_layer); ++l) {
      CHECK(std::memcmp((*got)->k_used(l).data, (*whole)->k_used(l).data, (*got)->k_used(l).nbytes()) == 0);
      CHECK(std::memcmp((*got)->v_used(l).data, (*whole)->v_used(l).data, (*got)->v_used(l).nbytes()) == 0);
    }
  }

  SECTION("a flipped byte or a missing byte in a piece is caught") {
    const Stream s = encode(*cache, id, WireDType::kF32, WireCompression::kNone, 5);
    auto d = KvWireDecoder::create(s.header, id, cpu_device().buffer_type(), 0);
    REQUIRE(d.ok());
    std::string p = s.chunks[0].payload;
    const std::string_view whole = p;
    std::vector<std::string_view> pieces = {whole.substr(0, 100), whole.substr(100)};
    KvWireChunkView v = view_of(s.chunks[0]);
    v.pieces = pieces;
    p[150] ^= 0x10;
    CHECK((*d)->add(v).code() == StatusCode::kDataLoss);
    p[150] ^= 0x10;
    pieces[1].remove_suffix(1);
    CHECK((*d)->add(v).code() == StatusCode::kInvalidArgument);
    pieces[1] = whole.substr(100);
    CHECK((*d)->add(v).ok());
  }

  SECTION("n_ctx_extra reserves free cells, within the limits") {
    const Stream s = encode(*cache, id, WireDType::kF16);
    const int32_t n = int32_t(tokens.size());
    auto d = KvWireDecoder::create(s.header, id, cpu_device().buffer_type(), 0, {}, 40);
    REQUIRE(d.ok());
    for (const KvWireChunk& c : s.chunks) REQUIRE((*d)->add(c).ok());
    auto got = (*d)->finish(s.trailer);
    REQUIRE(got.ok());
    CHECK((*got)->n_ctx() == n + 40);
    CHECK((*got)->n_tokens() == n);

    KvWireLimits lim;
    lim.max_tokens = uint32_t(n + 10);
    auto capped = KvWireDecoder::create(s.header, id, cpu_device().buffer_type(), 0, lim, 40);
    REQUIRE(capped.ok());
    const uint64_t cell_bytes = uint64_t(id.n_head_kv) * id.head_dim * 4 * 2 * id.n_layer;
    lim = {};
    lim.max_bytes = cell_bytes * uint64_t(n + 3);
    auto by_bytes = KvWireDecoder::create(s.header, id, cpu_device().buffer_type(), 0, lim, 40);
    REQUIRE(by_bytes.ok());
    for (const KvWireChunk& c : s.chunks) {
      REQUIRE((*capped)->add(c).ok());
      REQUIRE((*by_bytes)->add(c).ok());
    }
    CHECK((*(*capped)->finish(s.trailer))->n_ctx() == n + 10);
    CHECK((*(*by_bytes)->finish(s.trailer))->n_ctx() == n + 3);
  }
}

// ============================== layer subsets ==============================

TEST_CASE("kv wire layer subsets: only the chosen slices travel, decode in place", "[kv_wire][model]") {
  const ModelIdentity& id = stories().id;
  const std::vector<int32_t> tokens = encode_text(kStory);
  const auto cache = prefill(tokens);
  const uint32_t n = uint32_t(tokens.size());
  const KvLayerSet set{{0, 3}, {1, 3, 4}};  // stories260K has 5 layers
  const uint32_t chunk_tokens = GENERATE(0u, 7u);
  const WireCompression comp = GENERATE(WireCompression::kNone, WireCompression::kZstd);

  auto e = KvWireEncoder::create(*cache, id, WireDType::kF32, comp, chunk_tokens, set);
  REQUIRE(e.ok());
  Stream s;
  s.header = (*e)->header();
  REQUIRE(s.header.layers == set);
  KvWireChunk c;
  std::vector<std::pair<uint32_t, bool>> order;
  uint32_t pl = 0;
  bool pv = false;
  while ((*e)->peek(pl, pv)) {
    REQUIRE((*e)->next(c));
    CHECK((c.layer == pl && c.is_v == pv));
    CHECK(set.contains(c.layer, c.is_v));
    if (order.empty() || order.back() != std::pair{c.layer, c.is_v}) order.emplace_back(c.layer, c.is_v);
    s.chunks.push_back(c);
  }
  CHECK_FALSE((*e)->next(c));
  s.trailer = (*e)->trailer();
  // Layer order, K before V, nothing outside the set.
  CHECK(order == std::vector<std::pair<uint32_t, bool>>{{0, false}, {1, true}, {3, false}, {3, true}, {4, true}});
  const uint32_t per_slice = chunk_tokens == 0 ? n : chunk_tokens;
  CHECK(s.header.n_chunks == 5 * ((n + per_slice - 1) / per_slice));
  CHECK(s.header.total_bytes == 5 * wire_payload_bytes(WireDType::kF32, id.n_head_kv, id.head_dim, n));

  SECTION("a fresh decode: carried slices equal the sender's, the rest are zero; complete() tracks slices") {
    auto d = KvWireDecoder::create(s.header, id, cpu_device().buffer_type(), 0);
    REQUIRE(d.ok());
    CHECK((*d)->cache().n_tokens() == int32_t(n));
    for (const KvWireChunk& ch : s.chunks) {
      CHECK_FALSE((*d)->complete(ch.layer, ch.is_v));
      REQUIRE((*d)->add(ch).ok());
    }
    for (uint32_t l = 0; l < id.n_layer; ++l) {
      CHECK((*d)->complete(l, false));  // not carried counts as complete
      CHECK((*d)->complete(l, true));
    }
    auto r = (*d)->finish(s.trailer);
    REQUIRE(r.ok());
    for (int32_t l = 0; l < int32_t(id.n_layer); ++l) {
      for (const bool is_v : {false, true}) {
        const Tensor got = is_v ? (*r)->v_used(l) : (*r)->k_used(l);
        const Tensor want = is_v ? cache->v_used(l) : cache->k_used(l);
        if (set.contains(uint32_t(l), is_v)) {
          CHECK(std::memcmp(got.data, want.data, got.nbytes()) == 0);
        } else {
          CHECK(std::all_of(floats(got).begin(), floats(got).end(), [](float x) { return x == 0.0f; }));
        }
      }
    }
  }

  SECTION("decode into an existing cache overwrites exactly the carried slices") {
    auto target = prefill(encode_text(kStory));  // same tokens: same values
    for (int32_t l = 0; l < int32_t(id.n_layer); ++l) {
      std::fill_n(target->k(l).as<float>(), target->k_used(l).numel(), 7.0f);
      std::fill_n(target->v(l).as<float>(), target->v_used(l).numel(), 7.0f);
    }
    auto d = KvWireDecoder::create_into(s.header, id, *target);
    REQUIRE(d.ok());
    for (const KvWireChunk& ch : s.chunks) REQUIRE((*d)->add(ch).ok());
    CHECK((*d)->finish(s.trailer).status().code() == StatusCode::kFailedPrecondition);  // wrong finish
    REQUIRE((*d)->finish_into(s.trailer).ok());
    for (int32_t l = 0; l < int32_t(id.n_layer); ++l) {
      for (const bool is_v : {false, true}) {
        const Tensor got = is_v ? target->v_used(l) : target->k_used(l);
        const Tensor want = is_v ? cache->v_used(l) : cache->k_used(l);
        if (set.contains(uint32_t(l), is_v)) {
          CHECK(std::memcmp(got.data, want.data, got.nbytes()) == 0);
        } else {
          CHECK(std::all_of(floats(got).begin(), floats(got).end(), [](float x) { return x == 7.0f; }));
        }
      }
    }
    CHECK((*d)->finish_into(s.trailer).code() == StatusCode::kFailedPrecondition);  // once only
  }

  SECTION("hostile subsets and chunks") {
    Stream bad = s;
    bad.header.layers = KvLayerSet{{3, 0}, {}};  // unsorted
    CHECK(decode_code(bad, id) == StatusCode::kInvalidArgument);
    bad.header.layers = KvLayerSet{{0, 0}, {}};  // duplicate
    CHECK(decode_code(bad, id) == StatusCode::kInvalidArgument);
    bad.header.layers = KvLayerSet{{id.n_layer}, {}};  // out of range
    CHECK(decode_code(bad, id) == StatusCode::kInvalidArgument);
    bad = s;
    bad.header.layers = KvLayerSet{{0, 3}, {1, 3}};  // V 4 dropped: sizes no longer add up
    CHECK(decode_code(bad, id) == StatusCode::kInvalidArgument);
    // A chunk for a slice outside the set (sizes kept consistent): rejected by name.
    const Stream full = encode(*cache, id, WireDType::kF32, comp, chunk_tokens);
    bad = s;
    for (const KvWireChunk& fc : full.chunks) {
      if (fc.layer == 2 && !fc.is_v) {
        bad.chunks[0] = fc;
        break;
      }
    }
    auto r = decode(bad, id);
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == StatusCode::kInvalidArgument);
    CHECK_THAT(r.status().message(), Catch::Contains("leaves out"));
    // Encoder: bad sets are refused.
    CHECK(KvWireEncoder::create(*cache, id, WireDType::kF32, comp, 0, KvLayerSet{{1, 1}, {}}).status().code() ==
          StatusCode::kInvalidArgument);
    // Decode into a cache holding other tokens: refused before anything is written.
    auto other = prefill(encode_text("A different story."));
    CHECK(KvWireDecoder::create_into(s.header, id, *other).status().code() == StatusCode::kInvalidArgument);
  }
}
