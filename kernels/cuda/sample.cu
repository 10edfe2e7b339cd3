// argmax and top-k over logits rows on the device (sample.cuh). Host twin: engine/sampler.cpp.
//
// Candidates are (value, id, position) triples compared by `better`: larger value, then lower id
// (then lower position, which only separates padding). NaN values are skipped when read.
//   argmax_kernel: one block of 256 threads per row (grid-stride over rows); each thread keeps the
//     best of a strided slice, block_best reduces (shuffles, then one warp over the warp winners).
//   top-k, two phases of k selection rounds each: a round finds the block's best candidate that
//     is not yet taken (a bitmap in shared memory), records it and marks it taken. Phase 1 runs one
//     block per (row, chunk of kChunk logits) into scratch; phase 2 one block per row over the
//     n_chunks·k phase-1 winners (at most kChunk). A vocabulary of one chunk skips phase 2. Rounds
//     re-read their candidates from global memory (L1/L2-resident): k·kChunk/256 loads per thread,
//     simple rather than fast — this sits once per decode step beside a whole forward pass.
#include <climits>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/sample.cuh"

namespace kvb::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 16384;  // logits per phase-1 block; also the phase-2 candidate limit

struct Cand {
  float v;
  int32_t id;
  int32_t pos;  // index in the candidate list; -1 for "none"
};

__device__ __forceinline__ Cand no_cand() { return Cand{-INFINITY, INT32_MAX, -1}; }

__device__ __forceinline__ bool better(const Cand& a, const Cand& b) {
  return a.v > b.v || (a.v == b.v && (a.id < b.id || (a.id == b.id && a.pos < b.pos)));
}

__device__ __forceinline__ Cand warp_best(Cand c) {
#pragma unroll
  for (int o = kWarpSize / 2; o > 0; o >>= 1) {
    const Cand other{__shfl_xor_sync(kFullMask, c.v, o), __shfl_xor_sync(kFullMask, c.id, o),
                     __shfl_xor_sync(kFullMask, c.pos, o)};
    if (better(other, c)) c = other;
  }
  return c;
}

// Every thread of the block gets the block's best; `scratch` is __shared__ Cand[32].
__device__ __forceinline__ Cand block_best(Cand c, Cand* scratch) {
  const int lane = int(threadIdx.x) % kWarpSize, warp = int(threadIdx.x) / kWarpSize;
  c = warp_best(c);
  __syncthreads();  // scratch may still be read by the previous reduction
  if (lane == 0) scratch[warp] = c;
  __syncthreads();
  c = lane < int(blockDim.x) / kWarpSize ? scratch[lane] : no_cand();
  return warp_best(c);
}

__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* logits, int64_t n_rows, int64_t n_vocab,
                                                         int32_t* ids) {
  __shared__ Cand scratch[kWarpSize];
  for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
    const float* row = logits + r * n_vocab;
    Cand best = no_cand();
    for (int64_t j = threadIdx.x; j < n_vocab; j += blockDim.x) {
      const float v = row[j];
      const Cand c{v, int32_t(j), int32_t(j)};
      if (!isnan(v) && better(c, best)) best = c;
    }
    best = block_best(best, scratch);
    if (threadIdx.x == 0) ids[r] = best.id == INT32_MAX ? 0 : best.id;
  }
}

// The k best of n candidates (value vals[e], id cand_ids[e] or id0 + e) into out_v/out_i, in
// order; rounds with nothing left write (-inf, INT32_MAX). One whole block; n <= kChunk.
__device__ void select_top_k(const float* vals, const int32_t* cand_ids, int32_t id0, int n, int k, float* out_v,
                             int32_t* out_i) {
  __shared__ uint32_t taken[kChunk / 32];
  __shared__ Cand scratch[kWarpSize];
  for (int w = int(threadIdx.x); w < (n + 31) / 32; w += int(blockDim.x)) taken[w] = 0;
  __syncthreads();
  for (int round = 0; round < k; ++round) {
    Cand best = no_cand();
    for (int e = int(threadIdx.x); e < n; e += int(blockDim.x)) {
      if (taken[e / 32] & (1u << (e % 32))) continue;
      const float v = vals[e];
      const Cand c{v, cand_ids != nullptr ? cand_ids[e] : id0 + e, e};
      if (!isnan(v) && better(c, best)) best = c;
    }
    best = block_best(best, scratch);
    if (threadIdx.x == 0) {
      out_v[round] = best.v;
      out_i[round] = best.id;
      if (best.pos >= 0) taken[best.pos / 32] |= 1u << (best.pos % 32);
    }
    __syncthreads();  // the mark is visible to the next round's scan
  }
}

// grid (n_chunks, n_rows): block (c, r) selects from logits[r][c·kChunk, ...) into slot (r, c).
__global__ void __launch_bounds__(kThreads) top_k_chunks_kernel(const float* logits, int64_t n_vocab, int n_chunks,
                                                               int k, float* out_v, int32_t* out_i) {
  const int64_t r = blockIdx.y;
  const int c = int(blockIdx.x);
  const int64_t begin = int64_t(c) * kChunk;
  const int n = int(min(int64_t(kChunk), n_vocab - begin));
  const int64_t slot = (r * n_chunks + c) * k;
  select_top_k(logits + r * n_vocab + begin, nullptr, int32_t(begin), n, k, out_v + slot, out_i + slot);
}

