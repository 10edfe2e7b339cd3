// AgentClient: the C++ client of one kvbridge agent (kvbridge.v1.AgentService over gRPC).
//
// One AgentClient owns one gRPC channel to one agent. Requests and replies are the kvbridge.v1
// protobuf messages themselves (proto/kvbridge/v1/agent.proto documents every field): the client
// adds what every call needs (credentials, the bearer token, message-size limits, an optional
// deadline), turns grpc::Status into kvb::Status with the one mapping the agent uses too
// (kvb::from_grpc_status, proto/grpc_status.h), and streams cache transfers to and from files
// (wire::SnapshotWriter/SnapshotReader, proto/wire_convert.h) or memory with progress reports.
//
//   ClientOptions opt;
//   opt.auth_token_file = "token.txt";
//   KVB_ASSIGN_OR_RETURN(auto agent, AgentClient::connect("127.0.0.1:7001", opt));
//   v1::PrefillRequest p;
//   p.set_text("Once upon a time");
//   KVB_ASSIGN_OR_RETURN(v1::PrefillResponse cache, agent->prefill(p));
//   v1::GenerateRequest g;
//   *g.add_context() = cache_ref("", cache.cache_id());  // a cache held by the agent itself
//   g.set_text(" Then");
//   KVB_ASSIGN_OR_RETURN(v1::GenerateSummary s, agent->generate(g, [](const v1::TokenEvent& t) {
//     std::fputs(t.text().c_str(), stdout);
//     return true;  // false cancels the generation
//   }));
//
// Errors are the agent's codes (agent.proto's header) unchanged, plus the transport's own:
// UNAVAILABLE when the agent cannot be reached or a TLS handshake fails, DEADLINE_EXCEEDED past
// ClientOptions::deadline, RESOURCE_EXHAUSTED for a message over max_message_bytes.
//
// Threading: every method may be called from any number of threads at once (gRPC stubs and
// channels are thread-safe); each call blocks the calling thread until it completes. Callbacks
// run on the calling thread.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "kernels/status.h"
#include "kvbridge/v1/agent.grpc.pb.h"
#include "proto/grpc_status.h"
#include "rpc/auth.h"

namespace kvb::client {

namespace v1 = ::kvbridge::v1;

struct ClientOptions {
  // TLS: on when tls_ca_file or tls_cert_file is set (or `tls` is true, for system roots).
  bool tls = false;
  std::string tls_ca_file;      // PEM roots that must have signed the agent's certificate
  std::string tls_cert_file;    // PEM client certificate chain, for mutual TLS (with tls_key_file)
  std::string tls_key_file;     // PEM private key of tls_cert_file
  std::string tls_server_name;  // overrides the name checked against the agent's certificate
  // Bearer token sent as "authorization: Bearer <token>" on every call. auth_token wins over
  // auth_token_file, which connect() reads once (surrounding whitespace trimmed).
  std::string auth_token;
  std::string auth_token_file;
  uint64_t max_message_bytes = uint64_t(64) << 20;  // gRPC limit, both directions
  // Per-call deadline; zero = none. Generate and transfers count their whole stream.
  std::chrono::milliseconds deadline{0};
  // connect() waits up to this long for the channel to become ready (TCP + TLS handshake) and
  // fails with UNAVAILABLE at the first failed attempt. Zero (the default) connects lazily: the
  // first call then fails with UNAVAILABLE and gRPC's own reason (refused, handshake failed, ...).
  std::chrono::milliseconds connect_timeout{0};

  bool tls_enabled() const { return tls || !tls_ca_file.empty() || !tls_cert_file.empty(); }
};

// Bytes of payload moved so far and the total announced by the stream's header (raw, i.e.
// uncompressed, KvHeader.total_bytes); called after the header (done = 0) and after every chunk.
using TransferProgress = std::function<void(uint64_t done_bytes, uint64_t total_bytes)>;
// Receives each exported message in order (header, data..., trailer). A non-OK Status cancels the
// export and is returned by export_cache.
using ChunkSink = std::function<Status(v1::CacheChunk&& msg)>;
// Produces the messages of an import, in order: fills `msg` and returns true, or returns false at
// the end of the stream. A non-OK Status aborts the import (the agent stores nothing).
using ChunkSource = std::function<Result<bool>(v1::CacheChunk& msg)>;
// Called with every sampled token; return false to cancel the generation.
using TokenCallback = std::function<bool(const v1::TokenEvent& token)>;

struct ExportOptions {
  v1::WireDType dtype = v1::WIRE_DTYPE_F32;
  v1::Compression compression = v1::COMPRESSION_NONE;
  uint32_t chunk_tokens = 0;  // 0 = the agent's choice (~1 MiB chunks)
  TransferProgress progress;
};

// What one cache transfer moved.
struct TransferStats {
  uint32_t n_tokens = 0;       // cells in the cache (from the header)
  uint32_t n_chunks = 0;       // data messages
  uint64_t total_bytes = 0;    // raw payload bytes (KvHeader.total_bytes)
  uint64_t payload_bytes = 0;  // payload bytes as sent (after compression)
  uint64_t message_bytes = 0;  // serialized message bytes, i.e. what crossed the wire
  double seconds = 0;          // first request byte to last message
};

struct ImportResult {
  v1::ImportCacheResponse reply;
  TransferStats stats;
};

// A channel as every kvbridge client opens one (AgentClient, FuserClient): credentials, message
// limits and the optional eager connect from `options`, plus what each call must carry.
struct ClientChannel {
  std::shared_ptr<grpc::Channel> channel;
  rpc::BearerAuth auth;  // the token every call carries (none when disabled)
  std::chrono::milliseconds deadline{0};

