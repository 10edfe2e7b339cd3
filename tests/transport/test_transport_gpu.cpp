// The transports on real GPUs: the conformance suite for cuda-ipc (one GPU, one process) and NCCL
// (GPUs 0 and 1), cuda-ipc between two processes, and the CUDA runtime queries. Cases tagged
// [gpu] exit 77 (ctest: Skipped) with one line when the GPUs they need are missing; the [cuda]
// case runs everywhere and checks that a machine without GPUs gets errors, not crashes.
// Run each case in its own process (ctest does): the two-process case forks before touching CUDA.
#include <catch2/catch.hpp>

#include <cuda_runtime_api.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>

#include "transport/byte_pipe.h"
#include "transport/cuda/cuda_ipc_transport.h"
#include "transport/cuda/cuda_runtime.h"
#include "transport/fd_pipe.h"
#include "transport/metadata.h"
#include "transport/select.h"
#include "transport/suite_support.h"
#if KVB_TEST_NCCL
#include "transport/cuda/nccl_transport.h"
#endif

namespace kvb::test::suite {

using namespace kvb::transport;

// One clear line, then ctest's skip code.
[[noreturn]] inline void skip(const std::string& why) {
  std::printf("SKIPPED: %s\n", why.c_str());
  std::fflush(stdout);
  std::exit(77);
}

inline void require_gpus(int n, const std::string& what) {
  const int have = cuda_device_count();
  if (have >= n) return;
  skip(fmt::format("{} needs {} GPU{}, this machine has {}{}", what, n, n > 1 ? "s" : "", have,
                   have == 0 ? " (" + cuda_unavailable_reason() + ")" : ""));
}

class DeviceBuffer final : public Buffer {
 public:
  DeviceBuffer(int device, size_t n) : device_(device), n_(n) {
    REQUIRE(cudaSetDevice(device) == cudaSuccess);
    REQUIRE(cudaMalloc(&p_, n) == cudaSuccess);
    REQUIRE(cudaMemset(p_, 0, n) == cudaSuccess);
  }
  ~DeviceBuffer() override {
    (void)cudaSetDevice(device_);
    (void)cudaFree(p_);
  }
  KvRegion region() const override {
    KvRegion r;
    r.ptr = p_;
    r.bytes = n_;
    r.is_device = true;
    r.device = device_;
    return r;
  }
  void write(size_t off, const void* src, size_t n) override {
    REQUIRE(cudaMemcpy(static_cast<char*>(p_) + off, src, n, cudaMemcpyHostToDevice) == cudaSuccess);
  }
  void read(size_t off, void* dst, size_t n) const override {
    REQUIRE(cudaMemcpy(dst, static_cast<const char*>(p_) + off, n, cudaMemcpyDeviceToHost) == cudaSuccess);
  }

 private:
  int device_;
  size_t n_;
  void* p_ = nullptr;
};

struct CudaIpcGpu {
  static constexpr const char* kName = "cuda-ipc (GPU 0, one process)";
  static constexpr bool kInjectable = false;
  static void require_available() { require_gpus(1, "cuda-ipc"); }
  static Pair make(const SuiteOptions& so) {
    MemoryPipePair pipe = make_memory_pipe();
    IpcOptions o;
    o.timeout = so.timeout;
    o.release_timeout = std::chrono::milliseconds(5000);
    auto s = CudaIpcTransport::create(Role::kSharer, 0, std::move(pipe.a), o);
    auto r = CudaIpcTransport::create(Role::kReceiver, 0, std::move(pipe.b), o);
    INFO(s.status().to_string() + " / " + r.status().to_string());
    REQUIRE(s.ok());
    REQUIRE(r.ok());
    Pair p;
    p.sharer = std::move(s).value();
    p.receiver = std::move(r).value();
    p.kill_sharer = [f = pipe.faults] { f->break_pipe(); };
    p.keep = pipe.faults;
    return p;
  }
  static std::unique_ptr<Buffer> buffer(Role, size_t n) { return std::make_unique<DeviceBuffer>(0, n); }
};

#if KVB_TEST_NCCL
struct NcclGpu {
  static constexpr const char* kName = "nccl (GPUs 0 and 1)";
  static constexpr bool kInjectable = false;
  static void require_available() {
    require_gpus(2, "nccl: a 2-rank communicator (NCCL refuses two ranks on one GPU)");
  }
  static Pair make(const SuiteOptions& so) {
    NcclOptions o;
    o.timeout = so.timeout;
    auto s = NcclTransport::create(Role::kSharer, 0, o);
    auto r = NcclTransport::create(Role::kReceiver, 1, o);
    INFO(s.status().to_string() + " / " + r.status().to_string());
    REQUIRE(s.ok());
    REQUIRE(r.ok());
    Pair p;
    p.sharer = std::move(s).value();
    p.receiver = std::move(r).value();
    p.kill_sharer = [t = p.receiver.get()] { t->abort(unavailable("the control stream to the sharer ended")); };
    return p;
  }
  static std::unique_ptr<Buffer> buffer(Role side, size_t n) {
    return std::make_unique<DeviceBuffer>(side == Role::kSharer ? 0 : 1, n);
  }
};
#endif

}  // namespace kvb::test::suite

