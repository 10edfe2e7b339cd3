// CudaDevice, the device and pinned buffer types, CudaBackend, and discovery: the glue between
// kvb::Backend and the ops in kernels/cuda/*.cu. Contracts: cuda_backend.h.
#include "kernels/cuda/cuda_backend.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <new>
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/quants.h"

namespace kvb::cuda {
namespace {

// ---- memory ----

// Device memory (cudaMalloc) or pinned host memory (cudaHostAlloc). set/get are synchronous
// cudaMemcpy calls on the legacy stream, so they also wait for the device's blocking streams.
class CudaBuffer final : public Buffer {
 public:
  CudaBuffer(DevicePtr mem, size_t size, int device)
      : dev_(std::move(mem)), size_(size), device_(device), is_host_(false) {}
  CudaBuffer(PinnedPtr mem, size_t size, int device)
      : host_(std::move(mem)), size_(size), device_(device), is_host_(true) {}

  void* data() override { return is_host_ ? host_.get() : dev_.get(); }
  size_t size() const override { return size_; }
  bool is_host() const override { return is_host_; }
  Status set(size_t offset, const void* host_src, size_t n) override {
    KVB_RETURN_IF_ERROR(check_range("set", offset, n, host_src));
    if (n == 0) return Status::Ok();
    DeviceGuard guard(device_);
    KVB_RETURN_IF_ERROR(guard.status());
    KVB_CUDA_CHECK(cudaMemcpy(static_cast<char*>(data()) + offset, host_src, n, cudaMemcpyDefault));
    return Status::Ok();
  }
  Status get(size_t offset, void* host_dst, size_t n) const override {
    KVB_RETURN_IF_ERROR(check_range("get", offset, n, host_dst));
    if (n == 0) return Status::Ok();
    DeviceGuard guard(device_);
    KVB_RETURN_IF_ERROR(guard.status());
    const void* base = is_host_ ? host_.get() : dev_.get();
    KVB_CUDA_CHECK(cudaMemcpy(host_dst, static_cast<const char*>(base) + offset, n, cudaMemcpyDefault));
    return Status::Ok();
  }

 private:
  Status check_range(const char* what, size_t offset, size_t n, const void* host) const {
    if (offset > size_ || n > size_ - offset) {
      return out_of_range(fmt::format("cuda buffer {}: [{}, +{}) is outside {} bytes", what, offset, n, size_));
    }
    if (n > 0 && host == nullptr) return invalid_argument(fmt::format("cuda buffer {}: null host pointer", what));
    return Status::Ok();
  }

  DevicePtr dev_;
  PinnedPtr host_;
  size_t size_;
  int device_;
  bool is_host_;
};

class CudaBufferType final : public BufferType {
 public:
  CudaBufferType(int device, bool host) : device_(device), host_(host) {}
  std::string name() const override { return fmt::format("CUDA{}{}", device_, host_ ? "_host" : ""); }
  size_t alignment() const override { return 256; }  // cudaMalloc and cudaHostAlloc both give >= 256
  bool is_host() const override { return host_; }
  Result<std::unique_ptr<Buffer>> alloc(size_t bytes) const override {
    DeviceGuard guard(device_);
    KVB_RETURN_IF_ERROR(guard.status());
    std::unique_ptr<Buffer> b;
    if (host_) {
      // Portable: usable from every device's backends, not only the one current here.
      KVB_ASSIGN_OR_RETURN(PinnedPtr mem, pinned_alloc(bytes, cudaHostAllocPortable));
      b.reset(new (std::nothrow) CudaBuffer(std::move(mem), bytes, device_));
    } else {
      KVB_ASSIGN_OR_RETURN(DevicePtr mem, device_alloc(bytes));
      b.reset(new (std::nothrow) CudaBuffer(std::move(mem), bytes, device_));
    }
    if (b == nullptr) return resource_exhausted("cuda: cannot allocate a buffer object");
    return b;
  }

 private:
  int device_;
  bool host_;
};

// ---- device ----

class CudaDevice final : public Device {
 public:
  CudaDevice(int ordinal, const cudaDeviceProp& prop, size_t max_smem)
      : ordinal_(ordinal),
        n_sm_(prop.multiProcessorCount),
        max_smem_(max_smem),
        total_memory_(prop.totalGlobalMem),
        description_(fmt::format("{} (sm_{}{}, {} SMs, {:.1f} GiB)", prop.name, prop.major, prop.minor,
                                 prop.multiProcessorCount, double(prop.totalGlobalMem) / double(1ull << 30))),
        device_buffers_(ordinal, false),
        host_buffers_(ordinal, true) {}

