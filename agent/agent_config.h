// AgentConfig: every kvbridge-agent flag as a validated native struct.
//
// parse_agent_args() turns argv into an AgentConfig and checks each value on its own (ranges,
// address syntax, flag combinations); load_agent_files() then reads the files the flags name (TLS
// PEMs, the bearer token) so that a missing or unreadable file stops the agent at startup, never
// on the first request. Nothing here throws: CLI11's exceptions stay inside agent_config.cpp.
// Limits that depend on the model (ctx-size against the model's training context) are checked by
// AgentServer::create once the model is loaded.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kernels/status.h"
#include "rpc/flags.h"

namespace kvb::agent {

struct AgentConfig {
  std::string model_path;      // --model (GGUF or llama2.c .bin)
  std::string tokenizer_path;  // --tokenizer (llama2.c tokenizer.bin)
  std::string fuser_dir;       // --fuser: a fuser directory loaded in-process (receiver mode)
  rpc::HostPort listen;             // --listen; port 0 = pick a free port (printed on stdout)
  std::string name;            // --name; empty = the bound listen address
  uint64_t max_cache_bytes = rpc::kGiB;      // --max-cache-bytes: the cache store's budget
  uint32_t cache_ttl_s = 3600;          // --cache-ttl: idle TTL of stored caches; 0 = never expire
  std::string device = "cpu";           // --device cpu|cuda|cuda:N: where the engine and --fuser run
  int32_t threads = 0;                  // --threads: CPU backend threads; 0 = all cores
  bool cuda_graphs = true;              // --no-cuda-graphs clears it: decode steps op by op
  int32_t ctx_size = 0;                 // --ctx-size: cells per session; 0 = the model's context
  int32_t max_new_tokens = 1024;        // --max-new-tokens: cap on GenerateRequest.max_tokens
  int32_t parallel = 8;                 // --parallel: sequences computed at once (continuous batching)
  int32_t max_batch_tokens = 256;       // --max-batch-tokens: tokens per engine step (chunked prefill)
  int32_t prefill_chunk = 32;           // --prefill-chunk: prompt tokens per step beside decoding ones (at most)
  double prefill_step_factor = 2.5;     // --prefill-step-factor: such a step <= this x a decode step; 0 = off
  int32_t max_queue = 64;               // --max-queue: requests waiting for a sequence slot
  uint64_t prefix_cache_bytes = 512 * rpc::kMiB;  // --prefix-cache-bytes: automatic prefix caching; 0 = off
  int32_t prefix_block_tokens = 64;     // --prefix-block-tokens: tokens per prefix-cache block
  std::vector<std::string> peers;       // --peers: agents this one pulls from, connected at start (host:port)
  uint64_t max_request_cache_bytes = 0; // --max-request-cache-bytes; 0 = max_cache_bytes
  uint64_t max_message_bytes = 64 * rpc::kMiB;  // --max-message-bytes: gRPC limit, both directions
  rpc::TlsConfig tls;                        // --tls-cert, --tls-key, --tls-client-ca
  std::string auth_token_file;          // --auth-token-file
  std::string auth_token;               // its contents (trimmed), filled by load_agent_files
  std::optional<rpc::HostPort> metrics_listen;  // --metrics-listen: Prometheus /metrics over HTTP
  rpc::LogFormat log_format = rpc::LogFormat::kText;  // --log-format text|json

  // The request-cache limit after defaults (never above the store budget).
  uint64_t request_cache_limit() const {
    return max_request_cache_bytes == 0 ? max_cache_bytes : max_request_cache_bytes;
  }
};

// Outcome of argument parsing: either a config to run with, or an exit code and a text to print
// (--help / --version → code 0 and the text for stdout; a bad flag → code 2 and the message for
// stderr).
struct ParsedArgs {
  std::optional<AgentConfig> config;
  int exit_code = 0;
  std::string output;
};

ParsedArgs parse_agent_args(int argc, const char* const* argv);

// Reads the TLS PEM files and the token file named by `cfg` into it. INVALID_ARGUMENT / NOT_FOUND
// naming the flag and the path when a file is missing, unreadable, empty or malformed (a token
// must be one line of visible ASCII, surrounding whitespace trimmed).
Status load_agent_files(AgentConfig& cfg);

}  // namespace kvb::agent
