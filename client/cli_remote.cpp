#include "client/cli_remote.h"

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "engine/chat_template.h"
#include "engine/kv_wire.h"
#include "proto/wire_convert.h"

namespace kvb::cli {

namespace v1 = client::v1;

void add_remote_flags(CLI::App* cmd, RemoteFlags& f) {
  cmd->add_option("--tls-ca", f.tls_ca, "PEM CA that signed the agent's certificate (turns TLS on)");
  auto* cert = cmd->add_option("--tls-cert", f.tls_cert, "PEM client certificate, for mutual TLS");
  auto* key = cmd->add_option("--tls-key", f.tls_key, "PEM key of --tls-cert");
  cert->needs(key);
  key->needs(cert);
  cmd->add_option("--auth-token-file", f.auth_token_file, "File holding the agent's bearer token");
  cmd->add_option("--timeout", f.timeout_s, "Deadline per call in seconds (0 = none)")->check(CLI::Range(0.0, 1e6));
}

client::ClientOptions client_options(const RemoteFlags& f) {
  client::ClientOptions o;
  o.tls_ca_file = f.tls_ca;
  o.tls_cert_file = f.tls_cert;
  o.tls_key_file = f.tls_key;
  o.auth_token_file = f.auth_token_file;
  o.deadline = std::chrono::milliseconds(int64_t(f.timeout_s * 1e3));
  return o;
}

std::unique_ptr<client::AgentClient> connect_or_exit(const std::string& addr, const RemoteFlags& f) {
  auto c = client::AgentClient::connect(addr, client_options(f));
  exit_on_error(c.status());
  return std::move(c).value();
}

namespace {
// kWireDTypes by name, for --wire's check.
std::vector<std::string> wire_dtype_names() {
  std::vector<std::string> names;
  for (const WireDType t : kWireDTypes) names.emplace_back(wire_dtype_name(t));
  return names;
}
}  // namespace

v1::WireDType WireFlags::dtype() const {
  const Result<WireDType> t = parse_wire_dtype(wire);  // --wire is checked against the names
  return wire::to_proto(t.ok() ? *t : WireDType::kF32);
}

v1::Compression WireFlags::compression() const { return zstd ? v1::COMPRESSION_ZSTD : v1::COMPRESSION_NONE; }

void add_wire_flags(CLI::App* cmd, WireFlags& f, const std::string& what) {
  cmd->add_option("--wire", f.wire, "Wire dtype of " + what + " (int8: one scale per token and head)")
      ->check(CLI::IsMember(wire_dtype_names()))
      ->capture_default_str();
  cmd->add_flag("--zstd", f.zstd, "Compress " + what + " chunks with zstd");
}

void PullFlags::apply(v1::PullOptions* out) const {
  out->set_dtype(wire.dtype());
  out->set_compression(wire.compression());
  out->set_transport(transport);
}

void add_pull_flags(CLI::App* cmd, PullFlags& f, const std::string& what) {
  add_wire_flags(cmd, f.wire, what);
  add_transport_flag(cmd, f.transport, what);
}

void add_transport_flag(CLI::App* cmd, std::string& transport, const std::string& what) {
  cmd->add_option("--transport", transport,
                  "How the agent pulls " + what + ": auto picks the fastest both agents support, falling back to "
                  "grpc; an explicit choice the pair cannot use falls back to grpc with the reason")
      ->check(CLI::IsMember({"auto", "grpc", "nccl", "cuda-ipc"}))
      ->capture_default_str();
}

void SamplingFlags::apply(v1::GenerateRequest& req) const {
  req.set_max_tokens(uint32_t(n));
  v1::SamplingParams* s = req.mutable_sampling();
  s->set_temperature(temp);
  s->set_top_k(top_k);
  s->set_top_p(top_p);
  s->set_seed(seed);
  for (const std::string& x : stop) req.add_stop(x);
  req.set_ignore_eos(ignore_eos);
}

void set_chat_input(const ChatFlags& f, v1::ChatInput* out) {
  auto json = read_input_file(f.messages);
  exit_on_error(json.status());
  auto messages = parse_chat_messages(*json);
  exit_on_error(messages.status());
  for (const ChatMessage& m : *messages) {
    v1::ChatMessage* pm = out->add_messages();
    pm->set_role(m.role);
    pm->set_content(m.content);
  }
  out->set_template_name(f.template_name);
  out->set_no_generation_prompt(f.no_generation_prompt);
  if (f.no_thinking) out->set_enable_thinking(false);
}

void add_sampling_flags(CLI::App* cmd, SamplingFlags& f) {
  cmd->add_option("-n,--n-predict", f.n, "Tokens to generate")->check(CLI::Range(1, 1 << 20))->capture_default_str();
  cmd->add_option("--temp", f.temp, "Sampling temperature (0 = greedy)")->check(CLI::Range(0.0f, 100.0f));
  cmd->add_option("--top-k", f.top_k, "Top-k (0 = off)")->check(CLI::Range(0, 1 << 22));
  cmd->add_option("--top-p", f.top_p, "Top-p nucleus mass")->check(CLI::Range(0.0f, 1.0f));
  cmd->add_option("--seed", f.seed, "RNG seed");
  cmd->add_option("--stop", f.stop, "Stop when the output contains this text (repeatable)")->allow_extra_args(false);
  cmd->add_flag("--ignore-eos", f.ignore_eos, "Keep generating past the end-of-sequence token");
}

v1::CacheRef parse_cache_ref(const std::string& s) {
  const size_t slash = s.rfind('/');
  const std::string agent = slash == std::string::npos ? std::string() : s.substr(0, slash);
  const std::string id = slash == std::string::npos ? s : s.substr(slash + 1);
  if (id.empty()) throw CLI::ValidationError("--context", "expected AGENT/ID (host:port/cache-id), got '" + s + "'");
  return client::cache_ref(agent, id);
}

std::string human_bytes(uint64_t n) {
  if (n >= (uint64_t(1) << 30)) return fmt::format("{:.2f} GiB", double(n) / double(uint64_t(1) << 30));
  if (n >= (uint64_t(1) << 20)) return fmt::format("{:.1f} MiB", double(n) / double(uint64_t(1) << 20));
  if (n >= 1024) return fmt::format("{:.1f} KiB", double(n) / 1024.0);
  return fmt::format("{} B", n);
}

client::TransferProgress progress_reporter(const std::string& what) {
  if (!::isatty(STDERR_FILENO)) return {};
  return [what, last = -1](uint64_t done, uint64_t total) mutable {
    if (total < 1'000'000) return;
    const int percent = int(100 * done / total);
    if (percent == last) return;  // one update per percent
    last = percent;
    std::fprintf(stderr, "\r%s %s / %s (%3d%%)", what.c_str(), human_bytes(done).c_str(), human_bytes(total).c_str(),
                 percent);
    if (done >= total) std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
  };
}

void print_transfer_summary(const std::string& what, const client::TransferStats& st) {
  const double gbs = st.seconds > 0 ? double(st.message_bytes) / st.seconds / 1e9 : 0.0;
  std::fprintf(stderr, "%s %u tokens, %s on the wire (%s raw) in %.1f ms (%.2f GB/s)\n", what.c_str(), st.n_tokens,
               human_bytes(st.message_bytes).c_str(), human_bytes(st.total_bytes).c_str(), st.seconds * 1e3, gbs);
}

namespace {

const char* stop_reason_name(v1::StopReason r) {
  switch (r) {
    case v1::STOP_REASON_EOS:
      return "eos";
    case v1::STOP_REASON_MAX_TOKENS:
      return "max_tokens";
    case v1::STOP_REASON_STOP_STRING:
      return "stop_string";
    case v1::STOP_REASON_CONTEXT_FULL:
      return "context_full";
    default:
      return "unspecified";
  }
}

}  // namespace

void print_context_transports(const google::protobuf::RepeatedPtrField<v1::ContextTransport>& ts) {
  for (const v1::ContextTransport& t : ts) {
    std::fprintf(stderr, "context %s/%s: %s (%s)\n", t.agent().c_str(), t.cache_id().c_str(), t.used().c_str(),
                 t.reason().c_str());
  }
}

void print_summary(const v1::GenerateSummary& s) {
  print_context_transports(s.context_transports());
  std::fprintf(stderr,
               "stop=%s context_tokens=%u prompt_tokens=%u cached_tokens=%u generated_tokens=%u ttft_ms=%.2f "
               "decode_ms=%.2f pulled_bytes=%llu%s%s\n",
               stop_reason_name(s.stop_reason()), s.context_tokens(), s.prompt_tokens(), s.cached_tokens(),
               s.generated_tokens(),
               s.time_to_first_token_ms(), s.decode_ms(), static_cast<unsigned long long>(s.context_bytes_pulled()),
               s.cache_id().empty() ? "" : " cache_id=", s.cache_id().c_str());
}

v1::GenerateSummary stream_generate(client::AgentClient& agent, const v1::GenerateRequest& req, bool summary,
                                    const std::function<void(const v1::TokenEvent&)>& each) {
  auto r = agent.generate(req, [&](const v1::TokenEvent& t) {
    std::fwrite(t.text().data(), 1, t.text().size(), stdout);
    std::fflush(stdout);
    if (each) each(t);
    return true;
  });
  if (r.ok()) std::fwrite(r->tail_text().data(), 1, r->tail_text().size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
  exit_on_error(r.status());
  if (summary) print_summary(*r);
  return std::move(r).value();
}

}  // namespace kvb::cli