  std::string name() const override { return fmt::format("cuda:{}", ordinal_); }
  std::string description() const override { return description_; }
  DeviceMemory memory() const override {
    DeviceGuard guard(ordinal_);
    size_t free = 0, total = 0;
    if (!guard.status().ok() || cudaMemGetInfo(&free, &total) != cudaSuccess) {
      (void)cudaGetLastError();
      return DeviceMemory{total_memory_, 0};
    }
    return DeviceMemory{total, free};
  }
  // GGUF block weights are widened to F16 at upload (matmul); embedding tables of those types are
  // widened by the caller (engine/forward.cpp), not read by the device.
  bool supports_op(OpKind op, DType t) const override {
    return op_supports_dtype(op, t) && !(op == OpKind::kEmbedding && is_gguf_quant(t));
  }
  const BufferType& buffer_type() const override { return device_buffers_; }
  const BufferType& host_buffer_type() const { return host_buffers_; }
  Result<std::unique_ptr<Backend>> create_backend() const override;

  int ordinal() const { return ordinal_; }
  int n_sm() const { return n_sm_; }
  size_t max_smem() const { return max_smem_; }

 private:
  int ordinal_;
  int n_sm_;
  size_t max_smem_;
  size_t total_memory_;
  std::string description_;
  CudaBufferType device_buffers_;
  CudaBufferType host_buffers_;
};

// ---- backend ----

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaDevice& dev) : dev_(dev) {}

  // Creates the stream, the cuBLAS handle bound to it, and the mapped error report.
  Status init() {
    DeviceGuard guard(dev_.ordinal());
    KVB_RETURN_IF_ERROR(guard.status());
    KVB_ASSIGN_OR_RETURN(stream_, make_stream());
    KVB_ASSIGN_OR_RETURN(cublas_, make_cublas(stream_.get()));
    KVB_ASSIGN_OR_RETURN(cublas_workspace_, device_alloc(kCublasWorkspaceBytes));
    KVB_RETURN_IF_ERROR(bind_cublas(stream_.get()));
    KVB_ASSIGN_OR_RETURN(error_host_, pinned_alloc(sizeof(DeviceErrorReport), cudaHostAllocMapped));
    std::memset(error_host_.get(), 0, sizeof(DeviceErrorReport));
    void* error_dev = nullptr;
    KVB_CUDA_CHECK(cudaHostGetDevicePointer(&error_dev, error_host_.get(), 0));
    ctx_.device = dev_.ordinal();
    ctx_.stream = stream_.get();
    ctx_.cublas = cublas_.get();
    ctx_.scratch = &scratch_;
    ctx_.error = static_cast<DeviceErrorReport*>(error_dev);
    ctx_.n_sm = dev_.n_sm();
    ctx_.max_smem_per_block = dev_.max_smem();
    return Status::Ok();
  }

  ~CudaBackend() override {
    // Queued work may still use the scratch, and every handle belongs to this device.
    DeviceGuard guard(dev_.ordinal());
    if (capturing_) (void)end_graph(false);
    if (stream_ != nullptr) (void)cudaStreamSynchronize(stream_.get());
    execs_.clear();
    capture_stream_.reset();
    scratch_ = Scratch();
    gather_ = Scratch();
    cublas_.reset();
    cublas_workspace_.reset();
    error_host_.reset();
    stream_.reset();
    (void)cudaGetLastError();
  }

  OpContext* context() { return &ctx_; }

  const Device& device() const override { return dev_; }
  void set_n_threads(int) override {}
  int n_threads() const override { return 1; }

  Result<std::unique_ptr<Weight>> upload_weight(const Tensor& host) override {
    DeviceGuard guard(ctx_.device);
    KVB_RETURN_IF_ERROR(guard.status());
    return cuda::upload_weight(ctx_, host);
  }
  Status copy_from_host(void* dst, const void* host_src, size_t n) override { return copy_async(dst, host_src, n); }
  Status copy_to_host(void* host_dst, const void* src, size_t n) override { return copy_async(host_dst, src, n); }
  Status copy(void* dst, const void* src, size_t n) override { return copy_async(dst, src, n); }

