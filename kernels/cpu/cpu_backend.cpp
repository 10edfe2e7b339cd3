// The CPU device, host buffers and CpuBackend: the glue between kvb::Backend and the ops in
// kernels/cpu/*.cpp. ISA detection happens once per process.
#include "kernels/cpu/cpu_backend.h"

#include <sched.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <thread>

#if KVB_CPU_X86
#include <cpuid.h>
#endif

#include <fmt/format.h>

#include "kernels/cpu/aligned_buffer.h"
#include "kernels/cpu/ops.h"
#include "kernels/cpu/packed_weight.h"

namespace kvb::cpu {
namespace {

// ---- ISA detection ----

#if KVB_CPU_X86
uint64_t read_xcr0() {
  uint32_t lo = 0, hi = 0;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (uint64_t(hi) << 32) | lo;
}
#endif

Isa hardware_isa() {
#if KVB_CPU_X86
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx)) return Isa::kGeneric;
  const bool osxsave = ecx & (1u << 27), avx = ecx & (1u << 28), fma = ecx & (1u << 12), f16c = ecx & (1u << 29);
  if (!(osxsave && avx && fma && f16c)) return Isa::kGeneric;
  const uint64_t xcr0 = read_xcr0();
  if ((xcr0 & 0x6) != 0x6) return Isa::kGeneric;  // the OS saves XMM and YMM state
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return Isa::kGeneric;
  const bool avx2 = ebx & (1u << 5);
  if (!avx2) return Isa::kGeneric;
  const bool avx512 =
      (ebx & (1u << 16)) && (ebx & (1u << 17)) && (ebx & (1u << 30)) && (ebx & (1u << 31));  // F DQ BW VL
  if (avx512 && (xcr0 & 0xe6) == 0xe6) return Isa::kAvx512;                                  // and opmask + ZMM state
  return Isa::kAvx2;
#else
  return Isa::kGeneric;
#endif
}

Isa compute_detected_isa() {
  Isa isa = hardware_isa();
  if (const char* env = std::getenv("KVBRIDGE_CPU_ISA"); env != nullptr && *env != '\0') {
    const std::string_view want(env);
    Isa lowered = isa;
    if (want == "generic") {
      lowered = Isa::kGeneric;
    } else if (want == "avx2") {
      lowered = Isa::kAvx2;
    } else if (want == "avx512") {
      lowered = Isa::kAvx512;
    } else {
      std::fprintf(stderr, "kvbridge: ignoring KVBRIDGE_CPU_ISA=%s (expected avx512, avx2 or generic)\n", env);
    }
    if (int(lowered) < int(isa)) isa = lowered;  // the variable can only lower the level
  }
  return isa;
}

const GemmKernels& gemm_for(Isa isa) {
#if KVB_CPU_X86
  if (isa == Isa::kAvx512) return gemm_kernels_avx512();
  if (isa == Isa::kAvx2) return gemm_kernels_avx2();
#endif
  (void)isa;
  return gemm_kernels_generic();
}

// AVX-512 VNNI (CPUID.7.0:ECX bit 11), for the integer kernels of GGUF block weights.
bool hardware_has_avx512_vnni() {
#if KVB_CPU_X86
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  return (ecx & (1u << 11)) != 0;
#else
  return false;
#endif
}

const VecKernels& vec_for(Isa isa) {
#if KVB_CPU_X86
  if (isa == Isa::kAvx512) return vec_kernels_avx512();
  if (isa == Isa::kAvx2) return vec_kernels_avx2();
#endif
  (void)isa;
  return vec_kernels_generic();
}

int default_n_threads() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    const int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  const unsigned hc = std::thread::hardware_concurrency();
  return hc > 0 ? int(hc) : 1;
}

// ---- memory ----

