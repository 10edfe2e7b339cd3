#include "rpc/auth.h"

namespace kvb::rpc {

bool constant_time_equals(std::string_view a, std::string_view b) {
  // Walk the longer length so the loop count does not depend on which string is shorter; every
  // byte difference and the length difference are OR-ed into one accumulator.
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  volatile unsigned char diff = static_cast<unsigned char>(a.size() != b.size());
  for (size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = static_cast<unsigned char>(diff | (x ^ y));
  }
  return diff == 0;
}

Status BearerAuth::check(const grpc::ServerContextBase& ctx) const {
  if (!enabled_) return Status::Ok();
  const auto& md = ctx.client_metadata();
  const auto range = md.equal_range("authorization");
  if (range.first == range.second) {
    return Status(StatusCode::kUnauthenticated, "missing bearer token (metadata 'authorization: Bearer <token>')");
  }
  bool ok = false;
  for (auto it = range.first; it != range.second; ++it) {
    ok |= constant_time_equals(std::string_view(it->second.data(), it->second.size()), expected_);
  }
  if (!ok) return Status(StatusCode::kUnauthenticated, "wrong bearer token");
  return Status::Ok();
}

void BearerAuth::attach(grpc::ClientContext& ctx) const {
  if (enabled_) ctx.AddMetadata("authorization", expected_);
}

}  // namespace kvb::rpc
