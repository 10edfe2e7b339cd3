#include "agent/service_call.h"

#include <fmt/format.h>

#include "rpc/logging.h"

namespace kvb::agent {

CallLog::CallLog(const ServiceDeps& d, std::string_view method, grpc::CallbackServerContext* ctx)
    : d_(d), method_(method), id_(rpc::new_request_id()), peer_(ctx->peer()) {
  ctx->AddInitialMetadata("x-request-id", id_);
}

void CallLog::done(const Status& st) {
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  d_.metrics->record_request(method_, st.code(), secs);
  const auto level = st.ok() || st.code() == StatusCode::kCancelled ? spdlog::level::info : spdlog::level::warn;
  rpc::log_event(level, "request",
            {{"request_id", id_},
             {"method", method_},
             {"peer", peer_},
             {"code", status_code_name(st.code())},
             {"duration_ms", secs * 1e3},
             {"error", st.message()}});
}

Status admit(const ServiceDeps& d, grpc::CallbackServerContext* ctx, const google::protobuf::Message& req) {
  const uint64_t n = req.ByteSizeLong();
  d.metrics->add_bytes_received(n);
  KVB_RETURN_IF_ERROR(d.auth->check(*ctx));
  if (n > d.config->max_message_bytes) {
    return invalid_argument(
        fmt::format("request of {} bytes exceeds --max-message-bytes {}", n, d.config->max_message_bytes));
  }
  return Status::Ok();
}

}  // namespace kvb::agent
