// The flags every kvbridge gRPC server shares (kvbridge-agent, kvbridge-fuser), checked by one
// piece of code: listen addresses, byte sizes, --log-format, --max-message-bytes, --device, TLS and
// the bearer-token file; and parse_flags, which runs a CLI11 app without letting an exception out.
// Nothing here throws: CLI11's exceptions stay inside flags.cpp. Threading: pure functions.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <string_view>

#include "kernels/status.h"

namespace CLI {
class App;
}

namespace kvb::rpc {

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

// Parses argv with `app` (CLI11, its options bound to the caller's variables), then runs `convert`
// over the parsed values. True when the program should run; otherwise exit_code and output say what
// to print (--help / --version: 0 and the text for stdout; a bad flag or a failed conversion: 2 and
// "error: ..." for stderr). Never throws. Shared by kvbridge-agent and kvbridge-fuser.
bool parse_flags(CLI::App& app, int argc, const char* const* argv, const std::function<Status()>& convert,
                 int& exit_code, std::string& output);

}  // namespace kvb::rpc
