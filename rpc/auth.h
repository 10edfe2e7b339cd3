// Bearer-token authentication of AgentService calls, and the token on outgoing peer calls.
//
// A request must carry the metadata "authorization: Bearer <token>" with the agent's token
// (--auth-token-file); the comparison runs in time independent of where the strings differ.
// Health and reflection services are not checked (they reveal nothing about caches or models
// beyond the service names). Threading: immutable after construction, safe from any thread.
#pragma once

#include <string>
#include <string_view>

#include <grpcpp/client_context.h>
#include <grpcpp/server_context.h>

#include "kernels/status.h"

namespace kvb::rpc {

// True iff a == b; the time taken depends only on the lengths, never on the contents.
bool constant_time_equals(std::string_view a, std::string_view b);

class BearerAuth {
 public:
  BearerAuth() = default;  // disabled: every call passes
  explicit BearerAuth(std::string token) : expected_("Bearer " + token), enabled_(!token.empty()) {}

  bool enabled() const { return enabled_; }
  // OK when disabled or when the call carries the right token; UNAUTHENTICATED otherwise (the
  // message never echoes what was sent).
  Status check(const grpc::ServerContextBase& ctx) const;
  // Adds "authorization: Bearer <token>" to an outgoing call (no-op when disabled).
  void attach(grpc::ClientContext& ctx) const;

 private:
  std::string expected_;
  bool enabled_ = false;
};

}  // namespace kvb::rpc
