#include "transport/cuda/nccl_transport.h"

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <nccl.h>

#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "transport/cuda/cuda_runtime.h"
#include "transport/cuda/cuda_status.h"

namespace kvb::transport {

namespace {

using cuda_detail::cuda_status;
using cuda_detail::DeviceGuard;

Status nccl_status(ncclResult_t r, ncclComm_t comm, std::string_view what) {
  if (r == ncclSuccess || r == ncclInProgress) return Status::Ok();
  const char* last = comm ? ncclGetLastError(comm) : nullptr;
  const StatusCode code = r == ncclInvalidArgument || r == ncclInvalidUsage ? StatusCode::kInvalidArgument
                          : r == ncclRemoteError || r == ncclSystemError    ? StatusCode::kUnavailable
                                                                            : StatusCode::kInternal;
  return Status(code, fmt::format("{}: {}{}{}", what, ncclGetErrorString(r), last && *last ? ": " : "", last ? last : ""));
}

class RealNcclOps final : public NcclDeviceOps {
 public:
  RealNcclOps(int device, std::string uuid, cudaStream_t stream) : device_(device), uuid_(std::move(uuid)), stream_(stream) {}

  ~RealNcclOps() override {
    DeviceGuard guard(device_);
    if (comm_) abort();
    (void)cudaStreamSynchronize(stream_);
    for (auto& [tok, ev] : events_) (void)cudaEventDestroy(ev);
    for (cudaEvent_t ev : pool_) (void)cudaEventDestroy(ev);
    (void)cudaStreamDestroy(stream_);
  }

  int device() const override { return device_; }
  std::string device_uuid() const override { return uuid_; }

  Result<std::string> new_unique_id() override {
    ncclUniqueId id;
    KVB_RETURN_IF_ERROR(nccl_status(ncclGetUniqueId(&id), nullptr, "ncclGetUniqueId"));
    return std::string(id.internal, sizeof(id.internal));
  }

  Status init_begin(std::string_view unique_id, int n_ranks, int rank) override {
    ncclUniqueId id;
    if (unique_id.size() != sizeof(id.internal)) {
      return invalid_argument(fmt::format("nccl: a unique id of {} bytes, expected {}", unique_id.size(), sizeof(id.internal)));
    }
    std::memcpy(id.internal, unique_id.data(), sizeof(id.internal));
    DeviceGuard guard(device_);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;  // init and group calls return ncclInProgress; ncclCommGetAsyncError polls
    return nccl_status(ncclCommInitRankConfig(&comm_, n_ranks, id, rank, &config), comm_, "ncclCommInitRankConfig");
  }

  PollResult comm_state() override {
    if (!comm_) return {TransferState::kError, failed_precondition("nccl: no communicator")};
    ncclResult_t r = ncclSuccess;
    const ncclResult_t q = ncclCommGetAsyncError(comm_, &r);
    if (q != ncclSuccess) return {TransferState::kError, nccl_status(q, comm_, "ncclCommGetAsyncError")};
    if (r == ncclInProgress) return {};
    if (r != ncclSuccess) return {TransferState::kError, nccl_status(r, comm_, "nccl")};
    return {TransferState::kDone, Status::Ok()};
  }