using CudaIpcGpu = kvb::test::suite::CudaIpcGpu;  // short names for the test names
#if KVB_TEST_NCCL
using NcclGpu = kvb::test::suite::NcclGpu;
#define KVB_SUITE_TYPES CudaIpcGpu, NcclGpu
#else
#define KVB_SUITE_TYPES CudaIpcGpu
#endif
#define KVB_SUITE_TAGS "[transport][suite][gpu]"
#include "transport/transport_suite.h"

using namespace kvb;
using namespace kvb::transport;
using namespace kvb::test::suite;
using namespace std::chrono_literals;

TEST_CASE("transport cuda: without a device there are errors and no crash", "[transport][cuda]") {
  const int n = cuda_device_count();
  CHECK(n >= 0);
  MemoryPipePair pipe = make_memory_pipe();
  auto bad = CudaIpcTransport::create(Role::kSharer, n + 3, std::move(pipe.a));
  CHECK(bad.status().code() == StatusCode::kFailedPrecondition);
  CHECK(cuda_device_uuid(n + 3).status().code() == StatusCode::kFailedPrecondition);
  if (n == 0) {
    CHECK(!cuda_unavailable_reason().empty());
    CHECK(cuda_endpoint_info(0).status().code() == StatusCode::kFailedPrecondition);
  }
#if KVB_TEST_NCCL
  int version = 0;
  CHECK(NcclTransport::available(&version));
  CHECK(version >= 21900);
  CHECK(NcclTransport::create(Role::kReceiver, n + 3).status().code() == StatusCode::kFailedPrecondition);
  CHECK(NcclTransport::capabilities().name == "nccl");
  CHECK(!NcclTransport::capabilities().same_device);
#endif
  CHECK(CudaIpcTransport::capabilities().name == "cuda-ipc");
  CHECK(!CudaIpcTransport::capabilities().bidirectional);
}

TEST_CASE("transport cuda: endpoint info of a GPU", "[transport][gpu]") {
  require_gpus(1, "cuda_endpoint_info");
  auto info = cuda_endpoint_info(0);
  INFO(info.status().to_string());
  REQUIRE(info.ok());
  CHECK(info->gpu_uuid.rfind("GPU-", 0) == 0);
  CHECK(info->host_id == local_host_id());
  // One agent against itself: one GPU, one host → cuda-ipc when IPC is supported.
  auto sel = select_transport(TransportChoice::kAuto, *info, *info);
  REQUIRE(sel.ok());
  CHECK(sel->kind == (info->cuda_ipc ? TransportKind::kCudaIpc : TransportKind::kGrpc));
}

#if KVB_TEST_NCCL
TEST_CASE("transport nccl: two endpoints on one GPU are refused", "[transport][gpu]") {
  require_gpus(1, "nccl on one GPU (the refusal)");
  auto s = NcclTransport::create(Role::kSharer, 0);
  auto r = NcclTransport::create(Role::kReceiver, 0);
  REQUIRE(s.ok());
  REQUIRE(r.ok());
  auto ms = (*s)->metadata();
  REQUIRE(ms.ok());
  CHECK((*r)->connect(*ms).code() == StatusCode::kFailedPrecondition);
}

TEST_CASE("transport nccl: a send waits for its ready_event", "[transport][gpu]") {
  require_gpus(2, "nccl: a 2-rank communicator");
  Pair p = NcclGpu::make({});
  constexpr size_t kSize = 8 << 20;
  DeviceBuffer src(0, kSize), dst(1, kSize);
  MemoryHandle hs = must_register(*p.sharer, src), hr = must_register(*p.receiver, dst);
  connect(p);
  // The producer: a memset on its own stream, then an event the send waits for.
  REQUIRE(cudaSetDevice(0) == cudaSuccess);
  cudaStream_t producer = nullptr;
  cudaEvent_t ready = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&producer, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaEventCreateWithFlags(&ready, cudaEventDisableTiming) == cudaSuccess);
  REQUIRE(cudaMemsetAsync(src.region().ptr, 0x5a, kSize, producer) == cudaSuccess);
  REQUIRE(cudaEventRecord(ready, producer) == cudaSuccess);
  PostOptions po;
  po.ready_event = ready;
  auto r = must_post(p.receiver->post_recv(hr, 0, kSize, 1));
  auto s = must_post(p.sharer->post_send(hs, 0, kSize, 1, po));
  require_done(r);
  require_done(s);
  const std::vector<char> got = dst.all();
  CHECK(std::all_of(got.begin(), got.end(), [](char c) { return c == 0x5a; }));
  (void)cudaEventDestroy(ready);
  (void)cudaStreamDestroy(producer);
}
#endif

