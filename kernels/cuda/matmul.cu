// matmul: y[n][n_out] (+)= x[n][n_in] · wᵀ for several weights sharing x, and the weight upload.
// CPU twin: cpu/matmul.cpp (+ cpu/packed_weight.cpp).
//
// Weights (CudaWeight, ops.h) are uploaded once, row-major [n_out][n_in] on the device:
//   F32  → kept F32: an f32 GEMM (CUBLAS_COMPUTE_32F, default math mode: no TF32), so models
//          with f32 weights match the CPU to ~1e-6;
//   F16  → kept F16;  BF16 → kept BF16;
//   Q8_0 → dequantized on the device to F16 at upload (the raw blocks are staged in device memory
//          and freed once converted).
// Activations are f32. For an F16 or BF16 weight, x is first converted on the stream to that type
// (once per type per call, into the backend's scratch), then cublasGemmEx multiplies 16-bit A and B
// with f32 accumulation and an f32 output. In cuBLAS's column-major terms the row-major arrays are
// transposed: y[n][n_out] is Y = yᵀ (n_out × n), w is wᵀ (n_in × n_out), x is xᵀ (n_in × n), and
// y = x·wᵀ becomes Y = (wᵀ)ᵀ · xᵀ: gemm(T, N, m = n_out, n = n, k = n_in, A = w (lda n_in),
// B = x (ldb n_in), C = y (ldc n_out)). accumulate sets beta = 1; with beta = 0 cuBLAS never reads y
// (a NaN-poisoned y is fine). cuBLAS runs on ctx.stream (the handle is bound to it at creation).
#include <algorithm>
#include <climits>
#include <vector>

#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/quants.h"

namespace kvb::cuda {
namespace {

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::kF16: return CUDA_R_16F;
    case DType::kBF16: return CUDA_R_16BF;
    default: return CUDA_R_32F;
  }
}

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

// GGUF block weights (Q4_0 ... Q6_K): dequantized on the host (bit-exact, kernels/quants.h) and
// rounded to F16, a row block of at most 4 Mi elements at a time, then copied to `dst`.
Status upload_widened_f16(OpContext& ctx, const Tensor& host, uint16_t* dst) {
  const int64_t rows = host.shape[0], cols = host.shape[1];
  const int64_t block = std::max<int64_t>(1, (int64_t(1) << 22) / cols);
  std::vector<float> f32(size_t(std::min(block, rows) * cols));
  std::vector<uint16_t> f16(f32.size());
  const auto* src = static_cast<const uint8_t*>(host.data);
  for (int64_t r = 0; r < rows; r += block) {
    const int64_t n = std::min(block, rows - r);
    to_f32(host.dtype, src + size_t(r) * host.row_nbytes(), f32.data(), n * cols);
    for (int64_t i = 0; i < n * cols; ++i) f16[size_t(i)] = fp32_to_fp16(f32[size_t(i)]);
    KVB_CUDA_CHECK(cudaMemcpyAsync(dst + r * cols, f16.data(), size_t(n * cols) * 2, cudaMemcpyDefault, ctx.stream));
    // f16 is reused by the next row block.
    KVB_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  }
  return Status::Ok();
}

}  // namespace

Result<std::unique_ptr<Weight>> upload_weight(OpContext& ctx, const Tensor& host) {
  const DType t = host.dtype;
  if (t != DType::kF32 && t != DType::kF16 && t != DType::kBF16 && !dtype_is_quantized(t)) {
    return unimplemented(cat("cuda upload_weight: weights of dtype ", dtype_name(t), " are not supported"));
  }
  if (host.n_dims != 2 || host.shape[0] <= 0 || host.shape[1] <= 0) {
    return invalid_argument(cat("cuda upload_weight: expected a matrix [n_out][n_in], got ", host.describe()));
  }
  KVB_RETURN_IF_ERROR(check_tensor(host, t, "upload_weight", "w"));
  const int64_t n_out = host.shape[0], n_in = host.shape[1];
  if (!fits_int(n_out) || !fits_int(n_in)) {
    return invalid_argument(cat("cuda upload_weight: ", host.describe(), " exceeds cuBLAS's int dimensions"));
  }
  const DType stored = dtype_is_quantized(t) ? DType::kF16 : t;
  const int64_t n = n_out * n_in;
  KVB_ASSIGN_OR_RETURN(DevicePtr mem, device_alloc(size_t(n) * dtype_block_bytes(stored)));
  if (t == DType::kQ8_0) {
    KVB_ASSIGN_OR_RETURN(DevicePtr staged, device_alloc(host.nbytes()));
    KVB_CUDA_CHECK(cudaMemcpyAsync(staged.get(), host.data, host.nbytes(), cudaMemcpyDefault, ctx.stream));
    KVB_RETURN_IF_ERROR(convert_elements(ctx.stream, DType::kQ8_0, staged.get(), DType::kF16, mem.get(), n));
    // `staged` is freed on return: the conversion must have read it by then.
    KVB_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  } else if (is_gguf_quant(t)) {
    KVB_RETURN_IF_ERROR(upload_widened_f16(ctx, host, static_cast<uint16_t*>(mem.get())));
  } else {
    KVB_CUDA_CHECK(cudaMemcpyAsync(mem.get(), host.data, host.nbytes(), cudaMemcpyDefault, ctx.stream));
    // The caller may free the host matrix once we return.
    KVB_CUDA_CHECK(cudaStreamSynchronize(ctx.stream));
  }
  return std::unique_ptr<Weight>(new CudaWeight(stored, t, n_out, n_in, ctx.device, std::move(mem)));
}

