// Shared by test_fuse_session and test_fuser_service: a real sharer/receiver pair, their caches over
// the same positions, and a synthetic fuser bound to both.
//
//   sharer   stories260K.gguf                 5 layers, 4 kv heads x 8
//   receiver aidreams260K.bin + tok512.bin    4 layers, 4 kv heads x 16
//   fuser    hidden 64, intermediate 64, 3 blocks, gates alternate (t % 4: both, K, V, none),
//            last_aligned map (receiver t <- sharer t + 1), bound to both fingerprints
//
// Both models prefill the same text, each with its own tokenizer, cut to the same token count
// (position i of one lines up with position i of the other; alignment is not under test here).
// Everything is built once per test process, on first use, from the calling thread.
#pragma once

#include <catch2/catch.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "engine/forward.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "fuser/fuse_session.h"
#include "fuser/fuser.h"

namespace kvb::fuser::fixture {

// ---- assertions on Status / Result ----

template <class T>
T must(Result<T> r) {
  INFO(r.status().to_string());
  REQUIRE(r.ok());
  return std::move(r).value();
}
inline void must_ok(const Status& s) {
  INFO(s.to_string());
  REQUIRE(s.ok());
}
template <class T>
Status status_of(const Result<T>& r) {
  return r.status();
}
inline Status status_of(const Status& s) { return s; }

// Asserts the code of a failed call (a Status or a Result).
#define REQUIRE_CODE(expr, want)                                   \
  do {                                                             \
    const ::kvb::Status kvb_s_ = ::kvb::fuser::fixture::status_of(expr); \
    INFO("got: " << kvb_s_.to_string());                           \
    REQUIRE(kvb_s_.code() == (want));                              \
  } while (0)

// ---- the pair ----

// False (with a Catch2 WARN naming the file) when a model file is missing: the test then returns.
bool have_models();

struct FusePair {
  std::unique_ptr<Model> sharer_model, receiver_model;
  std::unique_ptr<Backend> backend;  // CPU; drives the runners and the fuser (one thread at a time)
  std::unique_ptr<ModelRunner> sharer_runner, receiver_runner;
  ModelIdentity sharer_id, receiver_id;
  std::unique_ptr<KvCache> sharer_cache, receiver_cache;  // n_tokens each, pos0 0
  int32_t n_tokens = 0;
  std::string fuser_dir;  // config.json + model.safetensors
  std::unique_ptr<Fuser> fuser;
  FusePlan plan;
};
FusePair& pair();

// One kv_wire stream, whole.
struct WireStream {
  KvWireHeader header;
  std::vector<KvWireChunk> chunks;
  KvWireTrailer trailer;
};
// Encodes `cache` (f32 wire, no compression) carrying `layers` (nullopt: every slice).
WireStream encode(const KvCache& cache, const ModelIdentity& id, const std::optional<KvLayerSet>& layers,
                  uint32_t chunk_tokens = 0);
// The two inputs of a fusion, as the plan asks.
WireStream sharer_stream(uint32_t chunk_tokens = 0);
WireStream receiver_stream(uint32_t chunk_tokens = 0);

// A copy of the receiver cache (same n_ctx, tokens, positions).
std::unique_ptr<KvCache> receiver_copy();
// The receiver cache with Fuser::fuse applied directly to each gated-on slice.
std::unique_ptr<KvCache> reference_fused();
// Decodes a fused stream over a copy of the receiver cache (KvWireDecoder::create_into).
std::unique_ptr<KvCache> apply_fused(const WireStream& fused);
// Whether two caches hold the same tokens and bit-identical K/V cells.
bool same_cells(const KvCache& a, const KvCache& b);

}  // namespace kvb::fuser::fixture
