#include "agent/transfer/transfer_stream_call.h"

#include "proto/grpc_status.h"

namespace kvb::agent {

using transport::Clock;

TransferStreamCall::TransferStreamCall(CacheSharer& sharer, const rpc::CallPolicy& policy,
                                       grpc::CallbackServerContext* ctx)
    : sharer_(sharer), policy_(policy), log_(*policy.metrics, "TransferStream", *ctx) {
  Status st = policy.auth->check(*ctx);
  if (st.ok() && !sharer.serves_transfers()) st = CacheSharer::no_transfers();
  if (!st.ok()) {
    finish(std::move(st));
    return;
  }
  StartRead(&in_);
}

void TransferStreamCall::OnReadDone(bool ok) {
  std::shared_ptr<transport::BytePipe> pipe = this->pipe();
  if (!ok) {  // the receiver half-closed, or the call was cancelled
    if (pipe) {
      pipe->close();
    } else {
      finish(invalid_argument("the stream ended before naming a transfer"));
    }
    return;
  }
  policy_.metrics->add_bytes_received(in_.ByteSizeLong());
  if (!pipe) {
    auto taken = sharer_.take_stream({in_.session_hi(), in_.session_lo()});
    if (!taken.ok()) {
      finish(taken.status());
      return;
    }
    pipe = std::shared_ptr<transport::BytePipe>(std::move(taken).value());
    {
      std::lock_guard<std::mutex> lock(mu_);
      pipe_ = pipe;
    }
    pump_ = std::thread([this, pipe] { pump(*pipe); });
  }
  // Control messages are small and the pipe's window large: this does not block in practice.
  if (!in_.data().empty() && !pipe->send(in_.data(), Clock::now() + std::chrono::seconds(10)).ok()) {
    pipe->close();  // the session ended: the pump finishes the call
    return;
  }
  StartRead(&in_);
}

void TransferStreamCall::OnWriteDone(bool ok) {
  std::lock_guard<std::mutex> lock(mu_);
  writing_ = false;
  write_ok_ = ok;
  cv_.notify_all();
}

void TransferStreamCall::OnCancel() {
  if (auto pipe = this->pipe()) pipe->close();
}

void TransferStreamCall::OnDone() {
  if (auto pipe = this->pipe()) pipe->close();
  if (pump_.joinable()) pump_.join();
  log_.done(status_);
  delete this;
}

std::shared_ptr<transport::BytePipe> TransferStreamCall::pipe() {
  std::lock_guard<std::mutex> lock(mu_);
  return pipe_;
}

void TransferStreamCall::pump(transport::BytePipe& pipe) {
  for (;;) {
    auto m = pipe.recv(Clock::now() + std::chrono::seconds(1));
    if (!m.ok()) break;  // closed: the session is over, or the receiver went away
    if (!m->has_value()) continue;
    out_.Clear();
    out_.set_data(std::move(**m));
    policy_.metrics->add_bytes_sent(out_.ByteSizeLong());
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = true;
    }
    StartWrite(&out_);
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return !writing_; });
    if (!write_ok_) break;
  }
  finish(Status::Ok());
}

void TransferStreamCall::finish(Status st) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (finished_) return;
    finished_ = true;
  }
  status_ = std::move(st);
  Finish(to_grpc_status(status_));
}

}  // namespace kvb::agent
