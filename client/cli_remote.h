// Pieces shared by the CLI subcommands that talk to agents (generate --agent, prefill, pass,
// caches, cache save|load|drop|pin, info --agent): connection flags, wire flags, context
// references, transfer progress and the generation summary line.
//
// Everything here runs inside a CLI callback: errors end the command through exit_on_error
// (client/commands.h), never by returning.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "client/agent_client.h"
#include "client/commands.h"

namespace kvb::cli {

// --tls-ca, --tls-cert, --tls-key, --auth-token-file, --timeout.
struct RemoteFlags {
  std::string tls_ca, tls_cert, tls_key, auth_token_file;
  double timeout_s = 0;  // per call; 0 = none
};
void add_remote_flags(CLI::App* cmd, RemoteFlags& flags);
// The connection options those flags stand for (agents and fusers alike).
client::ClientOptions client_options(const RemoteFlags& flags);
// Connects (lazily: the first call reports an unreachable agent) or exits with the error.
std::unique_ptr<client::AgentClient> connect_or_exit(const std::string& addr, const RemoteFlags& flags);

// --wire f32|f16|bf16|int8 and --zstd: how a cache travels.
struct WireFlags {
  std::string wire = "f32";
  bool zstd = false;
  client::v1::WireDType dtype() const;
  client::v1::Compression compression() const;
};
void add_wire_flags(CLI::App* cmd, WireFlags& flags, const std::string& what);

// The wire flags and --transport auto|grpc|nccl|cuda-ipc: how an agent pulls context caches.
struct PullFlags {
  WireFlags wire;
  std::string transport = "auto";
  void apply(client::v1::PullOptions* out) const;
};
void add_pull_flags(CLI::App* cmd, PullFlags& flags, const std::string& what);
// --transport alone (default "auto").
void add_transport_flag(CLI::App* cmd, std::string& transport, const std::string& what);

// Sampling and stop flags of a remote Generate: -n, --temp, --top-k, --top-p, --seed, --stop,
// --ignore-eos.
struct SamplingFlags {
  int32_t n = 128;
  float temp = 0, top_p = 1;
  int32_t top_k = 0;
  uint64_t seed = 0;
  std::vector<std::string> stop;
  bool ignore_eos = false;
  void apply(client::v1::GenerateRequest& req) const;
};
void add_sampling_flags(CLI::App* cmd, SamplingFlags& flags);

// The request's chat input from --messages and the other chat flags (exits on a bad file).
void set_chat_input(const ChatFlags& flags, client::v1::ChatInput* out);

// "AGENT/ID" → CacheRef (AGENT may be empty: "/ID" or "ID" name the called agent's cache).
// Exits with a usage error for an empty id.
client::v1::CacheRef parse_cache_ref(const std::string& s);

// Progress on stderr for `what` ("export", "import"): a live line when stderr is a terminal and
// the transfer exceeds ~1 MB, nothing otherwise (the command prints a final summary line).
client::TransferProgress progress_reporter(const std::string& what);
// "1.5 MiB"
std::string human_bytes(uint64_t n);
// One line on stderr: "<what> 312 tokens, 390.0 KiB in 3.1 ms (0.12 GB/s)".
void print_transfer_summary(const std::string& what, const client::TransferStats& st);

// Runs a Generate, printing each token's text to stdout as it arrives (and handing its event to
// `each`, when given), then the tail text, a newline and, with `summary`, the summary line
// (print_summary) on stderr. Exits on error.
client::v1::GenerateSummary stream_generate(client::AgentClient& agent, const client::v1::GenerateRequest& req,
                                            bool summary = true,
                                            const std::function<void(const client::v1::TokenEvent&)>& each = {});
// "stop=max_tokens context_tokens=300 prompt_tokens=5 generated_tokens=32 ttft_ms=1.90
//  decode_ms=10.20 pulled_bytes=384000" on stderr: key=value, for people and for scripts.
void print_summary(const client::v1::GenerateSummary& s);
// One stderr line per context cache pulled from another agent: how it travelled and why.
void print_context_transports(const google::protobuf::RepeatedPtrField<client::v1::ContextTransport>& ts);

// `kvbridge info --agent ADDR` (client/cmd_agent_info.cpp).
void print_agent_info(const std::string& addr, const RemoteFlags& remote);

}  // namespace kvb::cli
