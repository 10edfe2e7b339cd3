// The native KV wire codec (engine/kv_wire.h) on real caches of stories260K, and cache
// concatenation (KvCache::append_shifted): round trips per wire dtype, identity checks, and a
// hostile sender's every lever (sizes, ranges, checksums, order) — errors, never crashes.
#include <catch2/catch.hpp>

#include <xxhash.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "engine/forward.h"
#include "engine/generate.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "engine/synth.h"
#include "kernels/registry.h"
#include "support/test_support.h"

using namespace kvb;

namespace {

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

float max_abs_diff(std::span<const float> a, std::span<const float> b) {
  REQUIRE(a.size() == b.size());
  float d = 0.0f;
  for (size_t i = 0; i < a.size(); ++i) d = std::max(d, std::fabs(a[i] - b[i]));
  return d;
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