  // Waits for the stream, then reports a device-detected input error (embedding ids) once.
  Status synchronize() override {
    DeviceGuard guard(ctx_.device);
    KVB_RETURN_IF_ERROR(guard.status());
    KVB_CUDA_CHECK(cudaStreamSynchronize(stream_.get()));
    auto* report = static_cast<volatile DeviceErrorReport*>(error_host_.get());
    const unsigned long long code = report->code;
    if (code == 0) return Status::Ok();
    const long long limit = report->limit;
    report->code = 0;
    const auto row = int64_t((code >> 32) & 0x7fffffffu);
    const auto id = int32_t(uint32_t(code & 0xffffffffu));
    return invalid_argument(fmt::format("embedding: token id {} at {} is outside [0, {})", id, row, limit));
  }

  // Graphs are recorded on a private non-blocking stream (a blocking one would make every
  // legacy-stream call of another thread on this device, e.g. Buffer::get, break the recording)
  // and launched on the backend's stream. Instances are kept per shape: a batched decode step's
  // graph has a node count of its own for each number of sequences (and prefix segments) it
  // holds, so up to kMaxGraphShapes instances are kept, keyed by node count, most recently used
  // first. A new recording updates the instance of its shape in place (cudaGraphExecUpdate: new
  // pointers and sizes, same topology) or, when there is none or the topology differs after
  // all, is instantiated, evicting the least recently used shape.
  Status begin_graph() override {
    DeviceGuard guard(ctx_.device);
    KVB_RETURN_IF_ERROR(guard.status());
    if (capturing_) return failed_precondition("cuda begin_graph: a recording is already open");
    if (capture_stream_ == nullptr) {
      KVB_ASSIGN_OR_RETURN(capture_stream_, make_stream(cudaStreamNonBlocking));
    }
    KVB_RETURN_IF_ERROR(bind_cublas(capture_stream_.get()));
    const cudaError_t e = cudaStreamBeginCapture(capture_stream_.get(), cudaStreamCaptureModeThreadLocal);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      KVB_RETURN_IF_ERROR(bind_cublas(stream_.get()));
      return status_from_cuda(e, "cudaStreamBeginCapture", __FILE__, __LINE__);
    }
    ctx_.stream = capture_stream_.get();
    capturing_ = true;
    return Status::Ok();
  }

  Status end_graph(bool run) override {
    DeviceGuard guard(ctx_.device);
    KVB_RETURN_IF_ERROR(guard.status());
    if (!capturing_) return failed_precondition("cuda end_graph: no recording is open");
    cudaGraph_t raw = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(capture_stream_.get(), &raw);
    const GraphPtr graph(raw);
    capturing_ = false;
    ctx_.stream = stream_.get();
    (void)cudaGetLastError();  // what invalidated a recording is not sticky: clear it
    KVB_RETURN_IF_ERROR(bind_cublas(stream_.get()));
    if (ended != cudaSuccess) return status_from_cuda(ended, "cudaStreamEndCapture", __FILE__, __LINE__);
    if (!run) return Status::Ok();
    size_t n_nodes = 0;
    KVB_CUDA_CHECK(cudaGraphGetNodes(graph.get(), nullptr, &n_nodes));
    auto it = std::find_if(execs_.begin(), execs_.end(), [&](const ShapeExec& e) { return e.n_nodes == n_nodes; });
    if (it != execs_.end()) {
      cudaGraphExecUpdateResultInfo info{};
      if (cudaGraphExecUpdate(it->exec.get(), graph.get(), &info) != cudaSuccess) {
        (void)cudaGetLastError();  // another topology after all: instantiate below
        execs_.erase(it);
        it = execs_.end();
      }
    }
    if (it == execs_.end()) {
      cudaGraphExec_t ex = nullptr;
      KVB_CUDA_CHECK(cudaGraphInstantiate(&ex, graph.get(), 0));
      if (execs_.size() >= kMaxGraphShapes) execs_.pop_back();
      execs_.insert(execs_.begin(), ShapeExec{n_nodes, GraphExecPtr(ex)});
      it = execs_.begin();
    } else if (it != execs_.begin()) {
      std::rotate(execs_.begin(), it, it + 1);  // most recently used first
      it = execs_.begin();
    }
    KVB_CUDA_CHECK(cudaGraphLaunch(it->exec.get(), stream_.get()));
    return Status::Ok();
  }

  // cuBLAS picks its algorithm by shape: RowMode is advisory here (results equal within rounding).
  using Backend::attention;
  using Backend::matmul;
  Status matmul(const Tensor& x, std::span<const MatmulOut> outs, RowMode /*mode*/) override {
    return run([&] { return cuda::matmul(ctx_, x, outs); });
  }
  Status rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) override {
    return run([&] { return cuda::rms_norm(ctx_, x, w, eps, y); });
  }
  Status rope(const Tensor& x, const Tensor& pos, const RopeParams& p) override {
    return run([&] { return cuda::rope(ctx_, x, pos, p); });
  }
  Status softmax(const Tensor& x) override {
    return run([&] { return cuda::softmax(ctx_, x); });
  }
  Status silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    return run([&] { return cuda::silu_mul(ctx_, gate, up, out); });
  }
  Status add(const Tensor& a, const Tensor& b, const Tensor& out) override {
    return run([&] { return cuda::add(ctx_, a, b, out); });
  }
  Status attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                   RowMode /*mode*/) override {
    return run([&] { return cuda::attention(ctx_, q, k, v, out, scale); });
  }
  // A sequence with prefix segments is gathered into one contiguous K and V (device-to-device
  // copies on the stream, recordable in a graph) and then runs the same kernel. The copies move
  // n_kv cells per layer per step: small next to the GPU's bandwidth, but a kernel that reads the
  // segments in place would save them.
  Status attention_batch(std::span<const AttentionSeq> seqs, float scale, RowMode /*mode*/) override {
    return run([&]() -> Status {
      for (const AttentionSeq& a : seqs) {
        if (a.prefix.empty()) {
          KVB_RETURN_IF_ERROR(cuda::attention(ctx_, a.q, a.k, a.v, a.out, scale));
          continue;
        }
        KVB_ASSIGN_OR_RETURN(const AttentionShapes s, check_attention_seq(a, scale));
        const size_t k_row = row_bytes(a.k.dtype, s.n_head_kv * s.hd), v_row = row_bytes(a.v.dtype, s.n_head_kv * s.hd);
        const size_t k_bytes = (size_t(s.n_kv) * k_row + 255) / 256 * 256;
        KVB_ASSIGN_OR_RETURN(void* mem, gather_.get(k_bytes + size_t(s.n_kv) * v_row, ctx_.stream));
        auto* kd = static_cast<uint8_t*>(mem);
        uint8_t* vd = kd + k_bytes;
        auto put = [&](const Tensor& k, const Tensor& v) -> Status {
          KVB_CUDA_CHECK(cudaMemcpyAsync(kd, k.data, k.nbytes(), cudaMemcpyDeviceToDevice, ctx_.stream));
          KVB_CUDA_CHECK(cudaMemcpyAsync(vd, v.data, v.nbytes(), cudaMemcpyDeviceToDevice, ctx_.stream));
          kd += k.nbytes();
          vd += v.nbytes();
          return Status::Ok();
        };
        for (const KvSegment& seg : a.prefix) KVB_RETURN_IF_ERROR(put(seg.k, seg.v));
        KVB_RETURN_IF_ERROR(put(a.k, a.v));
        const Tensor k = Tensor::make(a.k.dtype, mem, {s.n_kv, s.n_head_kv, s.hd});
        const Tensor v = Tensor::make(a.v.dtype, static_cast<uint8_t*>(mem) + k_bytes, {s.n_kv, s.n_head_kv, s.hd});
        KVB_RETURN_IF_ERROR(cuda::attention(ctx_, a.q, k, v, a.out, scale));
      }
      return Status::Ok();
    });
  }
  Status embedding(const Tensor& table, const Tensor& tokens, const Tensor& out) override {
    return run([&] { return cuda::embedding(ctx_, table, tokens, out); });
  }
  Status convert(const Tensor& src, const Tensor& dst) override {
    return run([&] { return cuda::convert(ctx_, src, dst); });
  }
  Status gelu(const Tensor& x, const Tensor& out) override {
    return run([&] { return cuda::gelu(ctx_, x, out); });
  }
  Status gate_add(const Tensor& receiver, const Tensor& logits, const Tensor& projected, const Tensor& out) override {
    return run([&] { return cuda::gate_add(ctx_, receiver, logits, projected, out); });
  }

 private:
  // cuBLAS on `stream`, with the backend's own workspace, so that it never allocates (which a
  // graph recording cannot contain). cublasSetStream resets the workspace to cuBLAS's default
  // pool, so both are set together, every time.
  Status bind_cublas(cudaStream_t stream) {
    KVB_CUBLAS_CHECK(cublasSetStream(cublas_.get(), stream));
    KVB_CUBLAS_CHECK(cublasSetWorkspace(cublas_.get(), cublas_workspace_.get(), kCublasWorkspaceBytes));
    return Status::Ok();
  }

  template <class F>
  Status run(F&& op) {
    DeviceGuard guard(ctx_.device);
    KVB_RETURN_IF_ERROR(guard.status());
    return op();
  }

  Status copy_async(void* dst, const void* src, size_t n) {
    if (n == 0) return Status::Ok();
    if (dst == nullptr || src == nullptr) return invalid_argument("cuda copy: null pointer");
    DeviceGuard guard(ctx_.device);
    KVB_RETURN_IF_ERROR(guard.status());
    KVB_CUDA_CHECK(cudaMemcpyAsync(dst, src, n, cudaMemcpyDefault, stream_.get()));
    return Status::Ok();
  }

  // cuBLAS's recommendation for Hopper (the largest of any architecture).
  static constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

  const CudaDevice& dev_;
  StreamPtr stream_;
  CublasPtr cublas_;
  DevicePtr cublas_workspace_;
  PinnedPtr error_host_;  // DeviceErrorReport, mapped into the device's address space
  Scratch scratch_;
  Scratch gather_;  // attention_batch's contiguous copy of a segmented sequence's cells
  OpContext ctx_;  // ctx_.stream is capture_stream_ while a graph is recorded
  StreamPtr capture_stream_;  // created on the first begin_graph()
  // Instantiated graphs by shape (node count), most recently used first (end_graph).
  struct ShapeExec {
    size_t n_nodes = 0;
    GraphExecPtr exec;
  };
  static constexpr size_t kMaxGraphShapes = 16;
  std::vector<ShapeExec> execs_;
  bool capturing_ = false;
};