class CpuBuffer final : public Buffer {
 public:
  explicit CpuBuffer(AlignedBuffer mem) : mem_(std::move(mem)) {}
  void* data() override { return mem_.data(); }
  size_t size() const override { return mem_.size(); }
  bool is_host() const override { return true; }
  Status set(size_t offset, const void* host_src, size_t n) override {
    if (offset > mem_.size() || n > mem_.size() - offset) {
      return out_of_range(fmt::format("cpu buffer set: [{}, +{}) is outside {} bytes", offset, n, mem_.size()));
    }
    if (n > 0 && host_src == nullptr) return invalid_argument("cpu buffer set: null source");
    if (n > 0) std::memcpy(mem_.as<char>() + offset, host_src, n);
    return Status::Ok();
  }
  Status get(size_t offset, void* host_dst, size_t n) const override {
    if (offset > mem_.size() || n > mem_.size() - offset) {
      return out_of_range(fmt::format("cpu buffer get: [{}, +{}) is outside {} bytes", offset, n, mem_.size()));
    }
    if (n > 0 && host_dst == nullptr) return invalid_argument("cpu buffer get: null destination");
    if (n > 0) std::memcpy(host_dst, mem_.as<const char>() + offset, n);
    return Status::Ok();
  }

 private:
  AlignedBuffer mem_;
};

class CpuBufferType final : public BufferType {
 public:
  std::string name() const override { return "CPU"; }
  size_t alignment() const override { return kHostAlignment; }
  bool is_host() const override { return true; }
  Result<std::unique_ptr<Buffer>> alloc(size_t bytes) const override {
    // Caches and activations: no huge-page advice (aligned_buffer.h: caches are written a few
    // cells at a time; only packed weights, allocated elsewhere, are advised).
    AlignedBuffer mem;
    if (!mem.allocate(bytes, HugePages::kNone)) return resource_exhausted(fmt::format("cpu: cannot allocate {} bytes", bytes));
    std::unique_ptr<Buffer> b(new (std::nothrow) CpuBuffer(std::move(mem)));
    if (b == nullptr) return resource_exhausted("cpu: cannot allocate a buffer object");
    return b;
  }
};

// ---- backend ----

class CpuBackend final : public Backend {
 public:
  CpuBackend(Isa isa, int n_threads) : pool_(n_threads) {
    ctx_.pool = &pool_;
    ctx_.gemm = &gemm_for(isa);
    ctx_.vec = &vec_for(isa);
    ctx_.quant = &quant_kernels_for(isa);
    ctx_.scratch = &scratch_;
  }

  const Device& device() const override { return cpu::device(); }
  void set_n_threads(int n) override { pool_.resize(n); }
  int n_threads() const override { return pool_.n_threads(); }

  Result<std::unique_ptr<Weight>> upload_weight(const Tensor& host) override {
    KVB_ASSIGN_OR_RETURN(std::unique_ptr<PackedWeight> w, PackedWeight::pack(host, &pool_));
    return std::unique_ptr<Weight>(std::move(w));
  }
  Status copy_from_host(void* dst, const void* host_src, size_t n) override { return copy(dst, host_src, n); }
  Status copy_to_host(void* host_dst, const void* src, size_t n) override { return copy(host_dst, src, n); }
  Status copy(void* dst, const void* src, size_t n) override {
    if (n == 0) return Status::Ok();
    if (dst == nullptr || src == nullptr) return invalid_argument("cpu copy: null pointer");
    std::memmove(dst, src, n);
    return Status::Ok();
  }
  Status synchronize() override { return Status::Ok(); }

  using Backend::attention;
  using Backend::matmul;
  Status matmul(const Tensor& x, std::span<const MatmulOut> outs, RowMode mode) override {
    return cpu::matmul(ctx_, x, outs, mode);
  }
  Status rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) override {
    return cpu::rms_norm(ctx_, x, w, eps, y);
  }
  Status rope(const Tensor& x, const Tensor& pos, const RopeParams& p) override { return cpu::rope(ctx_, x, pos, p); }
  Status softmax(const Tensor& x) override { return cpu::softmax(ctx_, x); }
  Status silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    return cpu::silu_mul(ctx_, gate, up, out);
  }
  Status add(const Tensor& a, const Tensor& b, const Tensor& out) override { return cpu::add(ctx_, a, b, out); }
  Status attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                   RowMode mode) override {
    return cpu::attention(ctx_, q, k, v, out, scale, mode);
  }
  Status attention_batch(std::span<const AttentionSeq> seqs, float scale, RowMode mode) override {
    return cpu::attention_batch(ctx_, seqs, scale, mode);
  }
  Status embedding(const Tensor& table, const Tensor& tokens, const Tensor& out) override {
    return cpu::embedding(ctx_, table, tokens, out);
  }
  Status convert(const Tensor& src, const Tensor& dst) override { return cpu::convert(ctx_, src, dst); }
  Status gelu(const Tensor& x, const Tensor& out) override { return cpu::gelu(ctx_, x, out); }
  Status gate_add(const Tensor& receiver, const Tensor& logits, const Tensor& projected, const Tensor& out) override {
    return cpu::gate_add(ctx_, receiver, logits, projected, out);
  }

 private:
  ThreadPool pool_;
  Scratch scratch_;
  OpContext ctx_;
};