// cuda-ipc as agents use it: two processes on one GPU, the receiver opening the sharer's handle.
TEST_CASE("transport cuda-ipc: two processes on one GPU", "[transport][gpu][process]") {
  const auto [data_a, data_b] = test::socket_pair();
  const auto [ctl_a, ctl_b] = test::socket_pair();
  REQUIRE(data_a >= 0);
  REQUIRE(ctl_a >= 0);
  constexpr size_t kSize = 6 << 20;
  constexpr int kTags = 4;
  const pid_t pid = fork();  // before any CUDA call in this process
  REQUIRE(pid >= 0);
  if (pid == 0) {  // the sharer
    ::close(data_b);
    ::close(ctl_b);
    int rc = 1;
    {
      auto ctl = test::make_fd_pipe(ctl_a);
      if (cuda_device_count() < 1) {
        (void)ctl->send("skip:" + cuda_unavailable_reason(), Clock::now() + 5s);
        _exit(77);
      }
      void* mem = nullptr;
      (void)cudaSetDevice(0);
      if (cudaMalloc(&mem, kSize) != cudaSuccess || cudaMemset(mem, 0x3c, kSize) != cudaSuccess) _exit(4);
      {
        auto t = CudaIpcTransport::create(Role::kSharer, 0, test::make_fd_pipe(data_a));
        if (!t.ok()) _exit(5);
        auto h = (*t)->register_memory(KvRegion{mem, kSize, true, 0});
        auto md = (*t)->metadata();
        if (h.ok() && md.ok() && ctl->send(*md, Clock::now() + 5s).ok()) {
          auto peer = ctl->recv(Clock::now() + 30s);
          if (peer.ok() && *peer && (*t)->connect(**peer).ok()) {
            std::vector<Transfer> sends;
            for (int i = 0; i < kTags; ++i) {
              auto x = (*t)->post_send(*h, size_t(i) * (kSize / kTags), kSize / kTags, uint64_t(i));
              if (x.ok()) sends.push_back(std::move(x).value());
            }
            rc = sends.size() == kTags ? 0 : 2;
            for (auto& x : sends) {
              if (!x.wait(Clock::now() + 30s).done()) rc = 3;
            }
            (void)ctl->recv(Clock::now() + 30s);  // the receiver's "done"
          }
        }
        // h, then t: the handle waits for the receiver's UNMAPPED before the memory goes.
      }
      (void)cudaFree(mem);
    }
    _exit(rc);
  }
  ::close(data_a);
  ::close(ctl_a);
  auto ctl = test::make_fd_pipe(ctl_b);
  auto first = ctl->recv(Clock::now() + 60s);
  REQUIRE(first.ok());
  REQUIRE(first->has_value());
  if ((*first)->rfind("skip:", 0) == 0) {
    waitpid(pid, nullptr, 0);
    skip("cuda-ipc across processes needs a GPU: " + (*first)->substr(5));
  }
  auto t = CudaIpcTransport::create(Role::kReceiver, 0, test::make_fd_pipe(data_b));
  INFO(t.status().to_string());
  REQUIRE(t.ok());
  DeviceBuffer dst(0, kSize);
  MemoryHandle h = must_register(**t, dst);
  std::vector<Transfer> recvs;
  for (int i = kTags; i-- > 0;) {
    recvs.push_back(must_post((*t)->post_recv(h, size_t(i) * (kSize / kTags), kSize / kTags, uint64_t(i))));
  }
  auto md = (*t)->metadata();
  REQUIRE(md.ok());
  REQUIRE((*t)->connect(**first).ok());
  REQUIRE(ctl->send(*md, Clock::now() + 5s).ok());
  for (auto& x : recvs) require_done(x);
  const std::vector<char> got = dst.all();
  CHECK(std::all_of(got.begin(), got.end(), [](char c) { return c == 0x3c; }));
  REQUIRE(ctl->send("done", Clock::now() + 5s).ok());
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}
