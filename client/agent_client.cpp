#include "client/agent_client.h"

#include <fmt/format.h>
#include <grpcpp/grpcpp.h>

#include <cctype>
#include <fstream>
#include <optional>
#include <sstream>

#include "proto/wire_convert.h"
#include "rpc/channel.h"
#include "rpc/parsed_stream.h"

namespace kvb::client {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

Result<std::string> read_text_file(const char* flag, const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return not_found(fmt::format("{} {}: cannot open", flag, path));
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) return invalid_argument(fmt::format("{} {}: read error", flag, path));
  return ss.str();
}

Result<std::string> read_token(const ClientOptions& o) {
  if (!o.auth_token.empty() || o.auth_token_file.empty()) return o.auth_token;
  KVB_ASSIGN_OR_RETURN(std::string t, read_text_file("auth token file", o.auth_token_file));
  size_t b = 0, e = t.size();
  while (b < e && std::isspace(static_cast<unsigned char>(t[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(t[e - 1]))) --e;
  if (b == e) return invalid_argument(fmt::format("auth token file {}: empty", o.auth_token_file));
  return t.substr(b, e - b);
}

// The channel settings `o` asks for, with the PEM files read.
Result<rpc::ChannelConfig> channel_config(const ClientOptions& o) {
  rpc::ChannelConfig c;
  c.max_message_bytes = o.max_message_bytes;
  c.server_name = o.tls_server_name;
  c.tls = o.tls_enabled();
  if (!c.tls) return c;
  if (o.tls_cert_file.empty() != o.tls_key_file.empty()) {
    return invalid_argument("mutual TLS needs both a client certificate and its key");
  }
  if (!o.tls_ca_file.empty()) {
    KVB_ASSIGN_OR_RETURN(c.root_pem, read_text_file("TLS CA file", o.tls_ca_file));
  }
  if (!o.tls_cert_file.empty()) {
    KVB_ASSIGN_OR_RETURN(c.cert_pem, read_text_file("TLS certificate file", o.tls_cert_file));
    KVB_ASSIGN_OR_RETURN(c.key_pem, read_text_file("TLS key file", o.tls_key_file));
  }
  return c;
}

// Waits until the channel is READY; fails at the first TRANSIENT_FAILURE (refused connection,
// failed handshake) instead of retrying until the deadline.
Status wait_ready(grpc::Channel& ch, const std::string& addr, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::system_clock::now() + timeout;
  grpc_connectivity_state s = ch.GetState(/*try_to_connect=*/true);
  while (s != GRPC_CHANNEL_READY) {
    if (s == GRPC_CHANNEL_TRANSIENT_FAILURE || s == GRPC_CHANNEL_SHUTDOWN) {
      return unavailable(fmt::format("cannot connect to {} (connection refused or TLS handshake failed)", addr));
    }
    if (!ch.WaitForStateChange(s, deadline)) {
      return unavailable(fmt::format("cannot connect to {} within {} ms", addr, timeout.count()));
    }
    s = ch.GetState(true);
  }
  return Status::Ok();
}

// Accounts one transferred message (export or import) and reports progress.
void account(const v1::CacheChunk& msg, TransferStats& st, uint64_t& raw_done, const TransferProgress& progress) {
  st.message_bytes += msg.ByteSizeLong();
  if (msg.has_header()) {
    st.n_tokens = uint32_t(msg.header().token_ids_size());
    st.total_bytes = msg.header().total_bytes();
    if (progress) progress(0, st.total_bytes);
  } else if (msg.has_data()) {
    st.n_chunks++;
    st.payload_bytes += msg.data().payload().size();
    raw_done += msg.data().raw_size();
    if (progress) progress(raw_done, st.total_bytes);
  }
}

}  // namespace

v1::CacheRef cache_ref(const std::string& agent, const std::string& cache_id) {
  v1::CacheRef r;
  r.set_agent(agent);
  r.set_cache_id(cache_id);
  return r;
}

// ---------------------------------------------------------------------------------------------
// connection

AgentClient::AgentClient(std::string addr, ClientChannel channel)
    : addr_(std::move(addr)), channel_(std::move(channel)), stub_(v1::AgentService::NewStub(channel_.channel)) {}

AgentClient::~AgentClient() = default;

void ClientChannel::prepare(grpc::ClientContext& ctx) const {
  auth.attach(ctx);
  if (deadline.count() > 0) ctx.set_deadline(std::chrono::system_clock::now() + deadline);
}

Result<ClientChannel> open_channel(const std::string& addr, const ClientOptions& options) {
  if (addr.empty()) return invalid_argument("empty server address");
  if (options.max_message_bytes == 0 || options.max_message_bytes > uint64_t(INT32_MAX)) {
    return invalid_argument(fmt::format("max message bytes {} outside [1, 2^31)", options.max_message_bytes));
  }
  KVB_ASSIGN_OR_RETURN(const std::string token, read_token(options));
  KVB_ASSIGN_OR_RETURN(const rpc::ChannelConfig config, channel_config(options));
  std::shared_ptr<grpc::Channel> ch = rpc::make_channel(addr, config);
  if (options.connect_timeout.count() > 0) KVB_RETURN_IF_ERROR(wait_ready(*ch, addr, options.connect_timeout));
  return ClientChannel{std::move(ch), rpc::BearerAuth(token), options.deadline};
}

Result<std::unique_ptr<AgentClient>> AgentClient::connect(const std::string& addr, const ClientOptions& options) {
  KVB_ASSIGN_OR_RETURN(ClientChannel ch, open_channel(addr, options));
  return std::unique_ptr<AgentClient>(new AgentClient(addr, std::move(ch)));
}

// ---------------------------------------------------------------------------------------------
// unary calls

Result<v1::AgentInfo> AgentClient::get_info() {
  grpc::ClientContext ctx;
  prepare(ctx);
  v1::AgentInfo info;
  KVB_RETURN_IF_ERROR(from_grpc_status(stub_->GetInfo(&ctx, v1::GetInfoRequest(), &info)));
  return info;
}

Result<v1::PrefillResponse> AgentClient::prefill(const v1::PrefillRequest& request) {
  grpc::ClientContext ctx;
  prepare(ctx);
  v1::PrefillResponse r;
  KVB_RETURN_IF_ERROR(from_grpc_status(stub_->Prefill(&ctx, request, &r)));
  return r;
}

Result<v1::ListCachesResponse> AgentClient::list_caches() {
  grpc::ClientContext ctx;
  prepare(ctx);
  v1::ListCachesResponse r;
  KVB_RETURN_IF_ERROR(from_grpc_status(stub_->ListCaches(&ctx, v1::ListCachesRequest(), &r)));
  return r;
}

Result<std::vector<int32_t>> AgentClient::tokenize(const std::string& text, bool raw) {
  grpc::ClientContext ctx;
  prepare(ctx);
  v1::TokenizeRequest req;
  req.add_texts(text);
  req.set_raw(raw);
  v1::TokenizeResponse r;
  KVB_RETURN_IF_ERROR(from_grpc_status(stub_->Tokenize(&ctx, req, &r)));
  if (r.tokens_size() != 1) return internal_error("Tokenize answered no token list");
  return std::vector<int32_t>(r.tokens(0).ids().begin(), r.tokens(0).ids().end());
}

Status AgentClient::drop_cache(const std::string& cache_id) {
  grpc::ClientContext ctx;
  prepare(ctx);
  v1::DropCacheRequest req;
  req.set_cache_id(cache_id);
  v1::DropCacheResponse r;
  return from_grpc_status(stub_->DropCache(&ctx, req, &r));
}

Result<v1::CacheInfo> AgentClient::pin_cache(const std::string& cache_id, bool pinned) {
  grpc::ClientContext ctx;
  prepare(ctx);
  v1::PinCacheRequest req;
  req.set_cache_id(cache_id);
  req.set_pinned(pinned);
  v1::PinCacheResponse r;
  KVB_RETURN_IF_ERROR(from_grpc_status(stub_->PinCache(&ctx, req, &r)));
  return r.cache();
}

// ---------------------------------------------------------------------------------------------
// Generate

Result<v1::GenerateSummary> AgentClient::generate(const v1::GenerateRequest& request, const TokenCallback& on_token) {
  grpc::ClientContext ctx;
  prepare(ctx);
  // Parsed here, not by gRPC: a message that does not parse ends the call (rpc/parsed_stream.h).
  rpc::ParsedReader reader(*channel_.channel, rpc::method_path(v1::AgentService::service_full_name(), "Generate"),
                           ctx, request);
  v1::GenerateResponse r;
  std::optional<v1::GenerateSummary> summary;
  bool stopped = false;
  while (reader.read(r)) {
    if (r.has_token()) {
      if (on_token && !on_token(r.token())) {
        ctx.TryCancel();
        stopped = true;
        break;
      }
    } else if (r.has_done()) {
      summary = std::move(*r.mutable_done());
    }
  }
  const grpc::Status st = reader.finish();
  if (stopped) return cancelled("generation cancelled by the caller");
  KVB_RETURN_IF_ERROR(from_grpc_status(st));
  if (!summary) return internal_error(fmt::format("{}: Generate ended without a summary", addr_));
  return std::move(*summary);
}

// ---------------------------------------------------------------------------------------------
// cache transfers

Result<TransferStats> AgentClient::export_cache(const std::string& cache_id, const ExportOptions& options,
                                                const ChunkSink& sink) {
  grpc::ClientContext ctx;
  prepare(ctx);
  v1::ExportCacheRequest req;
  req.set_cache_id(cache_id);
  req.set_dtype(options.dtype);
  req.set_compression(options.compression);
  req.set_chunk_tokens(options.chunk_tokens);

  const auto t0 = Clock::now();
  TransferStats st;
  uint64_t raw_done = 0;
  bool trailer = false;
  rpc::ParsedReader reader(*channel_.channel, rpc::method_path(v1::AgentService::service_full_name(), "ExportCache"),
                           ctx, req);
  v1::CacheChunk msg;
  while (reader.read(msg)) {
    account(msg, st, raw_done, options.progress);
    trailer = msg.has_trailer();
    if (Status s = sink(std::move(msg)); !s.ok()) {
      ctx.TryCancel();
      (void)reader.finish();
      return s;
    }
  }
  KVB_RETURN_IF_ERROR(from_grpc_status(reader.finish()));
  if (!trailer) return data_loss(fmt::format("{}: ExportCache ended without its trailer", addr_));
  st.seconds = seconds_since(t0);
  return st;
}

Result<std::vector<v1::CacheChunk>> AgentClient::export_cache_messages(const std::string& cache_id,
                                                                       const ExportOptions& options,
                                                                       TransferStats* stats) {
  std::vector<v1::CacheChunk> out;
  KVB_ASSIGN_OR_RETURN(TransferStats st, export_cache(cache_id, options, [&](v1::CacheChunk&& m) {
                         out.push_back(std::move(m));
                         return Status::Ok();
                       }));
  if (stats) *stats = st;
  return out;
}

Result<TransferStats> AgentClient::save_cache(const std::string& cache_id, const std::string& path,
                                              const ExportOptions& options) {
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<wire::SnapshotWriter> w, wire::SnapshotWriter::create(path));
  KVB_ASSIGN_OR_RETURN(TransferStats st,
                       export_cache(cache_id, options, [&](v1::CacheChunk&& m) { return w->append(m); }));
  KVB_RETURN_IF_ERROR(w->commit());
  return st;
}

