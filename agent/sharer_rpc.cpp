#include "agent/sharer_rpc.h"

#include <fmt/format.h>

#include "agent/transfer/transfer_convert.h"
#include "kvbridge/v1/agent.grpc.pb.h"
#include "proto/wire_convert.h"
#include "rpc/logging.h"

namespace kvb::agent {

namespace pb = ::kvbridge::v1;

struct SharerRpc::Stub {
  std::unique_ptr<pb::AgentService::Stub> agent;
};

SharerRpc::SharerRpc(PeerClient& peers, std::string sharer, runtime::CancelToken& cancel)
    : peers_(peers),
      sharer_(std::move(sharer)),
      cancel_(cancel),
      stub_(new Stub{pb::AgentService::NewStub(peers.channel(sharer_))}) {}

SharerRpc::~SharerRpc() = default;

Result<SharerInfo> SharerRpc::info() {
  pb::AgentInfo info;
  KVB_RETURN_IF_ERROR(peers_.unary(*stub_->agent, &pb::AgentService::Stub::GetInfo, pb::GetInfoRequest(), &info,
                                   cancel_, fmt::format("asking {} for its model", sharer_)));
  peers_.remember_endpoint(sharer_, endpoint_from_proto(info.transport_info()));
  SharerInfo out;
  out.identity = wire::from_proto(info.model());
  out.bos_id = info.bos_id();
  out.eos_id = info.eos_id();
  return out;
}

Result<SharerContext> SharerRpc::read_context(const std::string& cache_id) {
  pb::DetokenizeRequest req;
  req.set_cache_id(cache_id);
  pb::DetokenizeResponse resp;
  KVB_RETURN_IF_ERROR(peers_.unary(*stub_->agent, &pb::AgentService::Stub::Detokenize, req, &resp, cancel_,
                                   fmt::format("reading cache {} on {}", cache_id, sharer_)));
  return SharerContext{std::vector<int32_t>(resp.ids().begin(), resp.ids().end()), resp.text()};
}

fuser::BatchEncoder SharerRpc::encoder() {
  return [this](std::span<const std::string> texts) -> Result<std::vector<std::vector<int32_t>>> {
    pb::TokenizeRequest req;
    req.set_raw(true);
    for (const std::string& t : texts) req.add_texts(t);
    pb::TokenizeResponse resp;
    KVB_RETURN_IF_ERROR(peers_.unary(*stub_->agent, &pb::AgentService::Stub::Tokenize, req, &resp, cancel_,
                                     fmt::format("aligning tokens with {}", sharer_)));
    std::vector<std::vector<int32_t>> out;
    for (const pb::TokenIds& t : resp.tokens()) out.emplace_back(t.ids().begin(), t.ids().end());
    return out;
  };
}

fuser::PieceTexts SharerRpc::piece_texts() {
  return [this](std::span<const int32_t> ids) -> Result<std::vector<std::string>> {
    pb::DetokenizeRequest req;
    req.mutable_tokens()->mutable_ids()->Assign(ids.begin(), ids.end());
    pb::DetokenizeResponse resp;
    KVB_RETURN_IF_ERROR(peers_.unary(*stub_->agent, &pb::AgentService::Stub::Detokenize, req, &resp, cancel_,
                                     fmt::format("aligning tokens with {}", sharer_)));
    return std::vector<std::string>(resp.pieces().begin(), resp.pieces().end());
  };
}

Result<std::string> SharerRpc::prefill(const std::vector<int32_t>& ids) {
  pb::PrefillRequest req;
  req.mutable_tokens()->mutable_ids()->Assign(ids.begin(), ids.end());
  req.set_add_bos(false);
  req.set_cache_ttl_seconds(300);  // the caller drops it; the TTL only covers a receiver that dies first
  pb::PrefillResponse resp;
  KVB_RETURN_IF_ERROR(peers_.unary(*stub_->agent, &pb::AgentService::Stub::Prefill, req, &resp, cancel_,
                                   fmt::format("prefilling the aligned context on {}", sharer_)));
  return resp.cache_id();
}

void SharerRpc::drop(const std::string& cache_id) {
  pb::DropCacheRequest req;
  req.set_cache_id(cache_id);
  pb::DropCacheResponse resp;
  runtime::CancelToken never;
  const Status st = peers_.unary(*stub_->agent, &pb::AgentService::Stub::DropCache, req, &resp, never, "dropping");
  if (!st.ok()) {
    rpc::log_event(spdlog::level::warn, "fuse", {{"drop_temporary_cache", cache_id}, {"error", st.message()}});
  }
}

}  // namespace kvb::agent
