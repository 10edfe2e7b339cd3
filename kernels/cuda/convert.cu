// convert: dst = src element-wise, same numel: F32 → F32/F16/BF16/Q8_0 and F16/BF16/Q8_0 → F32
// (Backend::convert), plus Q8_0 → F16 for weight uploads (convert_elements). CPU twin:
// cpu/convert.cpp. Results are bit-identical to kernels/dtype.cpp: RNE for f16/bf16 (NaN kept,
// quieted), and ggml's Q8_0 rounding (d = amax / 127 stored as f16, q = round-half-away(x / d)).
//
// Two kernels, grid-stride, enqueued on the caller's stream:
//   convert_kernel: one element per thread per step, any pair whose destination is not Q8_0.
//   quantize_q8_0_kernel: one warp per 32-element block (lane = element): a warp max gives amax,
//     lane 0 writes the f16 scale, every lane its int8.
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"

namespace kvb::cuda {
namespace {

__global__ void convert_kernel(DType src_t, const void* src, DType dst_t, void* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = load_as_f32(src_t, src, i);
    if (dst_t == DType::kF16) {
      static_cast<uint16_t*>(dst)[i] = f32_to_f16_bits(v);
    } else if (dst_t == DType::kBF16) {
      static_cast<uint16_t*>(dst)[i] = f32_to_bf16_bits(v);
    } else {
      static_cast<float*>(dst)[i] = v;
    }
  }
}

__global__ void quantize_q8_0_kernel(const float* src, uint8_t* dst, int64_t n_blocks) {
  const int lane = int(threadIdx.x) % kWarpSize;
  const int64_t warps_per_grid = int64_t(gridDim.x) * (blockDim.x / kWarpSize);
  for (int64_t b = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarpSize; b < n_blocks; b += warps_per_grid) {
    const float x = src[b * kQ8BlockSize + lane];
    const float amax = warp_max(fabsf(x));  // fmaxf skips NaN, as std::fmax does
    const float d = __fdiv_rn(amax, 127.0f);
    const float id = d != 0.0f ? __fdiv_rn(1.0f, d) : 0.0f;
    uint8_t* block = dst + b * int64_t(sizeof(BlockQ8_0));
    if (lane == 0) *reinterpret_cast<uint16_t*>(block) = f32_to_f16_bits(d);
    block[2 + lane] = static_cast<uint8_t>(static_cast<int8_t>(lroundf(__fmul_rn(x, id))));
  }
}

}  // namespace

Status convert_elements(cudaStream_t stream, DType src_t, const void* src, DType dst_t, void* dst, int64_t n) {
  const bool from_f32 = src_t == DType::kF32 && (dst_t == DType::kF32 || dst_t == DType::kF16 ||
                                                 dst_t == DType::kBF16 || dst_t == DType::kQ8_0);
  const bool to_f32 = dst_t == DType::kF32 && (src_t == DType::kF16 || src_t == DType::kBF16 || src_t == DType::kQ8_0);
  const bool q8_to_f16 = src_t == DType::kQ8_0 && dst_t == DType::kF16;
  if (!from_f32 && !to_f32 && !q8_to_f16) {
    return invalid_argument(cat("convert: ", dtype_name(src_t), " -> ", dtype_name(dst_t), " is not supported"));
  }
  if ((src_t == DType::kQ8_0 || dst_t == DType::kQ8_0) && n % kQ8BlockSize != 0) {
    return invalid_argument(cat("convert: ", n, " elements are not whole q8_0 blocks"));
  }
  if (n == 0) return Status::Ok();
  if (dst_t == DType::kQ8_0) {
    const int64_t n_blocks = n / kQ8BlockSize;
    constexpr int kWarpsPerBlock = kElementwiseThreads / kWarpSize;
    const int64_t grid = (n_blocks + kWarpsPerBlock - 1) / kWarpsPerBlock;
    quantize_q8_0_kernel<<<unsigned(grid < 65536 ? grid : 65536), kElementwiseThreads, 0, stream>>>(
        static_cast<const float*>(src), static_cast<uint8_t*>(dst), n_blocks);
  } else {
    convert_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, stream>>>(src_t, src, dst_t, dst, n);
  }
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

Status convert(OpContext& ctx, const Tensor& src, const Tensor& dst) {
  const DType s = src.dtype, d = dst.dtype;
  const bool ok_pair =
      (s == DType::kF32 && (d == DType::kF32 || d == DType::kF16 || d == DType::kBF16 || d == DType::kQ8_0)) ||
      (d == DType::kF32 && (s == DType::kF16 || s == DType::kBF16 || s == DType::kQ8_0));
  if (!ok_pair) return invalid_argument(cat("convert: ", dtype_name(s), " -> ", dtype_name(d), " is not supported"));
  KVB_RETURN_IF_ERROR(check_tensor(src, s, "convert", "src"));
  KVB_RETURN_IF_ERROR(check_tensor(dst, d, "convert", "dst"));
  const int64_t n = src.numel();
  if (dst.numel() != n) {
    return invalid_argument(cat("convert: src ", src.describe(), " and dst ", dst.describe(), " differ in size"));
  }
  if (tensors_overlap(src, dst)) {
    if (s == d && src.data == dst.data) return Status::Ok();
    return invalid_argument("convert: src and dst overlap");
  }
  if (n == 0) return Status::Ok();
  if (s == d) {  // F32 → F32: a plain copy
    KVB_CUDA_CHECK(cudaMemcpyAsync(dst.data, src.data, size_t(n) * sizeof(float), cudaMemcpyDefault, ctx.stream));
    return Status::Ok();
  }
  return convert_elements(ctx.stream, s, src.data, d, dst.data, n);
}

}  // namespace kvb::cuda