  // Adds the bearer token and the deadline to one call.
  void prepare(grpc::ClientContext& ctx) const;
};
// INVALID_ARGUMENT for an empty address, a bad message limit or unreadable TLS / token files (NOT_FOUND
// when missing); UNAVAILABLE when options.connect_timeout is set and `addr` is not reached in time.
Result<ClientChannel> open_channel(const std::string& addr, const ClientOptions& options);

// CacheRef{agent, cache_id}; agent "" names the agent the request goes to.
v1::CacheRef cache_ref(const std::string& agent, const std::string& cache_id);

class AgentClient {
 public:
  // Opens a channel to `addr` ("host:port"). INVALID_ARGUMENT / NOT_FOUND for unreadable TLS or
  // token files; UNAVAILABLE when options.connect_timeout is set and the agent is not reached.
  static Result<std::unique_ptr<AgentClient>> connect(const std::string& addr, const ClientOptions& options);

  const std::string& address() const { return addr_; }

  Result<v1::AgentInfo> get_info();

  // Streams the generation: on_token (may be empty) sees every token, and the final summary is
  // returned. If on_token returns false the call is cancelled and returns CANCELLED.
  Result<v1::GenerateSummary> generate(const v1::GenerateRequest& request, const TokenCallback& on_token = {});

  Result<v1::PrefillResponse> prefill(const v1::PrefillRequest& request);

  // Streams cache `cache_id` in the wire format into `sink`, message by message (no buffering
  // here). Returns what was moved; the sink's error or the agent's.
  Result<TransferStats> export_cache(const std::string& cache_id, const ExportOptions& options, const ChunkSink& sink);
  // The whole stream in memory (header, data..., trailer).
  Result<std::vector<v1::CacheChunk>> export_cache_messages(const std::string& cache_id, const ExportOptions& options,
                                                            TransferStats* stats = nullptr);
  // The stream to a snapshot file (kv_wire.proto's snapshot format), written atomically: nothing
  // appears at `path` unless the whole stream arrived.
  Result<TransferStats> save_cache(const std::string& cache_id, const std::string& path, const ExportOptions& options);

  // Sends the messages `next` produces as one ImportCache stream. progress (may be empty) is
  // called as in export, from the header's total_bytes.
  Result<ImportResult> import_cache(const ChunkSource& next, const TransferProgress& progress = {});
  Result<ImportResult> import_cache(std::span<const v1::CacheChunk> messages, const TransferProgress& progress = {});
  // Streams a snapshot file. The file's framing is checked as it is read (INVALID_ARGUMENT for a
  // bad magic, a bad length or a truncated file); its contents are checked by the agent.
  Result<ImportResult> load_cache(const std::string& path, const TransferProgress& progress = {});

  Result<v1::ListCachesResponse> list_caches();
  // The agent's tokens for `text`: raw = the bytes exactly as given (no BOS, no dummy-prefix space:
  // a continuation to score); otherwise as Generate's text input with BOS.
  Result<std::vector<int32_t>> tokenize(const std::string& text, bool raw);
  Status drop_cache(const std::string& cache_id);
  Result<v1::CacheInfo> pin_cache(const std::string& cache_id, bool pinned = true);

  ~AgentClient();

 private:
  AgentClient(std::string addr, ClientChannel channel);
  // Credentials metadata and deadline for one call.
  void prepare(grpc::ClientContext& ctx) const { channel_.prepare(ctx); }

  std::string addr_;
  ClientChannel channel_;
  std::unique_ptr<v1::AgentService::Stub> stub_;
};

}  // namespace kvb::client
