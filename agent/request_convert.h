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

#include "agent/request_types.h"
#include "kvbridge/v1/agent.pb.h"
#include "runtime/cache_store.h"
#include "runtime/engine_loop.h"

namespace kvb::agent {

namespace pb = ::kvbridge::v1;

Result<GenerateSpec> convert_generate(const pb::GenerateRequest& r, const RequestLimits& lim);
Result<PrefillSpec> convert_prefill(const pb::PrefillRequest& r, const RequestLimits& lim);

// ---- native → proto ----
void to_proto(const runtime::CacheInfo& c, pb::CacheInfo* out);
void to_proto(const runtime::CacheStoreStats& s, pb::StoreStats* out);
pb::StopReason to_proto(runtime::FinishReason r);
void to_proto(const FuseReport& r, pb::FuseStats* out);
// How the cache of one context pulled from `ref`'s agent travelled (ContextTransport).
pb::ContextTransport to_proto(const ContextRef& ref, const PullTransport& how);

}  // namespace kvb::agent
