#include "server/agent_config.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <fstream>
#include <sstream>

namespace kvb::server {

namespace {

constexpr int32_t kMaxCtx = 1 << 20;
constexpr uint32_t kMaxTtlS = 365u * 24 * 3600;
constexpr uint64_t kMinMessageBytes = 64 * 1024;
constexpr uint64_t kMaxMessageBytes = (uint64_t(1) << 31) - 1;  // gRPC's limit is an int

bool valid_host_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '_';
}

Status read_whole_file(const std::string& flag, const std::string& path, std::string& out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return not_found(fmt::format("{} {}: cannot open the file", flag, path));
  std::ostringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return invalid_argument(fmt::format("{} {}: read error", flag, path));
  out = ss.str();
  if (out.empty()) return invalid_argument(fmt::format("{} {}: the file is empty", flag, path));
  return Status::Ok();
}

// Everything the flags hold as text before conversion.
struct RawArgs {
  std::string listen, max_cache_bytes, max_request_cache_bytes, max_message_bytes, metrics_listen;
  std::string log_format = "text";
  bool no_cuda_graphs = false;
};

Status convert(const RawArgs& raw, AgentConfig& c) {
  c.cuda_graphs = !raw.no_cuda_graphs;
  KVB_ASSIGN_OR_RETURN(c.listen, parse_host_port(raw.listen, /*allow_port_zero=*/true));
  if (!raw.max_cache_bytes.empty()) {
    KVB_ASSIGN_OR_RETURN(c.max_cache_bytes, parse_byte_size(raw.max_cache_bytes));
    if (c.max_cache_bytes == 0) return invalid_argument("--max-cache-bytes must be > 0");
  }
  if (!raw.max_request_cache_bytes.empty()) {
    KVB_ASSIGN_OR_RETURN(c.max_request_cache_bytes, parse_byte_size(raw.max_request_cache_bytes));
    if (c.max_request_cache_bytes == 0) return invalid_argument("--max-request-cache-bytes must be > 0");
    if (c.max_request_cache_bytes > c.max_cache_bytes) {
      return invalid_argument(fmt::format("--max-request-cache-bytes ({}) must not exceed --max-cache-bytes ({})",
                                          c.max_request_cache_bytes, c.max_cache_bytes));
    }
  }
  if (!raw.max_message_bytes.empty()) {
    KVB_ASSIGN_OR_RETURN(c.max_message_bytes, parse_message_limit(raw.max_message_bytes));
  }
  if (!raw.metrics_listen.empty()) {
    KVB_ASSIGN_OR_RETURN(HostPort m, parse_host_port(raw.metrics_listen, /*allow_port_zero=*/true));
    c.metrics_listen = std::move(m);
  }
  KVB_ASSIGN_OR_RETURN(c.log_format, parse_log_format(raw.log_format));
  KVB_RETURN_IF_ERROR(check_device_flag(c.device));
  if (c.cache_ttl_s > kMaxTtlS) return invalid_argument(fmt::format("--cache-ttl must be <= {} s", kMaxTtlS));
  if (c.threads < 0 || c.threads > 1024) return invalid_argument("--threads must be in [0, 1024]");
  if (c.ctx_size < 0 || c.ctx_size > kMaxCtx) {
    return invalid_argument(fmt::format("--ctx-size must be in [1, {}] (0 = the model's)", kMaxCtx));
  }
  if (c.max_new_tokens < 1 || c.max_new_tokens > kMaxCtx) {
    return invalid_argument(fmt::format("--max-new-tokens must be in [1, {}]", kMaxCtx));
  }
  return check_tls_flags(c.tls);
}

}  // namespace

Result<LogFormat> parse_log_format(std::string_view s) {
  if (s == "text") return LogFormat::kText;
  if (s == "json") return LogFormat::kJson;
  return invalid_argument(fmt::format("--log-format must be text or json, got '{}'", s));
}

Result<uint64_t> parse_message_limit(std::string_view s) {
  KVB_ASSIGN_OR_RETURN(const uint64_t n, parse_byte_size(s));
  if (n < kMinMessageBytes || n > kMaxMessageBytes) {
    return invalid_argument(
        fmt::format("--max-message-bytes must be in [{}, {}], got {}", kMinMessageBytes, kMaxMessageBytes, n));
  }
  return n;
}

