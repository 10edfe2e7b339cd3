#include "transport/cuda/cuda_ipc_transport.h"

#include <cuda_runtime_api.h>
#include <fmt/format.h>

#include <cstring>
#include <map>
#include <set>
#include <vector>

#include "transport/cuda/cuda_runtime.h"
#include "transport/cuda/cuda_status.h"
#include "transport/metadata.h"
#include "transport/transfer_core.h"

namespace kvb::transport {

namespace {

using cuda_detail::cuda_status;
using cuda_detail::DeviceGuard;

const TransportCaps kCaps = [] {
  TransportCaps c;
  c.name = "cuda-ipc";
  c.device_memory = true;
  c.same_node_only = true;
  c.bidirectional = false;
  c.device_events = true;
  return c;
}();

// The exported handle: cudaIpcMemHandle_t, then who exported it (process nonce, pointer, device).
constexpr size_t kHandleBytes = sizeof(cudaIpcMemHandle_t) + 16 + 8 + 4;

class CudaIpcOps final : public IpcDeviceOps {
 public:
  CudaIpcOps(int device, cudaStream_t stream) : device_(device), stream_(stream) {}

  ~CudaIpcOps() override {
    DeviceGuard guard(device_);
    (void)cudaStreamSynchronize(stream_);
    for (void* base : opened_) (void)cudaIpcCloseMemHandle(base);
    for (auto& [tok, ev] : events_) (void)cudaEventDestroy(ev);
    for (cudaEvent_t ev : pool_) (void)cudaEventDestroy(ev);
    (void)cudaStreamDestroy(stream_);
  }

  const TransportCaps& caps() const override { return kCaps; }

  Result<std::string> export_region(const KvRegion& region) override {
    DeviceGuard guard(region.device);
    cudaIpcMemHandle_t h;
    const cudaError_t e = cudaIpcGetMemHandle(&h, region.ptr);
    if (e != cudaSuccess) {
      return cuda_status(e, "cuda-ipc: cudaIpcGetMemHandle (the region must be the base of a cudaMalloc allocation)");
    }
    detail::ByteWriter w;
    w.raw(std::string_view(reinterpret_cast<const char*>(&h), sizeof(h)));
    w.u64(process_nonce().hi);
    w.u64(process_nonce().lo);
    w.u64(reinterpret_cast<uintptr_t>(region.ptr));
    w.u32(uint32_t(region.device));
    return w.take();
  }

  Result<bool> event_ready(void* event) override {
    const cudaError_t e = cudaEventQuery(static_cast<cudaEvent_t>(event));
    if (e == cudaErrorNotReady) return false;
    KVB_RETURN_IF_ERROR(cuda_status(e, "cuda-ipc: cudaEventQuery(ready_event)"));
    return true;
  }

  Result<void*> open(std::string_view handle) override {
    detail::ByteReader r(handle);
    std::string_view raw;
    TransferId nonce;
    uint64_t ptr = 0;
    uint32_t device = 0;
    if (handle.size() != kHandleBytes || !r.raw(sizeof(cudaIpcMemHandle_t), raw) || !r.u64(nonce.hi) ||
        !r.u64(nonce.lo) || !r.u64(ptr) || !r.u32(device) || !r.done()) {
      return invalid_argument("cuda-ipc: a malformed memory handle");
    }
    if (nonce == process_nonce()) return reinterpret_cast<void*>(uintptr_t(ptr));  // our own process
    cudaIpcMemHandle_t h;
    std::memcpy(&h, raw.data(), sizeof(h));
    DeviceGuard guard(device_);
    void* base = nullptr;
    KVB_CUDA_RETURN_IF_ERROR(cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess),
                             fmt::format("cuda-ipc: cudaIpcOpenMemHandle (exported on device {})", device));
    opened_.insert(base);
    return base;
  }

  Status close(void* base) override {
    if (!opened_.erase(base)) return Status::Ok();  // our own process's pointer
    DeviceGuard guard(device_);
    return cuda_status(cudaIpcCloseMemHandle(base), "cuda-ipc: cudaIpcCloseMemHandle");
  }

  Result<uint64_t> copy_async(void* dst, const void* src, size_t bytes) override {
    DeviceGuard guard(device_);
    cudaEvent_t ev = nullptr;
    if (!pool_.empty()) {
      ev = pool_.back();
      pool_.pop_back();
    } else {
      KVB_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming), "cuda-ipc: cudaEventCreate");
    }
    cudaError_t e = cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, stream_);
    if (e == cudaSuccess) e = cudaEventRecord(ev, stream_);
    if (e != cudaSuccess) {
      pool_.push_back(ev);
      return cuda_status(e, "cuda-ipc: cudaMemcpyAsync");
    }
    const uint64_t tok = ++next_token_;
    events_[tok] = ev;
    return tok;
  }

  Result<bool> copy_done(uint64_t token) override {
    const auto it = events_.find(token);
    if (it == events_.end()) return internal_error("cuda-ipc: unknown copy token");
    const cudaError_t e = cudaEventQuery(it->second);
    if (e == cudaErrorNotReady) return false;
    KVB_RETURN_IF_ERROR(cuda_status(e, "cuda-ipc: the copy"));
    return true;
  }

  void* copy_event(uint64_t token) override {
    const auto it = events_.find(token);
    return it == events_.end() ? nullptr : static_cast<void*>(it->second);
  }

  void release_copy(uint64_t token) override {
    const auto it = events_.find(token);
    if (it == events_.end()) return;
    pool_.push_back(it->second);
    events_.erase(it);
  }

 private:
  const int device_;
  const cudaStream_t stream_;
  std::set<void*> opened_;
  std::map<uint64_t, cudaEvent_t> events_;
  std::vector<cudaEvent_t> pool_;
  uint64_t next_token_ = 0;
};

}  // namespace

Result<std::unique_ptr<KvTransport>> CudaIpcTransport::create(Role role, int device, std::unique_ptr<BytePipe> control,
                                                              const IpcOptions& opt) {
  if (!control) return invalid_argument("cuda-ipc: no control pipe");
  if (device < 0 || device >= cuda_device_count()) {
    return failed_precondition(fmt::format("cuda-ipc: no CUDA device {} ({})", device,
                                           cuda_device_count() == 0 ? cuda_unavailable_reason()
                                                                    : fmt::format("{} present", cuda_device_count())));
  }
  DeviceGuard guard(device);
  cudaStream_t stream = nullptr;
  KVB_CUDA_RETURN_IF_ERROR(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cuda-ipc: cudaStreamCreate");
  return make_ipc_transport(role, std::make_unique<CudaIpcOps>(device, stream), std::move(control), opt);
}

const TransportCaps& CudaIpcTransport::capabilities() { return kCaps; }

}  // namespace kvb::transport