// grid (n_rows): block r selects from the n_chunks·k winners of row r.
__global__ void __launch_bounds__(kThreads) top_k_merge_kernel(const float* cand_v, const int32_t* cand_i,
                                                              int n_cand, int k, float* out_v, int32_t* out_i) {
  const int64_t r = blockIdx.x;
  select_top_k(cand_v + r * n_cand, cand_i + r * n_cand, 0, n_cand, k, out_v + r * k, out_i + r * k);
}

Status check_logits(const Tensor& logits, const char* op) {
  KVB_RETURN_IF_ERROR(check_tensor(logits, DType::kF32, op, "logits"));
  if (logits.n_dims != 2 || logits.shape[1] < 1 || logits.shape[1] >= INT32_MAX) {
    return invalid_argument(cat(op, ": logits must be f32 [n_rows][n_vocab], got ", logits.describe()));
  }
  return Status::Ok();
}

}  // namespace

Status argmax(Backend& b, const Tensor& logits, const Tensor& ids) {
  OpContext* ctx = op_context(b);
  if (ctx == nullptr) return invalid_argument("argmax: not a CUDA backend");
  KVB_RETURN_IF_ERROR(check_logits(logits, "argmax"));
  KVB_RETURN_IF_ERROR(check_tensor(ids, DType::kI32, "argmax", "ids"));
  const int64_t n_rows = logits.shape[0], n_vocab = logits.shape[1];
  if (ids.numel() != n_rows) {
    return invalid_argument(cat("argmax: ids ", ids.describe(), " must hold one id per row of ", logits.describe()));
  }
  if (tensors_overlap(ids, logits)) return invalid_argument("argmax: ids overlap logits");
  if (n_rows == 0) return Status::Ok();
  DeviceGuard guard(ctx->device);
  KVB_RETURN_IF_ERROR(guard.status());
  argmax_kernel<<<unsigned(n_rows < 65536 ? n_rows : 65536), kThreads, 0, ctx->stream>>>(
      logits.as<const float>(), n_rows, n_vocab, ids.as<int32_t>());
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

Status top_k(Backend& b, const Tensor& logits, int k, const Tensor& values, const Tensor& ids) {
  OpContext* ctx = op_context(b);
  if (ctx == nullptr) return invalid_argument("top_k: not a CUDA backend");
  KVB_RETURN_IF_ERROR(check_logits(logits, "top_k"));
  KVB_RETURN_IF_ERROR(check_tensor(values, DType::kF32, "top_k", "values"));
  KVB_RETURN_IF_ERROR(check_tensor(ids, DType::kI32, "top_k", "ids"));
  const int64_t n_rows = logits.shape[0], n_vocab = logits.shape[1];
  if (k < 1 || k > kMaxTopK || k > n_vocab) {
    return invalid_argument(cat("top_k: k = ", k, " must be in [1, min(", kMaxTopK, ", n_vocab = ", n_vocab, ")]"));
  }
  if (values.numel() != n_rows * k || ids.numel() != n_rows * k || values.cols() != k || ids.cols() != k) {
    return invalid_argument(cat("top_k: values ", values.describe(), " and ids ", ids.describe(), " must be [",
                                n_rows, "][", k, "]"));
  }
  if (tensors_overlap(values, logits) || tensors_overlap(ids, logits) || tensors_overlap(values, ids)) {
    return invalid_argument("top_k: outputs overlap");
  }
  const int64_t n_chunks = (n_vocab + kChunk - 1) / kChunk;
  if (n_chunks * k > kChunk) {
    return unimplemented(cat("top_k: n_vocab ", n_vocab, " with k = ", k, " is beyond the CUDA kernel"));
  }
  if (n_rows > 65535) return unimplemented(cat("top_k: ", n_rows, " rows in one call (at most 65535)"));
  if (n_rows == 0) return Status::Ok();
  DeviceGuard guard(ctx->device);
  KVB_RETURN_IF_ERROR(guard.status());
  if (n_chunks == 1) {
    top_k_chunks_kernel<<<dim3(1, unsigned(n_rows)), kThreads, 0, ctx->stream>>>(
        logits.as<const float>(), n_vocab, 1, k, values.as<float>(), ids.as<int32_t>());
    KVB_CUDA_CHECK_LAUNCH();
    return Status::Ok();
  }
  const int64_t n_cand = n_chunks * k;
  const size_t v_bytes = size_t(n_rows * n_cand) * sizeof(float);
  KVB_ASSIGN_OR_RETURN(void* scratch, ctx->scratch->get(2 * v_bytes, ctx->stream));
  auto* cand_v = static_cast<float*>(scratch);
  auto* cand_i = reinterpret_cast<int32_t*>(static_cast<char*>(scratch) + v_bytes);
  top_k_chunks_kernel<<<dim3(unsigned(n_chunks), unsigned(n_rows)), kThreads, 0, ctx->stream>>>(
      logits.as<const float>(), n_vocab, int(n_chunks), k, cand_v, cand_i);
  KVB_CUDA_CHECK_LAUNCH();
  top_k_merge_kernel<<<unsigned(n_rows), kThreads, 0, ctx->stream>>>(cand_v, cand_i, int(n_cand), k,
                                                                     values.as<float>(), ids.as<int32_t>());
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