Status check_device_flag(std::string_view s) {
  if (s == "cpu" || s == "cuda") return Status::Ok();
  if (s.starts_with("cuda:")) {
    const std::string_view n = s.substr(5);
    bool digits = !n.empty() && n.size() <= 6;
    for (char ch : n) digits = digits && ch >= '0' && ch <= '9';
    if (digits) return Status::Ok();
  }
  return invalid_argument(fmt::format("--device must be cpu, cuda or cuda:N, got '{}'", s));
}

Status check_tls_flags(const TlsConfig& t) {
  if (t.cert_path.empty() != t.key_path.empty()) {
    return invalid_argument("--tls-cert and --tls-key must be given together");
  }
  if (!t.client_ca_path.empty() && t.cert_path.empty()) {
    return invalid_argument("--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key");
  }
  return Status::Ok();
}

Result<HostPort> parse_host_port(std::string_view s, bool allow_port_zero) {
  const auto bad = [&](std::string_view why) {
    return invalid_argument(fmt::format("address '{}': {} (expected host:port)", s, why));
  };
  if (s.empty()) return bad("empty");
  if (s.size() > 260) return bad("too long");
  HostPort hp;
  size_t colon = 0;
  if (s.front() == '[') {
    const size_t close = s.find(']');
    if (close == std::string_view::npos) return bad("unclosed '['");
    const std::string_view inner = s.substr(1, close - 1);
    if (inner.empty()) return bad("empty IPv6 literal");
    for (char ch : inner) {
      if (!std::isxdigit(static_cast<unsigned char>(ch)) && ch != ':' && ch != '.') return bad("bad IPv6 literal");
    }
    if (close + 1 >= s.size() || s[close + 1] != ':') return bad("missing port");
    hp.host = std::string(s.substr(0, close + 1));
    colon = close + 1;
  } else {
    colon = s.rfind(':');
    if (colon == std::string_view::npos) return bad("missing port");
    const std::string_view host = s.substr(0, colon);
    if (host.empty()) return bad("empty host");
    if (host.size() > 253) return bad("host too long");
    for (char ch : host) {
      if (!valid_host_char(ch)) return bad("bad character in host");
    }
    hp.host = std::string(host);
  }
  const std::string_view port = s.substr(colon + 1);
  if (port.empty() || port.size() > 5) return bad("bad port");
  int p = 0;
  const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), p);
  if (ec != std::errc() || end != port.data() + port.size() || p < 0 || p > 65535) return bad("bad port");
  if (p == 0 && !allow_port_zero) return bad("port 0");
  hp.port = p;
  return hp;
}

Result<uint64_t> parse_byte_size(std::string_view s) {
  const auto bad = [&] {
    return invalid_argument(fmt::format("byte size '{}': expected a number with an optional k/M/G/T suffix", s));
  };
  size_t i = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i;
  if (i == 0 || i > 20) return bad();
  uint64_t v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + i, v);
  if (ec != std::errc() || end != s.data() + i) return bad();
  std::string_view suffix = s.substr(i);
  int shift = 0;
  if (!suffix.empty()) {
    switch (suffix.front()) {
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      case 't': case 'T': shift = 40; break;
      case 'b': case 'B': shift = 0; break;
      default: return bad();
    }
    if (suffix.front() != 'b' && suffix.front() != 'B') suffix.remove_prefix(1);
    if (suffix == "iB" || suffix == "B" || suffix == "ib" || suffix == "b") suffix = {};
    if (!suffix.empty()) return bad();
  }
  if (shift > 0 && v > (~uint64_t(0) >> shift)) return bad();
  return v << shift;
}

