// Agent configuration parsing, bearer-token comparison, Prometheus text, status mapping.
#include <catch2/catch.hpp>

#include <fstream>
#include <grpcpp/server_context.h>

#include "agent/agent_config.h"
#include "agent/agent_metrics.h"
#include "proto/grpc_status.h"
#include "rpc/auth.h"
#include "rpc/metrics.h"
#include "support/test_support.h"

using namespace kvb;
using namespace kvb::agent;
using namespace kvb::rpc;
using namespace kvb::runtime;

namespace {

ParsedArgs parse(std::vector<std::string> args) {
  args.insert(args.begin(), "kvbridge-agent");
  std::vector<const char*> argv;
  for (const auto& a : args) argv.push_back(a.c_str());
  return parse_agent_args(int(argv.size()), argv.data());
}

std::string write_file(const std::string& name, const std::string& contents) {
  const std::string path = test::temp_dir() + "/" + name;
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

}  // namespace

TEST_CASE("agent flags parse into a validated config", "[server][config]") {
  auto p = parse({"--model", "m.gguf", "--listen", "127.0.0.1:0", "--max-cache-bytes", "2G", "--cache-ttl", "60",
                  "--threads", "2", "--ctx-size", "256", "--max-new-tokens", "64", "--max-request-cache-bytes",
                  "512MiB", "--max-message-bytes", "8M", "--metrics-listen", "[::1]:9100", "--log-format", "json",
                  "--name", "agent-a", "--no-cuda-graphs", "--peers", "10.0.0.2:7001,sharer:7002",
                  "--prefix-cache-bytes", "64M", "--prefix-block-tokens", "32"});
  REQUIRE(p.config);
  const AgentConfig& c = *p.config;
  CHECK(c.model_path == "m.gguf");
  CHECK(c.listen.host == "127.0.0.1");
  CHECK(c.listen.port == 0);
  CHECK(c.max_cache_bytes == 2 * kGiB);
  CHECK(c.request_cache_limit() == 512 * kMiB);
  CHECK(c.max_message_bytes == 8 * kMiB);
  CHECK(c.cache_ttl_s == 60);
  CHECK(c.threads == 2);
  CHECK(c.ctx_size == 256);
  CHECK(c.max_new_tokens == 64);
  REQUIRE(c.metrics_listen);
  CHECK(c.metrics_listen->host == "[::1]");
  CHECK(c.metrics_listen->port == 9100);
  CHECK(c.log_format == LogFormat::kJson);
  CHECK(c.name == "agent-a");
  CHECK_FALSE(c.cuda_graphs);
  CHECK(c.peers == std::vector<std::string>{"10.0.0.2:7001", "sharer:7002"});
  CHECK(c.prefix_cache_bytes == 64 * kMiB);
  CHECK(c.prefix_block_tokens == 32);

  auto d = parse({"--model", "m", "--listen", "0.0.0.0:7001"});
  REQUIRE(d.config);
  CHECK(d.config->request_cache_limit() == d.config->max_cache_bytes);
  CHECK(d.config->max_message_bytes == 64 * kMiB);
  CHECK(d.config->log_format == LogFormat::kText);
  CHECK(d.config->cuda_graphs);
  CHECK(d.config->peers.empty());
  CHECK(d.config->prefix_cache_bytes == 512 * kMiB);
  CHECK(d.config->prefix_block_tokens == 64);
}

TEST_CASE("bad agent flags are refused at startup with a message", "[server][config]") {
  const std::vector<std::vector<std::string>> bad = {
      {"--listen", "127.0.0.1:1"},                                       // no --model
      {"--model", "m"},                                                  // no --listen
      {"--model", "m", "--listen", "localhost"},                         // no port
      {"--model", "m", "--listen", "h:70000"},                           // bad port
      {"--model", "m", "--listen", "h:1", "--max-cache-bytes", "12X"},   // bad size
      {"--model", "m", "--listen", "h:1", "--max-cache-bytes", "0"},
      {"--model", "m", "--listen", "h:1", "--max-message-bytes", "1k"},  // below the minimum
      {"--model", "m", "--listen", "h:1", "--max-request-cache-bytes", "2G", "--max-cache-bytes", "1G"},
      {"--model", "m", "--listen", "h:1", "--ctx-size", "-1"},
      {"--model", "m", "--listen", "h:1", "--max-new-tokens", "0"},
      {"--model", "m", "--listen", "h:1", "--threads", "-2"},
      {"--model", "m", "--listen", "h:1", "--tls-cert", "c.pem"},        // cert without key
      {"--model", "m", "--listen", "h:1", "--tls-client-ca", "ca.pem"},  // mTLS without cert
      {"--model", "m", "--listen", "h:1", "--log-format", "xml"},
      {"--model", "m", "--listen", "h:1", "--bogus"},
      {"--model", "m", "--listen", "h:1", "--peers", "sharer"},          // no port
      {"--model", "m", "--listen", "h:1", "--peers", "a:1,b:0"},          // port 0 is not a peer
      {"--model", "m", "--listen", "h:1", "--prefix-block-tokens", "0"},
      {"--model", "m", "--listen", "h:1", "--prefix-cache-bytes", "lots"},
  };
  for (const auto& args : bad) {
    INFO(args.back());
    auto p = parse(args);
    CHECK_FALSE(p.config);
    CHECK(p.exit_code != 0);
    CHECK_FALSE(p.output.empty());
  }
  auto help = parse({"--help"});
  CHECK_FALSE(help.config);
  CHECK(help.exit_code == 0);
  CHECK(help.output.find("--max-cache-bytes") != std::string::npos);
}

TEST_CASE("address and byte-size parsing", "[server][config]") {
  CHECK(parse_host_port("example.org:443", false).ok());
  CHECK(parse_host_port("[::1]:5", false)->host == "[::1]");
  CHECK_FALSE(parse_host_port("h:0", false).ok());
  CHECK(parse_host_port("h:0", true).ok());
  CHECK_FALSE(parse_host_port(":80", false).ok());
  CHECK_FALSE(parse_host_port("a b:80", false).ok());
  CHECK_FALSE(parse_host_port("[zz]:80", false).ok());
  CHECK_FALSE(parse_host_port("h:80x", false).ok());
  CHECK(*parse_byte_size("123") == 123);
  CHECK(*parse_byte_size("4k") == 4096);
  CHECK(*parse_byte_size("3MiB") == 3 * kMiB);
  CHECK(*parse_byte_size("1T") == uint64_t(1) << 40);
  CHECK(*parse_byte_size("7B") == 7);
  CHECK_FALSE(parse_byte_size("").ok());
  CHECK_FALSE(parse_byte_size("M").ok());
  CHECK_FALSE(parse_byte_size("-1").ok());
  CHECK_FALSE(parse_byte_size("99999999999999999999T").ok());
}

TEST_CASE("config files are read at startup; missing or bad ones are errors", "[server][config]") {
  AgentConfig c;
  c.auth_token_file = write_file("token", "  s3cret-token\n");
  REQUIRE(load_agent_files(c).ok());
  CHECK(c.auth_token == "s3cret-token");

  c.auth_token_file = write_file("token2", "two words\n");
  CHECK(load_agent_files(c).code() == StatusCode::kInvalidArgument);
  c.auth_token_file = write_file("token3", "\n\n");
  CHECK(load_agent_files(c).code() == StatusCode::kInvalidArgument);
  c.auth_token_file = test::temp_dir() + "/missing";
  CHECK(load_agent_files(c).code() == StatusCode::kNotFound);

  AgentConfig t;
  t.tls.cert_path = write_file("cert.pem", "not a pem");
  t.tls.key_path = write_file("key.pem", "-----BEGIN PRIVATE KEY-----\n");
  CHECK(load_agent_files(t).code() == StatusCode::kInvalidArgument);
  t.tls.cert_path = test::temp_dir() + "/nope.pem";
  CHECK(load_agent_files(t).code() == StatusCode::kNotFound);
}

TEST_CASE("bearer tokens compare in constant time and exactly", "[server][auth]") {
  CHECK(constant_time_equals("Bearer abc", "Bearer abc"));
  CHECK_FALSE(constant_time_equals("Bearer abc", "Bearer abd"));
  CHECK_FALSE(constant_time_equals("Bearer abc", "Bearer abcd"));
  CHECK_FALSE(constant_time_equals("", "x"));
  CHECK(constant_time_equals("", ""));
  BearerAuth off;
  CHECK_FALSE(off.enabled());
  BearerAuth on("tok");
  CHECK(on.enabled());
}

TEST_CASE("status codes map one to one onto gRPC", "[server][status]") {
  for (int c = 0; c <= 16; ++c) {
    const Status s(static_cast<StatusCode>(c), "m");
    const grpc::Status g = to_grpc_status(s);
    CHECK(int(g.error_code()) == c);
    CHECK(from_grpc_status(g).code() == static_cast<StatusCode>(c));
    if (c != 0) CHECK(g.error_message() == "m");
  }
}

TEST_CASE("Prometheus exposition: HELP/TYPE, cumulative buckets, sum and count", "[server][metrics]") {
  Metrics m;
  m.record_request("Generate", StatusCode::kOk, 0.003);
  m.record_request("Generate", StatusCode::kOk, 0.2);
  m.record_request("Generate", StatusCode::kInvalidArgument, 0.0001);
  m.observe_time_to_first_token(0.004);
  m.add_bytes_sent(100);
  m.add_bytes_received(7);
  m.record_pull("auto", "grpc");
  m.record_pull("nccl", "grpc");
  m.record_pull("auto", "grpc");
  CacheStoreStats st;
  st.bytes_used = 4096;
  st.n_caches = 2;
  st.hits = 5;
  st.misses = 1;
  st.evictions = 3;
  m.record_step({3, 40, 2, 0.02});
  m.record_step({1, 1, 1, 0.004});
  runtime::EngineLoad load;
  load.parallel = 8;
  load.active = 3;
  load.queued = 5;
  load.prefix.query_tokens = 1100;
  load.prefix.hit_tokens = 1024;
  load.prefix.blocks_used = 16;
  load.prefix.blocks_total = 20;
  load.prefix.blocks_in_use = 4;
  load.prefix.evictions = 2;
  const std::string text = m.render(st, load);
  const auto has = [&](const std::string& line) {
    INFO(line);
    CHECK(text.find(line + "\n") != std::string::npos);
  };
  has("# TYPE kvbridge_requests_total counter");
  has("kvbridge_requests_total{method=\"Generate\",code=\"OK\"} 2");
  has("kvbridge_requests_total{method=\"Generate\",code=\"INVALID_ARGUMENT\"} 1");
  has("# TYPE kvbridge_request_duration_seconds histogram");
  has("kvbridge_request_duration_seconds_bucket{method=\"Generate\",le=\"0.001\"} 1");
  has("kvbridge_request_duration_seconds_bucket{method=\"Generate\",le=\"0.005\"} 2");
  has("kvbridge_request_duration_seconds_bucket{method=\"Generate\",le=\"0.25\"} 3");
  has("kvbridge_request_duration_seconds_bucket{method=\"Generate\",le=\"+Inf\"} 3");
  has("kvbridge_request_duration_seconds_count{method=\"Generate\"} 3");
  has("kvbridge_time_to_first_token_seconds_bucket{le=\"0.0025\"} 0");
  has("kvbridge_time_to_first_token_seconds_bucket{le=\"0.005\"} 1");
  has("kvbridge_time_to_first_token_seconds_count 1");
  has("kvbridge_time_per_output_token_seconds_count 0");
  has("kvbridge_transport_bytes_sent_total{transport=\"grpc\"} 100");
  has("kvbridge_transport_bytes_received_total{transport=\"grpc\"} 7");
  has("# TYPE kvbridge_context_pulls_total counter");
  has("kvbridge_context_pulls_total{requested=\"auto\",used=\"grpc\"} 2");
  has("# TYPE kvbridge_engine_step_sequences histogram");
  has("kvbridge_engine_step_sequences_bucket{le=\"1\"} 1");
  has("kvbridge_engine_step_sequences_bucket{le=\"4\"} 2");
  has("kvbridge_engine_step_tokens_bucket{le=\"32\"} 1");
  has("kvbridge_engine_step_tokens_bucket{le=\"64\"} 2");
  has("kvbridge_engine_decode_tokens_total 3");
  has("kvbridge_engine_prompt_tokens_total 38");
  has("kvbridge_engine_active_sequences 3");
  has("kvbridge_engine_queued_requests 5");
  has("kvbridge_engine_parallel 8");
  has("# TYPE kvbridge_prefix_cache_hit_tokens_total counter");
  has("kvbridge_prefix_cache_hit_tokens_total 1024");
  has("kvbridge_prefix_cache_query_tokens_total 1100");
  has("kvbridge_prefix_cache_evictions_total 2");
  has("# TYPE kvbridge_kv_blocks_used gauge");
  has("kvbridge_kv_blocks_used 16");
  has("kvbridge_kv_blocks_free 4");
  has("kvbridge_kv_blocks_in_use 4");
  has("kvbridge_context_pulls_total{requested=\"nccl\",used=\"grpc\"} 1");
  has("# TYPE kvbridge_cache_store_bytes gauge");
  has("kvbridge_cache_store_bytes 4096");
  has("kvbridge_cache_store_entries 2");
  has("kvbridge_cache_hits_total 5");
  has("kvbridge_cache_misses_total 1");
  has("kvbridge_cache_evictions_total 3");
  CHECK(text.find("_sum{method=\"Generate\"} 0.2031") != std::string::npos);
  CHECK(escape_label_value("a\"b\\c\nd") == "a\\\"b\\\\c\\nd");
}
