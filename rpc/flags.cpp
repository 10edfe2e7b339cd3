#include "rpc/flags.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cctype>
#include <charconv>
#include <fstream>
#include <sstream>

namespace kvb::rpc {

namespace {

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

}  // namespace kvb::rpc
