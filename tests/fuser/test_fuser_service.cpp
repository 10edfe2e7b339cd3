// FuserService over gRPC: an in-process FuserServer on 127.0.0.1 (a free port, bearer token on)
// driven through FuserClient, compared with the in-process FuseSession on the same inputs
// (fuse_fixture.h: stories260K → aidreams260K, synthetic fuser); and the real kvbridge-fuser binary.
#include <catch2/catch.hpp>

#include <algorithm>
#include <fstream>
#include <future>
#include <thread>

#include "client/agent_process.h"
#include "client/fuser_client.h"
#include "fuse_fixture.h"
#include "fuser/service/fuser_server.h"
#include "fuser/service/fuser_service.h"
#include "proto/wire_convert.h"
#include "support/test_support.h"

namespace kvb::fuser {
namespace {

using client::FuserClient;
using fixture::WireStream;
namespace v1 = ::kvbridge::v1;

constexpr const char* kToken = "fuser-test-token";

using fixture::must;
using fixture::must_ok;

// A FuserServer on the fixture's fuser directory, with the fixture backend's thread count (so that
// its projector arithmetic is the in-process one's, bit for bit).
std::unique_ptr<FuserServer> start_server(uint32_t max_concurrent_fuses = 4) {
  FuserServerConfig c;
  c.max_concurrent_fuses = max_concurrent_fuses;
  c.weights_dir = fixture::pair().fuser_dir;
  c.listen = {"127.0.0.1", 0};
  c.threads = fixture::pair().backend->n_threads();
  c.auth_token = kToken;
  std::unique_ptr<FuserServer> s = must(FuserServer::create(c));
  must_ok(s->start());
  return s;
}

std::unique_ptr<FuserClient> connect(const std::string& addr, const std::string& token = kToken) {
  client::ClientOptions o;
  o.auth_token = token;
  return must(FuserClient::connect(addr, o));
}

// A stream as CacheChunk messages: header, data..., trailer (optionally without the trailer).
std::vector<v1::CacheChunk> messages(const WireStream& s, bool with_trailer = true) {
  std::vector<v1::CacheChunk> out(1);
  wire::to_proto(s.header, out.back().mutable_header());
  for (const KvWireChunk& c : s.chunks) wire::to_proto(c, out.emplace_back().mutable_data());
  if (with_trailer) wire::to_proto(s.trailer, out.emplace_back().mutable_trailer());
  return out;
}

// The two streams interleaved message by message, sharer first.
std::vector<v1::FuseRequest> interleave(const std::vector<v1::CacheChunk>& sharer,
                                        const std::vector<v1::CacheChunk>& receiver) {
  std::vector<v1::FuseRequest> out;
  for (size_t i = 0; i < std::max(sharer.size(), receiver.size()); ++i) {
    if (i < sharer.size()) *out.emplace_back().mutable_sharer() = sharer[i];
    if (i < receiver.size()) *out.emplace_back().mutable_receiver() = receiver[i];
  }
  return out;
}

std::vector<v1::FuseRequest> fuse_requests(uint32_t chunk_tokens = 0) {
  return interleave(messages(fixture::sharer_stream(chunk_tokens)), messages(fixture::receiver_stream(chunk_tokens)));
}

// What the in-process session produces for the same inputs, as FuseResponse.fused messages.
std::vector<v1::CacheChunk> in_process_fused(uint32_t chunk_tokens, const FuseSessionOptions& opt) {
  const WireStream s = fixture::sharer_stream(chunk_tokens), r = fixture::receiver_stream(chunk_tokens);
  FuseSession session(*fixture::pair().fuser, opt);
  must_ok(session.add_header(FuseSession::Side::kSharer, s.header));
  must_ok(session.add_header(FuseSession::Side::kReceiver, r.header));
  for (const KvWireChunk& c : s.chunks) must_ok(session.add_chunk(FuseSession::Side::kSharer, view_of(c)));
  for (const KvWireChunk& c : r.chunks) must_ok(session.add_chunk(FuseSession::Side::kReceiver, view_of(c)));
  must_ok(session.add_trailer(FuseSession::Side::kSharer, s.trailer));
  must_ok(session.add_trailer(FuseSession::Side::kReceiver, r.trailer));
  std::vector<v1::CacheChunk> out(1);
  wire::to_proto(*session.take_header(), out.back().mutable_header());
  KvWireChunk c;
  while (session.next_chunk(c)) wire::to_proto(c, out.emplace_back().mutable_data());
  wire::to_proto(*session.take_trailer(), out.emplace_back().mutable_trailer());
  return out;
}

FuserParsedArgs parse(std::vector<const char*> args) {
  args.insert(args.begin(), "kvbridge-fuser");
  return parse_fuser_args(int(args.size()), args.data());
}

TEST_CASE("kvbridge-fuser flags parse into a validated config", "[fuser]") {
  const FuserParsedArgs ok = parse({"--weights", "/f", "--listen", "127.0.0.1:0", "--threads", "2",
                                    "--max-message-bytes", "8M", "--max-stream-bytes", "256M", "--metrics-listen",
                                    "127.0.0.1:9100", "--log-format", "json", "--auth-token-file", "/t"});
  REQUIRE(ok.config.has_value());
  const FuserServerConfig& c = *ok.config;
  CHECK(c.weights_dir == "/f");
  CHECK(c.listen.to_string() == "127.0.0.1:0");
  CHECK(c.threads == 2);
  CHECK(c.max_message_bytes == (uint64_t(8) << 20));
  CHECK(c.max_stream_bytes == (uint64_t(256) << 20));
  CHECK(c.metrics_listen->port == 9100);
  CHECK(c.log_format == rpc::LogFormat::kJson);
  CHECK(c.auth_token_file == "/t");

  CHECK(parse({"--help"}).exit_code == 0);
  for (const auto& bad : std::vector<std::vector<const char*>>{
           {"--listen", "127.0.0.1:0"},                                             // no --weights
           {"--weights", "/f"},                                                     // no --listen
           {"--weights", "/f", "--listen", "nowhere"},                              // no port
           {"--weights", "/f", "--listen", "127.0.0.1:0", "--max-message-bytes", "64K"},  // below 2 MiB
           {"--weights", "/f", "--listen", "127.0.0.1:0", "--log-format", "xml"},
           {"--weights", "/f", "--listen", "127.0.0.1:0", "--tls-cert", "c.pem"},   // no --tls-key
           {"--weights", "/f", "--listen", "127.0.0.1:0", "--max-concurrent-fuses", "0"},
       }) {
    const FuserParsedArgs r = parse(bad);
    INFO(r.output);
    CHECK_FALSE(r.config.has_value());
    CHECK(r.exit_code == 2);
  }

  FuserServerConfig missing = *ok.config;
  missing.auth_token_file = test::temp_dir() + "/no-such-token";
  CHECK(load_fuser_files(missing).code() == StatusCode::kNotFound);
  missing.weights_dir = test::temp_dir() + "/no-such-fuser";
  CHECK(FuserServer::create(missing).status().code() == StatusCode::kNotFound);
}

TEST_CASE("fuser service: GetInfo describes the loaded fuser", "[fuser][model][grpc]") {
  if (!fixture::have_models()) return;
  const fixture::FusePair& p = fixture::pair();
  const std::unique_ptr<FuserServer> server = start_server();
  const v1::FuserInfo info = must(connect(server->bound_address())->get_info());

  CHECK(info.name() == server->bound_address());
  CHECK(info.version() == kFuserVersion);
  CHECK(info.sharer().fingerprint() == p.sharer_id.fingerprint);
  CHECK(info.receiver().fingerprint() == p.receiver_id.fingerprint);
  CHECK(info.sharer().n_layer() == 5);
  CHECK(info.receiver().head_dim() == 16);
  CHECK(info.hidden_dim() == 64);
  REQUIRE(info.layers_size() == 4);
  for (int32_t t = 0; t < 4; ++t) {
    CHECK(info.layers(t).receiver_layer() == uint32_t(t));
    CHECK(info.layers(t).sharer_layer() == uint32_t(p.fuser->sharer_layer(t)));
    CHECK(info.layers(t).k_gate() == p.fuser->gate(t, false));
    CHECK(info.layers(t).v_gate() == p.fuser->gate(t, true));
  }
  CHECK(wire::from_proto(info.sharer_layers()) == p.plan.sharer);
  CHECK(wire::from_proto(info.receiver_layers()) == p.plan.receiver);
  CHECK(info.weight_bytes() == p.fuser->weight_bytes());
  CHECK_FALSE(info.backend().empty());
  // Field for field what fuser_info() builds (the summary `kvbridge fuser info DIR` prints).
  v1::FuserInfo local;
  fuser_info(*p.fuser, info.name(), info.backend(), &local);
  CHECK(local.SerializeAsString() == info.SerializeAsString());
}

TEST_CASE("fuser service: Fuse over gRPC gives the in-process session's bytes", "[fuser][model][grpc]") {
  if (!fixture::have_models()) return;
  const fixture::FusePair& p = fixture::pair();
  const std::unique_ptr<FuserServer> server = start_server();
  const uint32_t chunk_tokens = GENERATE(0u, 4u);
  const bool bf16_zstd = GENERATE(false, true);  // the output's dtype and compression (FuseStart)
  v1::FuseStart start;
  FuseSessionOptions opt;
  if (bf16_zstd) {
    start.set_dtype(v1::WIRE_DTYPE_BF16);
    start.set_compression(v1::COMPRESSION_ZSTD);
    opt.dtype = WireDType::kBF16;
    opt.compression = WireCompression::kZstd;
  }
  const client::FuseOutput out =
      must(connect(server->bound_address())->fuse_messages(start, fuse_requests(chunk_tokens)));

  const std::vector<v1::CacheChunk> want = in_process_fused(chunk_tokens, opt);
  REQUIRE(want.front().header().dtype() == (bf16_zstd ? v1::WIRE_DTYPE_BF16 : v1::WIRE_DTYPE_F32));
  REQUIRE(out.fused.size() == want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("message " << i);
    CHECK(out.fused[i].SerializeAsString() == want[i].SerializeAsString());
  }
  CHECK(out.summary.n_tokens() == uint32_t(p.n_tokens));
  CHECK(out.summary.slices_fused() == 4);
  CHECK(out.summary.bytes_received() > 0);
  CHECK(out.bytes_sent > out.summary.bytes_received());
}

TEST_CASE("fuser service: errors", "[fuser][model][grpc]") {
  if (!fixture::have_models()) return;
  const std::unique_ptr<FuserServer> server = start_server();
  const std::string addr = server->bound_address();

  SECTION("a wrong or missing token is UNAUTHENTICATED") {
    REQUIRE_CODE(connect(addr, "wrong")->get_info(), StatusCode::kUnauthenticated);
    REQUIRE_CODE(connect(addr, "")->get_info(), StatusCode::kUnauthenticated);
    REQUIRE_CODE(connect(addr, "wrong")->fuse_messages({}, fuse_requests()), StatusCode::kUnauthenticated);
  }
  SECTION("another pair is FAILED_PRECONDITION") {
    // The receiver's stream on both sides.
    const std::vector<v1::CacheChunk> r = messages(fixture::receiver_stream());
    REQUIRE_CODE(connect(addr)->fuse_messages({}, interleave(r, r)), StatusCode::kFailedPrecondition);
  }
  SECTION("a stream that ends before both trailers is INVALID_ARGUMENT") {
    const auto reqs = interleave(messages(fixture::sharer_stream()), messages(fixture::receiver_stream(), false));
    REQUIRE_CODE(connect(addr)->fuse_messages({}, reqs), StatusCode::kInvalidArgument);
    REQUIRE_CODE(connect(addr)->fuse_messages({}, {}), StatusCode::kInvalidArgument);
  }
  SECTION("an unknown output dtype is INVALID_ARGUMENT") {
    v1::FuseStart start;
    start.set_dtype(static_cast<v1::WireDType>(42));
    REQUIRE_CODE(connect(addr)->fuse_messages(start, fuse_requests()), StatusCode::kInvalidArgument);
  }
  SECTION("a caller that gives up cancels the call; the server serves on") {
    const std::vector<v1::FuseRequest> reqs = fuse_requests(4);
    size_t i = 0;
    const auto source = [&](v1::FuseRequest& msg) -> Result<bool> {
      if (i == reqs.size() / 2) return Status(StatusCode::kAborted, "the caller gave up");
      msg = reqs[i++];
      return true;
    };
    REQUIRE_CODE(connect(addr)->fuse({}, source, {}), StatusCode::kAborted);
    REQUIRE(connect(addr)->get_info().ok());
  }
}

TEST_CASE("fuser service: calls beyond max_concurrent_fuses are RESOURCE_EXHAUSTED", "[fuser][model][grpc]") {
  if (!fixture::have_models()) return;
  const std::unique_ptr<FuserServer> server = start_server(/*max_concurrent_fuses=*/1);
  const std::vector<v1::FuseRequest> reqs = fuse_requests();
  // The first call holds the only slot: it sends both headers, and once the fused header is back
  // (so its handler runs) its source waits until released.
  std::promise<void> admitted, release;
  std::shared_future<void> released = release.get_future().share();
  Result<v1::FuseSummary> first = unavailable("not run");
  std::thread holder([&] {
    size_t i = 0;
    bool told = false;
    const auto source = [&](v1::FuseRequest& msg) -> Result<bool> {
      if (i == 2) released.wait();  // reqs[0], reqs[1]: the sharer's and the receiver's headers
      if (i == reqs.size()) return false;
      msg = reqs[i++];
      return true;
    };
    const auto sink = [&](v1::CacheChunk&& msg) {
      if (msg.has_header() && !told) {
        told = true;
        admitted.set_value();
      }
      return Status::Ok();
    };
    first = connect(server->bound_address())->fuse({}, source, sink);
    if (!told) admitted.set_value();
  });
  admitted.get_future().wait();
  const Status second = connect(server->bound_address())->fuse_messages({}, reqs).status();
  release.set_value();
  holder.join();
  CHECK(second.code() == StatusCode::kResourceExhausted);
  INFO(first.status().to_string());
  CHECK(first.ok());
}

TEST_CASE("fuser service: the kvbridge-fuser binary serves GetInfo", "[fuser][model][grpc][e2e]") {
  if (!fixture::have_models()) return;
  const std::string token_file = test::temp_dir() + "/fuser_token.txt";
  std::ofstream(token_file) << kToken << "\n";
  client::AgentProcessOptions o;
  o.binary = KVB_FUSER_BIN;
  o.args = {"--weights", fixture::pair().fuser_dir, "--threads", "1", "--name", "fuser-e2e", "--auth-token-file",
            token_file};
  o.log_path = test::temp_dir() + "/kvbridge-fuser.log";
  const std::unique_ptr<client::AgentProcess> proc = must(client::AgentProcess::start(o));

  const v1::FuserInfo info = must(connect(proc->address())->get_info());
  CHECK(info.name() == "fuser-e2e");
  CHECK(info.receiver().fingerprint() == fixture::pair().receiver_id.fingerprint);
  CHECK(info.layers_size() == 4);
  REQUIRE_CODE(connect(proc->address(), "wrong")->get_info(), StatusCode::kUnauthenticated);
  CHECK(proc->stop() == 0);  // SIGTERM → graceful shutdown, exit 0
}

}  // namespace
}  // namespace kvb::fuser
