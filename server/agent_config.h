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

#include "kernels/status.h"

namespace CLI {
class App;
}

namespace kvb::server {

enum class LogFormat { kText, kJson };

struct HostPort {
  std::string host;  // "127.0.0.1", "localhost", "[::1]" (brackets kept for IPv6), "0.0.0.0"
  int port = 0;      // 0..65535 (0 = any free port, for listening only)
  std::string to_string() const { return host + ":" + std::to_string(port); }
};

// "host:port" or "[v6]:port". INVALID_ARGUMENT naming what is wrong; port 0 only when
// allow_port_zero (listen addresses). Hosts are DNS names or IP literals: [A-Za-z0-9.-_], or a
// bracketed IPv6 literal; at most 253 characters.
Result<HostPort> parse_host_port(std::string_view s, bool allow_port_zero);

// "1073741824", "64M", "64MiB", "1G", "512k" (binary multiples: k/K = 2^10, M = 2^20, G = 2^30,
// T = 2^40; an optional trailing "B"/"iB"). INVALID_ARGUMENT on anything else or on overflow.
Result<uint64_t> parse_byte_size(std::string_view s);

// The flags every kvbridge gRPC server shares (kvbridge-agent, kvbridge-fuser) are checked by these.
// --log-format: "text" or "json"; INVALID_ARGUMENT otherwise.
Result<LogFormat> parse_log_format(std::string_view s);
// --max-message-bytes: a byte size (parse_byte_size) in [64 KiB, 2^31 - 1] (gRPC's limit is an int).
Result<uint64_t> parse_message_limit(std::string_view s);
// --device: the spelling only — "cpu", "cuda" or "cuda:N" (N decimal, at most 6 digits);
// INVALID_ARGUMENT otherwise. Whether that device exists is the registry's answer at startup
// (kernels/registry.h find_device: UNAVAILABLE without a usable GPU, NOT_FOUND for another index).
Status check_device_flag(std::string_view s);

struct TlsConfig {
  std::string cert_path, key_path, client_ca_path;  // flags; empty = unset
  std::string cert_pem, key_pem, client_ca_pem;     // file contents, filled by load_agent_files
  bool enabled() const { return !cert_path.empty(); }
  bool mutual() const { return !client_ca_path.empty(); }
};

// --tls-cert and --tls-key come together; --tls-client-ca needs them. INVALID_ARGUMENT otherwise.
Status check_tls_flags(const TlsConfig& tls);
// Reads the PEM files `tls` names into its *_pem fields (nothing when TLS is off). NOT_FOUND /
// INVALID_ARGUMENT naming the flag and the path for a missing, unreadable, empty or non-PEM file.
Status load_tls_files(TlsConfig& tls);
// Reads an --auth-token-file: one word of visible ASCII, surrounding whitespace trimmed. Errors as
// load_tls_files.
Result<std::string> load_auth_token(const std::string& path);

inline constexpr uint64_t kMiB = uint64_t(1) << 20;
inline constexpr uint64_t kGiB = uint64_t(1) << 30;

struct AgentConfig {
  std::string model_path;      // --model (GGUF or llama2.c .bin)
  std::string tokenizer_path;  // --tokenizer (llama2.c tokenizer.bin)
  std::string fuser_dir;       // --fuser: a fuser directory loaded in-process (receiver mode)
  HostPort listen;             // --listen; port 0 = pick a free port (printed on stdout)
  std::string name;            // --name; empty = the bound listen address
  uint64_t max_cache_bytes = kGiB;      // --max-cache-bytes: the cache store's budget
  uint32_t cache_ttl_s = 3600;          // --cache-ttl: idle TTL of stored caches; 0 = never expire
  std::string device = "cpu";           // --device cpu|cuda|cuda:N: where the engine and --fuser run
  int32_t threads = 0;                  // --threads: CPU backend threads; 0 = all cores
  bool cuda_graphs = true;              // --no-cuda-graphs clears it: decode steps op by op
  int32_t ctx_size = 0;                 // --ctx-size: cells per session; 0 = the model's context
  int32_t max_new_tokens = 1024;        // --max-new-tokens: cap on GenerateRequest.max_tokens
  uint64_t max_request_cache_bytes = 0; // --max-request-cache-bytes; 0 = max_cache_bytes
  uint64_t max_message_bytes = 64 * kMiB;  // --max-message-bytes: gRPC limit, both directions
  TlsConfig tls;                        // --tls-cert, --tls-key, --tls-client-ca
  std::string auth_token_file;          // --auth-token-file
  std::string auth_token;               // its contents (trimmed), filled by load_agent_files
  std::optional<HostPort> metrics_listen;  // --metrics-listen: Prometheus /metrics over HTTP
  LogFormat log_format = LogFormat::kText;  // --log-format text|json

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

// Parses argv with `app` (CLI11, its options bound to the caller's variables), then runs `convert`
// over the parsed values. True when the program should run; otherwise exit_code and output say what
// to print (--help / --version: 0 and the text for stdout; a bad flag or a failed conversion: 2 and
// "error: ..." for stderr). Never throws. Shared by kvbridge-agent and kvbridge-fuser.
bool parse_flags(CLI::App& app, int argc, const char* const* argv, const std::function<Status()>& convert,
                 int& exit_code, std::string& output);

// Reads the TLS PEM files and the token file named by `cfg` into it. INVALID_ARGUMENT / NOT_FOUND
// naming the flag and the path when a file is missing, unreadable, empty or malformed (a token
// must be one line of visible ASCII, surrounding whitespace trimmed).
Status load_agent_files(AgentConfig& cfg);

}  // namespace kvb::server