Result<std::unique_ptr<Backend>> CudaDevice::create_backend() const {
  std::unique_ptr<CudaBackend> b(new (std::nothrow) CudaBackend(*this));
  if (b == nullptr) return resource_exhausted("cuda: cannot allocate a backend object");
  Status st = b->init();
  if (!st.ok()) return st.with_context(fmt::format("creating a backend on {}", name()));
  return std::unique_ptr<Backend>(std::move(b));
}

// ---- discovery ----

struct Registry {
  std::vector<std::unique_ptr<CudaDevice>> owned;
  Discovery discovery;
};

Registry probe() {
  Registry reg;
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    (void)cudaGetLastError();
    reg.discovery.problem = fmt::format("{} ({})", cudaGetErrorString(e), cudaGetErrorName(e));
    return reg;
  }
  if (n == 0) {
    reg.discovery.problem = "the CUDA driver reports no GPU";
    return reg;
  }
  std::string skipped;
  for (int i = 0; i < n; ++i) {
    cudaDeviceProp prop{};
    int max_smem = 0;
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess ||
        cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, i) != cudaSuccess) {
      const cudaError_t pe = cudaGetLastError();
      skipped += fmt::format("{}cuda:{} cannot be queried: {}", skipped.empty() ? "" : "; ", i, cudaGetErrorString(pe));
      continue;
    }
    if (prop.major < 8) {
      skipped += fmt::format("{}cuda:{} ({}) is sm_{}{}; kvbridge's kernels need compute capability 8.0 or newer",
                             skipped.empty() ? "" : "; ", i, prop.name, prop.major, prop.minor);
      continue;
    }
    reg.owned.push_back(std::make_unique<CudaDevice>(i, prop, size_t(max_smem)));
    reg.discovery.devices.push_back(reg.owned.back().get());
  }
  reg.discovery.problem = std::move(skipped);
  return reg;
}

}  // namespace

const Discovery& discover() {
  static const Registry reg = probe();
  return reg.discovery;
}

const BufferType* host_buffer_type(const Device& d) {
  const auto* cd = dynamic_cast<const CudaDevice*>(&d);
  return cd != nullptr ? &cd->host_buffer_type() : nullptr;
}

OpContext* op_context(Backend& b) {
  auto* cb = dynamic_cast<CudaBackend*>(&b);
  return cb != nullptr ? cb->context() : nullptr;
}

}  // namespace kvb::cuda
