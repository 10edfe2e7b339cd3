// Request validation and proto ↔ native conversion for AgentService (STYLE R7).
//
// Every field of every request is checked here, before anything reaches the cache store, a peer or
// the engine: token ids against the vocab, sampling ranges, max_tokens, stop strings, cache ids
// (32 lowercase hex characters, as CacheStore issues), CacheRef agent addresses (host:port), wire
// dtype / compression enum values (proto3 enums are open: any int can arrive). Text is tokenized
// here (Tokenizer is thread-safe). The results are native structs; protobuf types stop here.
//
// Errors: INVALID_ARGUMENT naming the field; RESOURCE_EXHAUSTED when the input alone exceeds the
// context size. Threading: pure functions, reentrant.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/kv_wire.h"
#include "proto/wire_convert.h"
#include "engine/tokenizer.h"
#include "kvbridge/v1/agent.pb.h"
#include "runtime/cache_store.h"
#include "runtime/engine_loop.h"
#include "agent/transfer/pull_types.h"

namespace kvb::agent {

namespace pb = ::kvbridge::v1;

inline constexpr size_t kMaxContextRefs = 64;
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopBytes = 256;
inline constexpr size_t kMaxChatMessages = 1024;
inline constexpr int32_t kDefaultMaxTokens = 128;

// What validation needs to know about this agent.
struct RequestLimits {
  const Tokenizer* tokenizer = nullptr;  // borrowed, never null
  int32_t ctx_size = 0;                  // cells per session
  int32_t max_new_tokens = 0;            // --max-new-tokens
  // True when a CacheRef's agent string names this agent (its refs are read from the store).
  std::function<bool(std::string_view agent)> is_self;
};

struct ContextRef {
  std::string agent;  // "" = this agent; otherwise a validated host:port of a peer
  std::string cache_id;
  bool is_local() const { return agent.empty(); }
};

// Receiver mode (agent.proto FuserRef): which fuser projects a context cache from another model.
struct FuserSpec {
  std::string address;  // a FuserService; empty when embedded
  bool embedded = false;
  WireDType dtype = WireDType::kF32;  // of the slices exchanged with a remote fuser
};

// The shared part of Generate and Prefill.
struct SessionSpec {
  std::vector<ContextRef> context;
  std::vector<int32_t> tokens;  // the input, BOS included when asked
  PullOptions pull;
  std::optional<FuserSpec> fuser;  // receiver mode
  bool has_remote_context() const;
};

struct GenerateSpec {
  SessionSpec session;
  runtime::GenerateOptions options;
};

struct PrefillSpec {
  SessionSpec session;
  runtime::PrefillOptions options;
};

struct ExportSpec {
  std::string cache_id;
  WireDType dtype = WireDType::kF32;
  WireCompression compression = WireCompression::kNone;
  uint32_t chunk_tokens = 0;  // 0 = the encoder's choice (~1 MiB chunks)
  std::optional<KvLayerSet> layers;  // only these layers' K/V (a fuser's pull); checked by the encoder
};

// INVALID_ARGUMENT unless `id` is a well-formed cache id; `field` names it in the message.
Status check_cache_id(std::string_view id, std::string_view field);

Result<GenerateSpec> convert_generate(const pb::GenerateRequest& r, const RequestLimits& lim);
Result<PrefillSpec> convert_prefill(const pb::PrefillRequest& r, const RequestLimits& lim);
Result<ExportSpec> convert_export(const pb::ExportCacheRequest& r);

// ---- native → proto ----
void to_proto(const runtime::CacheInfo& c, pb::CacheInfo* out);
void to_proto(const runtime::CacheStoreStats& s, pb::StoreStats* out);
pb::StopReason to_proto(runtime::FinishReason r);

}  // namespace kvb::agent
