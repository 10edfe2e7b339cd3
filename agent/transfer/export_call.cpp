#include "agent/transfer/export_call.h"

#include <string>

#include "agent/transfer/transfer_convert.h"
#include "kvbridge/v1/agent.grpc.pb.h"
#include "proto/grpc_status.h"

namespace kvb::agent {

namespace pb = ::kvbridge::v1;

ExportCall::ExportCall(CacheSharer& sharer, const rpc::CallPolicy& policy, grpc::CallbackServerContext* ctx,
                       const grpc::ByteBuffer& raw)
    : sharer_(sharer), policy_(policy), log_(*policy.metrics, "ExportCache", *ctx) {
  const Status st = start(ctx, raw);
  if (st.ok()) {
    advance(std::unique_lock<std::mutex>(mu_));
  } else {
    status_ = st;
    Finish(to_grpc_status(status_));
  }
}

void ExportCall::OnWriteDone(bool ok) {
  std::unique_lock<std::mutex> lock(mu_);
  writing_ = false;
  if (!ok) {
    if (finish_locked(cancelled("the client went away"))) {
      lock.unlock();
      Finish(to_grpc_status(status_));
    }
    return;
  }
  advance(std::move(lock));
}

void ExportCall::OnDone() {
  log_.done(status_);
  delete this;
}

Status ExportCall::start(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer& raw) {
  pb::ExportCacheRequest req;
  grpc::ByteBuffer copy(raw);  // Deserialize consumes its buffer; this copy shares the slices
  if (!grpc::SerializationTraits<pb::ExportCacheRequest>::Deserialize(&copy, &req).ok()) {
    policy_.metrics->add_bytes_received(raw.Length());
    return invalid_argument("ExportCache: the request does not parse");
  }
  KVB_RETURN_IF_ERROR(rpc::admit(policy_, *ctx, req));
  KVB_ASSIGN_OR_RETURN(const ExportSpec spec, convert_export(req));
  KVB_ASSIGN_OR_RETURN(source_, sharer_.open_export(spec));
  writer_ = std::make_unique<wire::SerializedStreamWriter>(*source_.encoder);
  return Status::Ok();
}

grpc::ByteBuffer ExportCall::to_byte_buffer(wire::SerializedChunk& m) const {
  grpc::Slice parts[3];
  size_t n = 0;
  parts[n++] = grpc::Slice(m.head);
  if (!m.borrowed.empty()) {
    auto* keep = new std::shared_ptr<const KvCache>(source_.cache);
    parts[n++] = grpc::Slice(const_cast<char*>(m.borrowed.data()), m.borrowed.size(),
                             [](void* p) { delete static_cast<std::shared_ptr<const KvCache>*>(p); }, keep);
  } else if (!m.owned.empty()) {
    auto* owned = new std::string(std::move(m.owned));
    parts[n++] = grpc::Slice(owned->data(), owned->size(), [](void* p) { delete static_cast<std::string*>(p); },
                             owned);
  }
  if (!m.tail.empty()) parts[n++] = grpc::Slice(m.tail);
  return grpc::ByteBuffer(parts, n);
}

void ExportCall::advance(std::unique_lock<std::mutex> lock) {
  for (;;) {
    if (finished_) return;
    if (!writing_ && next_ready_) {
      current_.Swap(&next_);
      next_.Clear();
      next_ready_ = false;
      writing_ = true;
      policy_.metrics->add_bytes_sent(current_.Length());
      StartWrite(&current_);
    }
    if (!writing_ && !next_ready_ && exhausted_ && !producing_) {
      if (finish_locked(Status::Ok())) {
        lock.unlock();
        Finish(to_grpc_status(status_));
      }
      return;
    }
    if (producing_ || next_ready_ || exhausted_) return;
    producing_ = true;
    lock.unlock();
    const bool have = writer_->next(&message_);  // message_ and next_ are ours alone while producing_
    if (have) next_ = to_byte_buffer(message_);
    lock.lock();
    producing_ = false;
    (have ? next_ready_ : exhausted_) = true;
  }
}

bool ExportCall::finish_locked(Status st) {
  if (finished_) return false;
  finished_ = true;
  status_ = std::move(st);
  return true;
}

}  // namespace kvb::agent