Status matmul(OpContext& ctx, const Tensor& x, std::span<const MatmulOut> outs) {
  KVB_RETURN_IF_ERROR(check_matmul_shapes(x, outs));
  KVB_RETURN_IF_ERROR(check_tensor(x, DType::kF32, "matmul", "x"));
  bool need_f16 = false, need_bf16 = false;
  for (size_t i = 0; i < outs.size(); ++i) {
    const auto* w = dynamic_cast<const CudaWeight*>(outs[i].w);
    if (w == nullptr) return invalid_argument("matmul: weight was not uploaded by a CUDA backend");
    if (w->device() != ctx.device) {
      return invalid_argument(cat("matmul: weight lives on cuda:", w->device(), ", this backend on cuda:", ctx.device));
    }
    KVB_RETURN_IF_ERROR(check_tensor(outs[i].y, DType::kF32, "matmul", "y"));
    if (tensors_overlap(outs[i].y, x)) return invalid_argument(cat("matmul: y[", i, "] overlaps x"));
    for (size_t j = 0; j < i; ++j) {
      if (tensors_overlap(outs[i].y, outs[j].y)) return invalid_argument(cat("matmul: y[", i, "] overlaps y[", j, "]"));
    }
    need_f16 |= w->dtype() == DType::kF16;
    need_bf16 |= w->dtype() == DType::kBF16;
  }
  const int64_t n = x.shape[0], k = x.shape[1];
  if (n == 0 || outs.empty()) return Status::Ok();
  if (!fits_int(n) || !fits_int(k)) return invalid_argument(cat("matmul: x ", x.describe(), " exceeds int dimensions"));

  // x converted to each 16-bit type a weight needs: [n][k] f16, then [n][k] bf16.
  const size_t half_bytes = size_t(n * k) * 2;
  const void* x16[2] = {nullptr, nullptr};  // f16, bf16
  if (need_f16 || need_bf16) {
    KVB_ASSIGN_OR_RETURN(void* scratch, ctx.scratch->get(2 * half_bytes, ctx.stream));
    auto* base = static_cast<char*>(scratch);
    if (need_f16) {
      KVB_RETURN_IF_ERROR(convert_elements(ctx.stream, DType::kF32, x.data, DType::kF16, base, n * k));
      x16[0] = base;
    }
    if (need_bf16) {
      KVB_RETURN_IF_ERROR(convert_elements(ctx.stream, DType::kF32, x.data, DType::kBF16, base + half_bytes, n * k));
      x16[1] = base + half_bytes;
    }
  }

  for (const MatmulOut& o : outs) {
    const auto& w = static_cast<const CudaWeight&>(*o.w);
    const DType wt = w.dtype();
    const void* b = wt == DType::kF16 ? x16[0] : (wt == DType::kBF16 ? x16[1] : x.data);
    const float alpha = 1.0f, beta = o.accumulate ? 1.0f : 0.0f;
    KVB_CUBLAS_CHECK(cublasGemmEx(ctx.cublas, CUBLAS_OP_T, CUBLAS_OP_N, int(w.n_out()), int(n), int(k), &alpha,
                                  w.data(), cuda_type(wt), int(k), b, cuda_type(wt), int(k), &beta, o.y.data,
                                  CUDA_R_32F, int(w.n_out()), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }
  return Status::Ok();
}

}  // namespace kvb::cuda
