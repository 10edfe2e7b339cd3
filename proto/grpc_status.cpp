#include "proto/grpc_status.h"

namespace kvb {

grpc::Status to_grpc_status(const Status& s) {
  if (s.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(s.code());
  // kvb::StatusCode values equal grpc::StatusCode values (kernels/status.h); guard anyway.
  if (code < 0 || code > static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)) {
    return grpc::Status(grpc::StatusCode::UNKNOWN, s.message());
  }
  return grpc::Status(static_cast<grpc::StatusCode>(code), s.message());
}

Status from_grpc_status(const grpc::Status& s) {
  if (s.ok()) return Status::Ok();
  const int code = static_cast<int>(s.error_code());
  if (code <= 0 || code > static_cast<int>(StatusCode::kUnauthenticated)) {
    return Status(StatusCode::kUnknown, s.error_message());
  }
  return Status(static_cast<StatusCode>(code), s.error_message());
}

}  // namespace kvb
