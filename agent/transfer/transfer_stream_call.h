// TransferStreamCall: the sharer's end of one raw transfer's TransferStream (agent.proto), the
// control stream of a session CacheSharer opened: frames from the receiver go into the session's
// control pipe; a pump thread writes what the sharer's endpoint sends. The stream ends (OK) once
// the session tore its endpoint down; a receiver that ends the stream first closes the pipe (its
// endpoint notices). Its first frame names the session: NOT_FOUND for an unknown one,
// ALREADY_EXISTS when it already has a stream, INVALID_ARGUMENT when the stream ends before.
//
// Ownership: deletes itself when gRPC is done with it (OnDone, which joins the pump); borrows the
// sharer and what `policy` points to. Threading: gRPC's callback threads and the pump.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include <grpcpp/grpcpp.h>

#include "agent/transfer/cache_sharer.h"
#include "kvbridge/v1/agent.pb.h"
#include "rpc/call.h"
#include "transport/byte_pipe.h"

namespace kvb::agent {

class TransferStreamCall final
    : public grpc::ServerBidiReactor<::kvbridge::v1::TransferFrame, ::kvbridge::v1::TransferFrame> {
 public:
  TransferStreamCall(CacheSharer& sharer, const rpc::CallPolicy& policy, grpc::CallbackServerContext* ctx);

  void OnReadDone(bool ok) override;
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  std::shared_ptr<transport::BytePipe> pipe();
  void pump(transport::BytePipe& pipe);
  // Exactly once.
  void finish(Status st);

  CacheSharer& sharer_;
  const rpc::CallPolicy policy_;
  rpc::CallLog log_;
  ::kvbridge::v1::TransferFrame in_, out_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::shared_ptr<transport::BytePipe> pipe_;  // guarded by mu_
  bool writing_ = false, write_ok_ = true;     // guarded by mu_
  bool finished_ = false;                      // guarded by mu_
  Status status_;
  std::thread pump_;
};

}  // namespace kvb::agent