Result<ImportResult> AgentClient::import_cache(const ChunkSource& next, const TransferProgress& progress) {
  grpc::ClientContext ctx;
  prepare(ctx);
  const auto t0 = Clock::now();
  ImportResult res;
  uint64_t raw_done = 0;
  std::unique_ptr<grpc::ClientWriter<v1::CacheChunk>> writer = stub_->ImportCache(&ctx, &res.reply);
  v1::CacheChunk msg;
  while (true) {
    Result<bool> more = next(msg);
    if (!more.ok()) {
      ctx.TryCancel();
      (void)writer->Finish();
      return more.status();
    }
    if (!*more) break;
    account(msg, res.stats, raw_done, progress);
    if (!writer->Write(msg)) break;  // the agent ended the call early: Finish() says why
    msg.Clear();
  }
  writer->WritesDone();
  KVB_RETURN_IF_ERROR(from_grpc_status(writer->Finish()));
  res.stats.seconds = seconds_since(t0);
  return res;
}

Result<ImportResult> AgentClient::import_cache(std::span<const v1::CacheChunk> messages,
                                               const TransferProgress& progress) {
  size_t i = 0;
  return import_cache(
      [&](v1::CacheChunk& m) -> Result<bool> {
        if (i == messages.size()) return false;
        m = messages[i++];
        return true;
      },
      progress);
}

Result<ImportResult> AgentClient::load_cache(const std::string& path, const TransferProgress& progress) {
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<wire::SnapshotReader> r, wire::SnapshotReader::open(path));
  return import_cache(
      [&](v1::CacheChunk& m) -> Result<bool> {
        Result<bool> more = r->next(m);
        if (!more.ok()) return more.status().with_context(path);
        return more;
      },
      progress);
}

}  // namespace kvb::client
