#include "agent/agent_config.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cctype>
#include <fstream>
#include <sstream>

namespace kvb::agent {

using rpc::parse_byte_size;
using rpc::parse_host_port;

namespace {

constexpr int32_t kMaxCtx = 1 << 20;
constexpr uint32_t kMaxTtlS = 365u * 24 * 3600;

// Everything the flags hold as text before conversion.
struct RawArgs {
  std::string listen, max_cache_bytes, max_request_cache_bytes, max_message_bytes, metrics_listen, prefix_cache_bytes;
  std::string log_format = "text";
  std::vector<std::string> peers;
  bool no_cuda_graphs = false;
};

Status convert(const RawArgs& raw, AgentConfig& c) {
  c.cuda_graphs = !raw.no_cuda_graphs;
  KVB_ASSIGN_OR_RETURN(c.listen, rpc::parse_host_port(raw.listen, /*allow_port_zero=*/true));
  if (!raw.max_cache_bytes.empty()) {
    KVB_ASSIGN_OR_RETURN(c.max_cache_bytes, rpc::parse_byte_size(raw.max_cache_bytes));
    if (c.max_cache_bytes == 0) return invalid_argument("--max-cache-bytes must be > 0");
  }
  if (!raw.max_request_cache_bytes.empty()) {
    KVB_ASSIGN_OR_RETURN(c.max_request_cache_bytes, rpc::parse_byte_size(raw.max_request_cache_bytes));
    if (c.max_request_cache_bytes == 0) return invalid_argument("--max-request-cache-bytes must be > 0");
    if (c.max_request_cache_bytes > c.max_cache_bytes) {
      return invalid_argument(fmt::format("--max-request-cache-bytes ({}) must not exceed --max-cache-bytes ({})",
                                          c.max_request_cache_bytes, c.max_cache_bytes));
    }
  }
  for (const std::string& p : raw.peers) {
    auto hp = rpc::parse_host_port(p, /*allow_port_zero=*/false);
    if (!hp.ok()) return hp.status().with_context("--peers");
    c.peers.push_back(hp->to_string());
  }
  if (!raw.prefix_cache_bytes.empty()) {
    KVB_ASSIGN_OR_RETURN(c.prefix_cache_bytes, rpc::parse_byte_size(raw.prefix_cache_bytes));
  }
  if (!raw.max_message_bytes.empty()) {
    KVB_ASSIGN_OR_RETURN(c.max_message_bytes, rpc::parse_message_limit(raw.max_message_bytes));
  }
  if (!raw.metrics_listen.empty()) {
    KVB_ASSIGN_OR_RETURN(rpc::HostPort m, rpc::parse_host_port(raw.metrics_listen, /*allow_port_zero=*/true));
    c.metrics_listen = std::move(m);
  }
  KVB_ASSIGN_OR_RETURN(c.log_format, rpc::parse_log_format(raw.log_format));
  KVB_RETURN_IF_ERROR(rpc::check_device_flag(c.device));
  if (c.cache_ttl_s > kMaxTtlS) return invalid_argument(fmt::format("--cache-ttl must be <= {} s", kMaxTtlS));
  if (c.threads < 0 || c.threads > 1024) return invalid_argument("--threads must be in [0, 1024]");
  if (c.ctx_size < 0 || c.ctx_size > kMaxCtx) {
    return invalid_argument(fmt::format("--ctx-size must be in [1, {}] (0 = the model's)", kMaxCtx));
  }
  if (c.max_new_tokens < 1 || c.max_new_tokens > kMaxCtx) {
    return invalid_argument(fmt::format("--max-new-tokens must be in [1, {}]", kMaxCtx));
  }
  if (c.parallel < 1 || c.parallel > 1024) return invalid_argument("--parallel must be in [1, 1024]");
  if (c.max_batch_tokens < c.parallel || c.max_batch_tokens > 65536) {
    return invalid_argument(fmt::format("--max-batch-tokens must be in [--parallel ({}), 65536]: each step holds "
                                        "a token of every decoding sequence",
                                        c.parallel));
  }
  if (c.prefill_chunk < 1 || c.prefill_chunk > 65536) return invalid_argument("--prefill-chunk must be in [1, 65536]");
  if (c.max_queue < 0 || c.max_queue > 1 << 20) return invalid_argument("--max-queue must be in [0, 1048576]");
  if (!(c.prefill_step_factor == 0 || (c.prefill_step_factor >= 1 && c.prefill_step_factor <= 100))) {
    return invalid_argument("--prefill-step-factor must be 0 (off) or in [1, 100]");
  }
  if (c.prefix_block_tokens < 1 || c.prefix_block_tokens > 65536) {
    return invalid_argument("--prefix-block-tokens must be in [1, 65536]");
  }
  return rpc::check_tls_flags(c.tls);
}

}  // namespace

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
  app.add_option("--parallel", c.parallel,
                 "Sequences (Generate and Prefill requests) computed at once, batched in each step (default 8)");
  app.add_option("--max-batch-tokens", c.max_batch_tokens,
                 "Tokens per engine step: every decoding sequence's next token, then chunks of prompts "
                 "(default 256; at least --parallel)");
  app.add_option("--prefill-chunk", c.prefill_chunk,
                 "Prompt tokens per step while other sequences are generating, at most: bounds their inter-token "
                 "latency during a long prefill (default 32)");
  app.add_option("--prefill-step-factor", c.prefill_step_factor,
                 "While sequences are generating, size each step's prompt chunk so that the step takes at most "
                 "this many times a step of theirs alone (measured); 0 = always --prefill-chunk (default 2.5)");
  app.add_option("--max-queue", c.max_queue,
                 "Requests that may wait for a free sequence; more are refused with RESOURCE_EXHAUSTED (default 64)");
  app.add_option("--peers", raw.peers,
                 "Agents this one pulls caches from (host:port, comma-separated): connected and asked for their "
                 "transports at start and kept fresh, so the first pull costs what later ones do")
      ->delimiter(',');
  app.add_option("--prefix-cache-bytes", raw.prefix_cache_bytes,
                 "Memory for automatic prefix caching: KV blocks of computed prompts, found again by a later "
                 "request that starts with the same tokens; 0 = off (default 512M)");
  app.add_option("--prefix-block-tokens", c.prefix_block_tokens,
                 "Tokens per prefix-cache block; a hit reuses whole blocks plus the matching start of one more "
                 "(default 64)");
  app.add_option("--max-request-cache-bytes", raw.max_request_cache_bytes,
                 "Largest cache one request may create or import (default: the store budget)");
  app.add_option("--max-message-bytes", raw.max_message_bytes,
                 "gRPC message size limit, both directions (default 64M)");
  app.add_option("--tls-cert", c.tls.cert_path, "Server certificate chain (PEM); enables TLS");
  app.add_option("--tls-key", c.tls.key_path, "Server private key (PEM)");
  app.add_option("--tls-client-ca", c.tls.client_ca_path,
                 "CA bundle (PEM) that client certificates must chain to; enables mutual TLS. "
                 "Also the CA this agent trusts when pulling from TLS peers");
  app.add_option("--auth-token-file", c.auth_token_file,
                 "File holding the bearer token clients must send (authorization: Bearer <token>)");
  app.add_option("--metrics-listen", raw.metrics_listen, "Prometheus /metrics HTTP address host:port");
  app.add_option("--log-format", raw.log_format, "text or json (one JSON object per line)");

  if (rpc::parse_flags(app, argc, argv, [&] { return convert(raw, c); }, out.exit_code, out.output)) {
    out.config = std::move(c);
  }
  return out;
}

Status load_agent_files(AgentConfig& cfg) {
  KVB_RETURN_IF_ERROR(rpc::load_tls_files(cfg.tls));
  if (!cfg.auth_token_file.empty()) {
    KVB_ASSIGN_OR_RETURN(cfg.auth_token, rpc::load_auth_token(cfg.auth_token_file));
  }
  return Status::Ok();
}

}  // namespace kvb::agent
