// The agent's requests as native types, protobuf-free: what request_convert.h makes of a
// GenerateRequest / PrefillRequest once every field is checked, and what the context resolution,
// the context fuser and the engine loop work from.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "agent/transfer/transfer_types.h"
#include "engine/kv_wire.h"
#include "engine/tokenizer.h"
#include "runtime/engine_loop.h"

namespace kvb::agent {

inline constexpr size_t kMaxContextRefs = 64;
inline constexpr size_t kMaxStopStrings = 16;
inline constexpr size_t kMaxStopBytes = 256;
inline constexpr size_t kMaxChatMessages = 1024;
inline constexpr int32_t kDefaultMaxTokens = 128;
inline constexpr uint32_t kMaxTopLogprobs = 20;  // GenerateRequest.top_logprobs

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


// Receiver mode's summary of the fused contexts of one request (GenerateSummary.fuse).
struct FuseReport {
  uint32_t fused_tokens = 0;   // context positions fused (0: the sharer runs this model; nothing fused)
  uint32_t slices_fused = 0;   // (layer, K/V) slices the fuser changed
  uint64_t sharer_bytes = 0;   // wire bytes pulled from the sharer
  uint64_t fuser_bytes_sent = 0, fuser_bytes_received = 0;  // remote fuser only
  double fuse_ms = 0;          // the whole receiver-mode resolution
  bool aligned = false;        // the vocabularies differ
  // Of slices_fused: fused by the embedded fuser while later sharer slices were still landing.
  uint32_t slices_fused_early = 0;
  PullTransport transport;     // how the sharer's cache travelled
};

}  // namespace kvb::agent