  Result<uint64_t> launch(bool send, void* ptr, size_t bytes, int peer, void* ready_event) override {
    DeviceGuard guard(device_);
    if (ready_event) {
      KVB_RETURN_IF_ERROR(cuda_status(cudaStreamWaitEvent(stream_, static_cast<cudaEvent_t>(ready_event), 0),
                                      "nccl: cudaStreamWaitEvent(ready_event)"));
    }
    cudaEvent_t ev = nullptr;
    if (!pool_.empty()) {
      ev = pool_.back();
      pool_.pop_back();
    } else {
      KVB_RETURN_IF_ERROR(cuda_status(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "nccl: cudaEventCreate"));
    }
    // One transfer, one group: its own completion, so a consumer can start on it alone.
    ncclResult_t r = ncclGroupStart();
    if (r == ncclSuccess) {
      r = send ? ncclSend(ptr, bytes, ncclUint8, peer, comm_, stream_) : ncclRecv(ptr, bytes, ncclUint8, peer, comm_, stream_);
      const ncclResult_t end = ncclGroupEnd();
      if (r == ncclSuccess || r == ncclInProgress) r = end;
    }
    if (r != ncclSuccess && r != ncclInProgress) {
      pool_.push_back(ev);
      return nccl_status(r, comm_, send ? "ncclSend" : "ncclRecv");
    }
    const uint64_t tok = ++next_token_;
    events_[tok] = ev;
    return tok;
  }

  Status record(uint64_t token) override {
    const auto it = events_.find(token);
    if (it == events_.end()) return internal_error("nccl: unknown token");
    DeviceGuard guard(device_);
    return cuda_status(cudaEventRecord(it->second, stream_), "nccl: cudaEventRecord");
  }

  Result<bool> done(uint64_t token) override {
    const auto it = events_.find(token);
    if (it == events_.end()) return internal_error("nccl: unknown token");
    const cudaError_t e = cudaEventQuery(it->second);
    if (e == cudaErrorNotReady) return false;
    KVB_RETURN_IF_ERROR(cuda_status(e, "nccl: the transfer's event"));
    return true;
  }

  void* event(uint64_t token) override {
    const auto it = events_.find(token);
    return it == events_.end() ? nullptr : static_cast<void*>(it->second);
  }

  void release(uint64_t token) override {
    const auto it = events_.find(token);
    if (it == events_.end()) return;
    pool_.push_back(it->second);
    events_.erase(it);
  }

  void abort() override {
    DeviceGuard guard(device_);
    if (comm_) {
      (void)ncclCommAbort(comm_);  // stops the kernels of this communicator, frees it
      comm_ = nullptr;
    }
    (void)cudaStreamSynchronize(stream_);  // nothing launched touches memory afterwards
  }

  void finalize() override {
    if (!comm_) return;
    DeviceGuard guard(device_);
    ncclResult_t r = ncclCommFinalize(comm_);
    const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (r == ncclSuccess || r == ncclInProgress) {
      ncclResult_t state = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &state) != ncclSuccess) break;
      if (state == ncclSuccess) {
        (void)ncclCommDestroy(comm_);
        comm_ = nullptr;
        return;
      }
      if (state != ncclInProgress || std::chrono::steady_clock::now() >= until) break;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    abort();
  }

 private:
  const int device_;
  const std::string uuid_;
  const cudaStream_t stream_;
  ncclComm_t comm_ = nullptr;
  std::map<uint64_t, cudaEvent_t> events_;
  std::vector<cudaEvent_t> pool_;
  uint64_t next_token_ = 0;
};

}  // namespace

Result<std::unique_ptr<KvTransport>> NcclTransport::create(Role role, int device, const NcclOptions& opt) {
  if (device < 0 || device >= cuda_device_count()) {
    return failed_precondition(fmt::format("nccl: no CUDA device {} ({})", device,
                                           cuda_device_count() == 0 ? cuda_unavailable_reason()
                                                                    : fmt::format("{} present", cuda_device_count())));
  }
  KVB_ASSIGN_OR_RETURN(std::string uuid, cuda_device_uuid(device));
  DeviceGuard guard(device);
  cudaStream_t stream = nullptr;
  KVB_RETURN_IF_ERROR(cuda_status(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "nccl: cudaStreamCreate"));
  return make_nccl_transport(role, std::make_unique<RealNcclOps>(device, std::move(uuid), stream), opt);
}

const TransportCaps& NcclTransport::capabilities() { return nccl_capabilities(); }

bool NcclTransport::available(int* version) {
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return false;
  if (version) *version = v;
  return true;
}

}  // namespace kvb::transport
