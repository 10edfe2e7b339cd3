#include "rpc/call.h"

#include <fmt/format.h>

#include <vector>

namespace kvb::rpc {

CallLog::CallLog(CallMetrics& metrics, std::string_view method, std::string peer)
    : metrics_(metrics), method_(method), id_(new_request_id()), peer_(std::move(peer)) {}

CallLog::CallLog(CallMetrics& metrics, std::string_view method, grpc::CallbackServerContext& ctx)
    : CallLog(metrics, method, ctx.peer()) {
  ctx.AddInitialMetadata("x-request-id", id_);
}

CallLog::CallLog(CallMetrics& metrics, std::string_view method, grpc::ServerContext& ctx)
    : CallLog(metrics, method, ctx.peer()) {
  ctx.AddInitialMetadata("x-request-id", id_);
}

void CallLog::done(const Status& st, std::initializer_list<LogField> fields) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  metrics_.record_request(method_, st.code(), secs);
  const auto level = st.ok() || st.code() == StatusCode::kCancelled ? spdlog::level::info : spdlog::level::warn;
  const std::string_view code = status_code_name(st.code());
  std::vector<LogField> line = {
      {"request_id", id_}, {"method", method_}, {"peer", peer_}, {"code", code}, {"duration_ms", secs * 1e3}};
  line.insert(line.end(), fields.begin(), fields.end());
  line.push_back({"error", st.message()});
  log_event(level, "request", line);
}

Status admit(const CallPolicy& policy, const grpc::ServerContextBase& ctx, const google::protobuf::Message& req) {
  const uint64_t n = req.ByteSizeLong();
  policy.metrics->add_bytes_received(n);
  KVB_RETURN_IF_ERROR(policy.auth->check(ctx));
  if (n > policy.max_message_bytes) {
    return invalid_argument(
        fmt::format("request of {} bytes exceeds --max-message-bytes {}", n, policy.max_message_bytes));
  }
  return Status::Ok();
}

}  // namespace kvb::rpc
