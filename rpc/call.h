// The per-call plumbing every kvbridge gRPC service shares (AgentService, FuserService): a request
// id, one log line and the call's metrics when it ends (CallLog); admission — bearer token, size
// limit, byte accounting (admit); and the unary callback reactor that finishes once (UnaryCall).
//
// Threading: a CallLog belongs to one call; admit is reentrant; UnaryCall::complete may be called
// from any thread, exactly once.
#pragma once

#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include "kernels/status.h"
#include "proto/grpc_status.h"
#include "rpc/auth.h"
#include "rpc/logging.h"
#include "rpc/metrics.h"

namespace kvb::rpc {

// How a service admits and accounts its calls. Borrowed pointers, never null; they must outlive
// the service.
struct CallPolicy {
  CallMetrics* metrics = nullptr;
  const BearerAuth* auth = nullptr;
  uint64_t max_message_bytes = 0;  // a larger request is INVALID_ARGUMENT (--max-message-bytes)
};

// Request id (sent as response metadata "x-request-id"), peer and start time of one call; done()
// logs one line and records the call in the metrics.
class CallLog {
 public:
  CallLog(CallMetrics& metrics, std::string_view method, grpc::CallbackServerContext& ctx);
  CallLog(CallMetrics& metrics, std::string_view method, grpc::ServerContext& ctx);
  const std::string& id() const { return id_; }
  const std::string& peer() const { return peer_; }
  std::chrono::steady_clock::time_point start() const { return start_; }
  // `fields` are added to the log line after the call's own (method, peer, code, duration) and
  // before the error.
  void done(const Status& st, std::initializer_list<LogField> fields = {});

 private:
  CallLog(CallMetrics& metrics, std::string_view method, std::string peer);

  CallMetrics& metrics_;
  std::string_view method_;  // a literal
  std::string id_;
  std::string peer_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Counts `req`'s bytes, then checks the token (UNAUTHENTICATED) and the size limit
// (INVALID_ARGUMENT naming --max-message-bytes).
Status admit(const CallPolicy& policy, const grpc::ServerContextBase& ctx, const google::protobuf::Message& req);

// A unary reactor that finishes once, logs, and deletes itself when gRPC is done with it.
class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(CallMetrics& metrics, std::string_view method, grpc::CallbackServerContext* ctx)
      : log_(metrics, method, *ctx) {}
  // Exactly once per call, from any thread.
  void complete(Status st) {
    status_ = std::move(st);
    Finish(to_grpc_status(status_));
  }
  void OnDone() override {
    log_.done(status_);
    delete this;
  }

 protected:
  CallLog log_;
  Status status_;
};

}  // namespace kvb::rpc
