// The CPU ops behind CpuBackend (cpu_backend.cpp), one per file (matmul.cpp, rms_norm.cpp, ...).
//
// Each op validates its tensors (INVALID_ARGUMENT, never a crash), then runs to completion on the
// backend's pool before returning. Contracts (shapes, aliasing) are those of kvb::Backend in
// kernels/backend.h. Not thread-safe: one thread drives an OpContext at a time.
#pragma once

#include <span>
#include <vector>

#include "kernels/backend.h"
#include "kernels/op_checks.h"  // check_tensor, tensors_overlap, per-op checks
#include "kernels/cpu/aligned_buffer.h"
#include "kernels/cpu/gemm.h"
#include "kernels/cpu/quant_panel.h"
#include "kernels/cpu/thread_pool.h"
#include "kernels/cpu/vec_kernels.h"

namespace kvb::cpu {

// Reusable per-backend working memory, grown on demand and kept between ops (no allocation in the
// steady state of a decode loop).
class Scratch {
 public:
  // One block shared by all threads. RESOURCE_EXHAUSTED when out of memory.
  Status reserve_shared(size_t bytes);
  float* shared() const { return shared_.as<float>(); }
  // One block per thread, each >= bytes. RESOURCE_EXHAUSTED when out of memory.
  Status reserve_per_thread(int n_threads, size_t bytes);
  float* thread(int tid) const { return per_thread_[size_t(tid)].as<float>(); }

 private:
  AlignedBuffer shared_;
  std::vector<AlignedBuffer> per_thread_;
};

// What an op needs from its backend.
struct OpContext {
  ThreadPool* pool = nullptr;
  const GemmKernels* gemm = nullptr;
  const VecKernels* vec = nullptr;
  const QuantKernels* quant = nullptr;
  Scratch* scratch = nullptr;
};

// Elementwise ops on fewer elements than this run on the calling thread: waking the workers costs
// more than the work (decode-sized rows).
inline constexpr int64_t kMinParallelElements = 1 << 15;

Status matmul(OpContext& ctx, const Tensor& x, std::span<const MatmulOut> outs, RowMode mode = RowMode::kAuto);
Status rms_norm(OpContext& ctx, const Tensor& x, const Tensor& w, float eps, const Tensor& y);
Status rope(OpContext& ctx, const Tensor& x, const Tensor& pos, const RopeParams& p);
Status softmax(OpContext& ctx, const Tensor& x);
Status silu_mul(OpContext& ctx, const Tensor& gate, const Tensor& up, const Tensor& out);
Status add(OpContext& ctx, const Tensor& a, const Tensor& b, const Tensor& out);
Status attention(OpContext& ctx, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                 RowMode mode = RowMode::kAuto);
Status attention_batch(OpContext& ctx, std::span<const AttentionSeq> seqs, float scale, RowMode mode);
Status embedding(OpContext& ctx, const Tensor& table, const Tensor& tokens, const Tensor& out);
Status convert(OpContext& ctx, const Tensor& src, const Tensor& dst);
Status gelu(OpContext& ctx, const Tensor& x, const Tensor& out);
Status gate_add(OpContext& ctx, const Tensor& receiver, const Tensor& logits, const Tensor& projected,
                const Tensor& out);

}  // namespace kvb::cpu
