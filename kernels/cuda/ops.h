// The CUDA ops behind CudaBackend (cuda_backend.cpp), one per .cu file beside its CPU twin
// (kernels/cpu/<op>.cpp). Internal to kernels/cuda.
//
// Each op validates its tensors exactly as the CPU op does (INVALID_ARGUMENT, never a crash), then
// enqueues its kernels on ctx.stream and returns without waiting: results are visible to the host
// after the backend's synchronize(). Tensors hold device memory of ctx.device (or pinned host
// memory, which the GPU reads directly). Contracts (shapes, aliasing) are those of kvb::Backend in
// kernels/backend.h. Not thread-safe: one thread drives an OpContext at a time; the caller holds a
// DeviceGuard for ctx.device.
#pragma once

#include <cstdint>
#include <span>

#include "kernels/backend.h"
#include "kernels/op_checks.h"  // check_tensor, tensors_overlap, per-op checks
#include "kernels/cuda/common.cuh"

namespace kvb::cuda {

// Reusable device working memory (converted activations, attention partials, top-k candidates),
// grown on demand and kept between ops. Ops on one stream run in order, so consecutive ops may
// reuse the same bytes. Growing waits for the stream (queued kernels may still read the old block)
// before freeing it: that happens only while sizes reach their maximum, in the first batches. On a
// stream that is recording a graph it cannot grow: get() is UNAVAILABLE then.
class Scratch {
 public:
  // A block of at least `bytes` (256-byte aligned), valid until the next get().
  Result<void*> get(size_t bytes, cudaStream_t stream);

 private:
  DevicePtr mem_;
  size_t size_ = 0;
};

// An error that only the device can see (a token id out of range in embedding): kernels write it
// into mapped pinned host memory, and the backend's synchronize() reports and clears it.
struct DeviceErrorReport {
  // 0: none. Otherwise bit 63 set | (row & 0x7fffffff) << 32 | uint32(token id), written with one
  // 8-byte store so that the host never sees a torn pair.
  unsigned long long code;
  long long limit;  // the vocabulary size the id was checked against
};

// What an op needs from its backend.
struct OpContext {
  int device = 0;
  cudaStream_t stream = nullptr;
  cublasHandle_t cublas = nullptr;
  Scratch* scratch = nullptr;
  DeviceErrorReport* error = nullptr;  // device pointer of the mapped report
  int n_sm = 1;                        // streaming multiprocessors (sizes split-K grids)
  size_t max_smem_per_block = 48 << 10;  // opt-in dynamic shared memory limit, bytes
};

// The OpContext of a backend created by a CUDA device, or nullptr for any other backend.
OpContext* op_context(Backend& b);

// A weight on the device: row-major [n_out][n_in] in dtype() (F32, F16 or BF16), ready for cuBLAS.
// F32, F16 and BF16 uploads keep their type; Q8_0 is dequantized to F16 on upload (d·q needs up to
// 18 significant bits: F16 keeps 11, BF16 only 8). Owns its memory; immutable afterwards.
class CudaWeight final : public Weight {
 public:
  CudaWeight(DType stored, DType uploaded, int64_t n_out, int64_t n_in, int device, DevicePtr mem)
      : stored_(stored), uploaded_(uploaded), n_out_(n_out), n_in_(n_in), device_(device), mem_(std::move(mem)) {}
  int64_t n_out() const override { return n_out_; }
  int64_t n_in() const override { return n_in_; }
  DType dtype() const override { return stored_; }
  size_t nbytes() const override { return size_t(n_out_ * n_in_) * dtype_block_bytes(stored_); }
  DType uploaded_dtype() const { return uploaded_; }  // what the host tensor held
  int device() const { return device_; }
  const void* data() const { return mem_.get(); }

 private:
  DType stored_, uploaded_;
  int64_t n_out_, n_in_;
  int device_;
  DevicePtr mem_;
};

// ---- ops (backend.h contracts) ----
Result<std::unique_ptr<Weight>> upload_weight(OpContext& ctx, const Tensor& host);
Status matmul(OpContext& ctx, const Tensor& x, std::span<const MatmulOut> outs);
Status rms_norm(OpContext& ctx, const Tensor& x, const Tensor& w, float eps, const Tensor& y);
Status rope(OpContext& ctx, const Tensor& x, const Tensor& pos, const RopeParams& p);
Status softmax(OpContext& ctx, const Tensor& x);
Status silu_mul(OpContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& out);
Status add(OpContext& ctx, const Tensor& a, const Tensor& b, const Tensor& out);
Status attention(OpContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale);
Status embedding(OpContext& ctx, const Tensor& table, const Tensor& tokens, const Tensor& out);
Status convert(OpContext& ctx, const Tensor& src, const Tensor& dst);
Status gelu(OpContext& ctx, const Tensor& x, const Tensor& out);
Status gate_add(OpContext& ctx, const Tensor& receiver, const Tensor& logits, const Tensor& projected,
                const Tensor& out);

// ---- building blocks for other ops (convert.cu) ----
// dst[i] = src[i] for n elements on `stream`, converted. Pairs: F32 → F32/F16/BF16/Q8_0,
// F16/BF16/Q8_0 → F32, Q8_0 → F16. n is a multiple of 32 when either side is Q8_0. Results are
// bit-identical to kernels/dtype.cpp's from_f32/to_f32 (Q8_0 → F16 is to_f32 then fp32_to_fp16).
// INVALID_ARGUMENT for another pair; no shape checks (callers have done them).
Status convert_elements(cudaStream_t stream, DType src_t, const void* src, DType dst_t, void* dst, int64_t n);

}  // namespace kvb::cuda
