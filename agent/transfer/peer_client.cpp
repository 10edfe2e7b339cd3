#include "agent/transfer/peer_client.h"

#include <fmt/format.h>

#include "agent/transfer/raw_pull.h"
#include "agent/transfer/stream_pull.h"
#include "agent/transfer/transfer_convert.h"
#include "agent/transfer/transport_choice.h"
#include "kvbridge/v1/agent.grpc.pb.h"
#include "proto/grpc_status.h"
#include "rpc/channel.h"
#include "rpc/logging.h"

namespace kvb::agent {

PeerClient::PeerClient(PeerClientOptions opt) : opt_(std::move(opt)), auth_(opt_.auth_token) {
  const int n = opt_.n_workers > 0 ? opt_.n_workers : 1;
  for (int i = 0; i < n; ++i) workers_.emplace_back([this] { worker(); });
}

PeerClient::~PeerClient() { stop(); }

void PeerClient::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  for (auto& t : workers_) {
    if (t.joinable()) t.join();
  }
}

void PeerClient::post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      tasks_.push_back(std::move(fn));
      cv_.notify_one();
      return;
    }
  }
  fn();
}

void PeerClient::worker() {
  for (;;) {
    std::function<void()> fn;
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !tasks_.empty(); });
      if (tasks_.empty()) return;  // stopping, and nothing left to run
      fn = std::move(tasks_.front());
      tasks_.pop_front();
    }
    fn();
  }
}

bool PeerClient::stopping() {
  std::lock_guard<std::mutex> lock(mu_);
  return stopping_;
}

void PeerClient::prepare(grpc::ClientContext& ctx) const {
  auth_.attach(ctx);
  ctx.set_deadline(std::chrono::system_clock::now() + opt_.pull_timeout);
}

Status PeerClient::peer_error(const grpc::Status& gs, const std::string& what) {
  Status st = from_grpc_status(gs);
  switch (st.code()) {
    case StatusCode::kDeadlineExceeded:
    case StatusCode::kCancelled:
      st = unavailable(fmt::format("the peer did not complete the call: {}", st.message()));
      break;
    case StatusCode::kUnauthenticated:
      st = Status(StatusCode::kPermissionDenied, fmt::format("the peer refused this agent's token: {}", st.message()));
      break;
    default:
      break;
  }
  return st.with_context(what);
}

std::shared_ptr<grpc::Channel> PeerClient::channel(const std::string& agent) {
  std::lock_guard<std::mutex> lock(channels_mu_);
  auto& ch = channels_[agent];
  if (ch) return ch;
  rpc::ChannelConfig cc;
  cc.max_message_bytes = opt_.max_message_bytes;
  cc.tls = opt_.tls;
  cc.root_pem = opt_.tls_root_pem;
  cc.cert_pem = opt_.tls_cert_pem;
  cc.key_pem = opt_.tls_key_pem;
  cc.peer_keepalive = true;  // a hung sharer is noticed mid-transfer
  ch = rpc::make_channel(agent, cc);
  return ch;
}

Result<transport::EndpointInfo> PeerClient::peer_endpoint(const std::string& agent, runtime::CancelToken& cancel) {
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(channels_mu_);
    auto it = peer_info_.find(agent);
    if (it != peer_info_.end() && now - it->second.fetched < kPeerInfoTtl) return it->second.endpoint;
  }
  return fetch_endpoint(agent, cancel);
}

Result<transport::EndpointInfo> PeerClient::fetch_endpoint(const std::string& agent, runtime::CancelToken& cancel) {
  auto stub = kvbridge::v1::AgentService::NewStub(channel(agent));
  kvbridge::v1::AgentInfo info;
  const Status st = unary(*stub, &kvbridge::v1::AgentService::Stub::GetInfo, kvbridge::v1::GetInfoRequest(), &info,
                          cancel, fmt::format("asking the agent at {} for its transports", agent));
  // A sharer without GetInfo (another implementation of ExportCache) reports nothing: grpc.
  if (!st.ok() && st.code() != StatusCode::kUnimplemented) return st;
  const transport::EndpointInfo sharer = endpoint_from_proto(info.transport_info());
  remember_endpoint(agent, sharer);
  return sharer;
}

void PeerClient::remember_endpoint(const std::string& agent, const transport::EndpointInfo& info) {
  std::lock_guard<std::mutex> lock(channels_mu_);
  peer_info_[agent] = PeerInfo{std::chrono::steady_clock::now(), info};
}

Result<PullTransport> PeerClient::choose_transport(const std::string& agent, const PullOptions& po,
                                                   runtime::CancelToken& cancel) {
  transport::EndpointInfo sharer;
  if (needs_sharer_info(po.transport)) {
    KVB_ASSIGN_OR_RETURN(sharer, peer_endpoint(agent, cancel));
  }
  const bool raw = opt_.transports != nullptr;
  return choose_pull_transport(po, sharer, opt_.endpoint, raw, raw && !opt_.transports->receive_buffers().is_host());
}

Result<PulledCache> PeerClient::pull(const std::string& agent, const std::string& cache_id, const PullOptions& po,
                                     runtime::CancelToken& cancel) {
  const auto where = [&] { return fmt::format("pulling cache {} from {}", cache_id, agent); };
  if (stopping()) return unavailable(where() + ": the agent is shutting down");
  if (cancel.cancelled()) return cancelled(where() + ": the request was cancelled");

  // 1. The transport.
  auto chosen = choose_transport(agent, po, cancel);
  if (!chosen.ok()) return chosen.status().with_context(where());

  // 2. A raw pull. The consumer's own failure is final; a transport's is retried over grpc (where
  //    on_data sees the slices it already had complete again).
  const transport::TransportKind kind = chosen->selection.kind;
  if (kind != transport::TransportKind::kGrpc) {
    bool consumer_failed = false;
    PullOptions raw_po = po;
    if (po.on_data) {
      raw_po.on_data = [&](const PullProgress& p) {
        Status st = po.on_data(p);
        consumer_failed = !st.ok();
        return st;
      };
    }
    auto raw = raw_pull(*this, agent, cache_id, kind, raw_po, cancel);
    if (raw.ok()) {
      raw->transport = std::move(chosen).value();
      return raw;
    }
    if (!retry_over_grpc(raw.status(), consumer_failed, cancel.cancelled())) return raw.status().with_context(where());
    fall_back_to_grpc(*chosen, kind, raw.status());
  }
  if (chosen->selection.fell_back) {
    rpc::log_event(spdlog::level::info, "transport fell back to grpc",
                   {{"cache", cache_id}, {"peer", agent}, {"reason", chosen->selection.reason}});
  }

  // 3. The ExportCache stream.
  auto out = stream_pull(*this, agent, cache_id, po, cancel);
  if (!out.ok()) return out.status().with_context(where());
  out->transport = std::move(chosen).value();
  return out;
}

}  // namespace kvb::agent
