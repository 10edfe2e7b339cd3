// The per-call plumbing every AgentService handler shares (agent_service.cpp, transfer_service.cpp):
// the call's log line and metrics, admission (token, size limit, byte accounting), and the unary
// reactor that finishes once. Internal to kvbridge::server.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include <google/protobuf/message.h>
#include <grpcpp/grpcpp.h>

#include "kernels/status.h"
#include "proto/grpc_status.h"
#include "agent/agent_service.h"

namespace kvb::agent {

// Request id (response metadata "x-request-id"), peer, start time; done() logs one line and
// records the call's metrics.
class CallLog {
 public:
  CallLog(const ServiceDeps& d, std::string_view method, grpc::CallbackServerContext* ctx);
  const std::string& id() const { return id_; }
  const std::string& peer() const { return peer_; }
  std::chrono::steady_clock::time_point start() const { return start_; }
  void done(const Status& st);

 private:
  const ServiceDeps& d_;
  std::string_view method_;
  std::string id_;
  std::string peer_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// Auth, size limit and byte accounting shared by every handler that has its request at hand:
// UNAUTHENTICATED, or INVALID_ARGUMENT over --max-message-bytes.
Status admit(const ServiceDeps& d, grpc::CallbackServerContext* ctx, const google::protobuf::Message& req);

// A unary reactor that finishes once, logs, and deletes itself when gRPC is done with it.
class UnaryCall : public grpc::ServerUnaryReactor {
 public:
  UnaryCall(const ServiceDeps& d, std::string_view method, grpc::CallbackServerContext* ctx) : log_(d, method, ctx) {}
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

}  // namespace kvb::agent