ParsedArgs parse_agent_args(int argc, const char* const* argv) {
  ParsedArgs out;
  AgentConfig c;
  RawArgs raw;
  CLI::App app{"kvbridge-agent: one model behind gRPC, trading KV caches with other agents"};
  app.set_version_flag("--version", "kvbridge-agent 0.1.0");
  app.add_option("--model", c.model_path, "Model file (GGUF or llama2.c .bin)")->required();
  app.add_option("--tokenizer", c.tokenizer_path, "Tokenizer file for llama2.c models (tokenizer.bin)");
  app.add_option("--fuser", c.fuser_dir,
                 "Fuser directory (config.json + safetensors) to load in-process: Generate/Prefill requests "
                 "with fuser.embedded fuse other models' caches into this one without a network hop");
  app.add_option("--listen", raw.listen, "gRPC address host:port (port 0: any free port, printed on stdout)")
      ->required();
  app.add_option("--name", c.name, "Agent name reported by GetInfo (default: the bound address)");
  app.add_option("--max-cache-bytes", raw.max_cache_bytes, "Cache store budget, e.g. 1G (default 1G)");
  app.add_option("--cache-ttl", c.cache_ttl_s, "Idle TTL of stored caches in seconds; 0 = never (default 3600)");
  app.add_option("--device", c.device,
                 "Where the model (and an embedded --fuser) runs: cpu, cuda (= cuda:0) or cuda:N (default cpu)");
  app.add_option("--threads", c.threads, "CPU threads (default: all cores)");
  app.add_flag("--no-cuda-graphs", raw.no_cuda_graphs,
               "On a GPU, launch each decode step's kernels one by one instead of as one CUDA graph");
  app.add_option("--ctx-size", c.ctx_size, "Context cells per session (default: the model's context)");
  app.add_option("--max-new-tokens", c.max_new_tokens, "Cap on tokens generated per request (default 1024)");
  app.add_option("--max-request-cache-bytes", raw.max_request_cache_bytes,
                 "Largest cache one request may create or import (default: the store budget)");
  app.add_option("--max-message-bytes", raw.max_message_bytes, "gRPC message size limit, both directions (default 64M)");
  app.add_option("--tls-cert", c.tls.cert_path, "Server certificate chain (PEM); enables TLS");
  app.add_option("--tls-key", c.tls.key_path, "Server private key (PEM)");
  app.add_option("--tls-client-ca", c.tls.client_ca_path,
                 "CA bundle (PEM) that client certificates must chain to; enables mutual TLS. "
                 "Also the CA this agent trusts when pulling from TLS peers");
  app.add_option("--auth-token-file", c.auth_token_file,
                 "File holding the bearer token clients must send (authorization: Bearer <token>)");
  app.add_option("--metrics-listen", raw.metrics_listen, "Prometheus /metrics HTTP address host:port");
  app.add_option("--log-format", raw.log_format, "text or json (one JSON object per line)");

  if (parse_flags(app, argc, argv, [&] { return convert(raw, c); }, out.exit_code, out.output)) {
    out.config = std::move(c);
  }
  return out;
}

bool parse_flags(CLI::App& app, int argc, const char* const* argv, const std::function<Status()>& convert,
                 int& exit_code, std::string& output) {
  std::ostringstream sout, serr;
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 has a code per kind of error (106 for a missing flag, ...); a usage error is 2 here.
    exit_code = app.exit(e, sout, serr) == 0 ? 0 : 2;
    output = sout.str() + serr.str();
    return false;
  } catch (const std::exception& e) {
    exit_code = 2;
    output = std::string("error: ") + e.what() + "\n";
    return false;
  }
  if (const Status st = convert(); !st.ok()) {
    exit_code = 2;
    output = "error: " + st.message() + "\n";
    return false;
  }
  return true;
}

Status load_tls_files(TlsConfig& tls) {
  if (!tls.enabled()) return Status::Ok();
  const struct {
    const char* flag;
    const std::string& path;
    std::string& pem;
  } files[] = {{"--tls-cert", tls.cert_path, tls.cert_pem},
               {"--tls-key", tls.key_path, tls.key_pem},
               {"--tls-client-ca", tls.client_ca_path, tls.client_ca_pem}};
  for (const auto& f : files) {
    if (f.path.empty()) continue;  // --tls-client-ca is optional
    KVB_RETURN_IF_ERROR(read_whole_file(f.flag, f.path, f.pem));
    if (f.pem.find("-----BEGIN") == std::string::npos) {
      return invalid_argument(fmt::format("{} {}: not a PEM file", f.flag, f.path));
    }
  }
  return Status::Ok();
}

Result<std::string> load_auth_token(const std::string& path) {
  std::string token;
  KVB_RETURN_IF_ERROR(read_whole_file("--auth-token-file", path, token));
  size_t b = 0, e = token.size();
  while (b < e && std::isspace(static_cast<unsigned char>(token[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(token[e - 1]))) --e;
  token = token.substr(b, e - b);
  if (token.empty()) return invalid_argument(fmt::format("--auth-token-file {}: the token is empty", path));
  for (char ch : token) {
    if (ch <= 0x20 || ch >= 0x7f) {
      return invalid_argument(fmt::format("--auth-token-file {}: the token must be one word of visible ASCII", path));
    }
  }
  return token;
}

Status load_agent_files(AgentConfig& cfg) {
  KVB_RETURN_IF_ERROR(load_tls_files(cfg.tls));
  if (!cfg.auth_token_file.empty()) {
    KVB_ASSIGN_OR_RETURN(cfg.auth_token, load_auth_token(cfg.auth_token_file));
  }
  return Status::Ok();
}

}  // namespace kvb::server