// ---- device ----

// Reads "Key:   123 kB" from /proc/meminfo; 0 when absent.
size_t meminfo_bytes(const char* key) {
  FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return 0;
  char line[256];
  size_t value = 0;
  const size_t key_len = std::strlen(key);
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::strncmp(line, key, key_len) == 0 && line[key_len] == ':') {
      value = size_t(std::strtoull(line + key_len + 1, nullptr, 10)) * 1024;
      break;
    }
  }
  std::fclose(f);
  return value;
}

class CpuDevice final : public Device {
 public:
  std::string name() const override { return "cpu"; }
  std::string description() const override {
#if defined(__x86_64__)
    const char* arch = "x86_64";
#elif defined(__aarch64__)
    const char* arch = "aarch64";
#else
    const char* arch = "unknown-arch";
#endif
    return fmt::format("CPU {} {} ({} threads)", arch, isa_name(detected_isa()), default_n_threads());
  }
  DeviceMemory memory() const override {
    DeviceMemory m;
    m.total = meminfo_bytes("MemTotal");
    m.free = meminfo_bytes("MemAvailable");
    if (m.total == 0) {
      const long pages = sysconf(_SC_PHYS_PAGES), avail = sysconf(_SC_AVPHYS_PAGES), page = sysconf(_SC_PAGESIZE);
      if (pages > 0 && page > 0) m.total = size_t(pages) * size_t(page);
      if (avail > 0 && page > 0) m.free = size_t(avail) * size_t(page);
    }
    return m;
  }
  bool supports_op(OpKind op, DType t) const override { return op_supports_dtype(op, t); }
  const BufferType& buffer_type() const override { return buffer_type_; }
  Result<std::unique_ptr<Backend>> create_backend() const override {
    return cpu::create_backend(detected_isa(), default_n_threads());
  }

 private:
  CpuBufferType buffer_type_;
};

}  // namespace

// At the AVX-512 level without VNNI, the AVX2 quant kernels.
const QuantKernels& quant_kernels_for(Isa isa) {
#if KVB_CPU_X86
  if (isa == Isa::kAvx512 && hardware_has_avx512_vnni()) return quant_kernels_avx512vnni();
  if (isa == Isa::kAvx512 || isa == Isa::kAvx2) return quant_kernels_avx2();
#endif
  (void)isa;
  return quant_kernels_generic();
}

std::string_view isa_name(Isa isa) {
  switch (isa) {
    case Isa::kGeneric:
      return "generic";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "?";
}

Isa detected_isa() {
  static const Isa isa = compute_detected_isa();
  return isa;
}

const Device& device() {
  static const CpuDevice d;
  return d;
}

Result<std::unique_ptr<Backend>> create_backend(Isa isa, int n_threads) {
  if (int(isa) > int(detected_isa())) {
    return invalid_argument(
        fmt::format("cpu: ISA {} is above this machine's {}", isa_name(isa), isa_name(detected_isa())));
  }
  if (n_threads < 1) return invalid_argument(fmt::format("cpu: n_threads must be >= 1, got {}", n_threads));
  try {
    return std::unique_ptr<Backend>(new CpuBackend(isa, n_threads));
  } catch (const std::exception& e) {  // bad_alloc; thread start failures are absorbed by the pool
    return resource_exhausted(fmt::format("cpu: cannot create a backend: {}", e.what()));
  }
}

}  // namespace kvb::cpu
