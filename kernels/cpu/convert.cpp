// convert: dst = src element-wise, same numel. F32 -> F32/F16/BF16/Q8_0 and F16/BF16/Q8_0 -> F32.
// F16 uses the ISA's conversion instructions; BF16 and Q8_0 the scalar routines of dtype.cpp (same
// rounding as ggml: RNE, and Q8_0 scale d = amax / 127).
#include <fmt/format.h>

#include <cstring>

#include "kernels/cpu/ops.h"

namespace kvb::cpu {

Status convert(OpContext& ctx, const Tensor& src, const Tensor& dst) {
  const DType s = src.dtype, d = dst.dtype;
  const bool ok_pair =
      (s == DType::kF32 && (d == DType::kF32 || d == DType::kF16 || d == DType::kBF16 || d == DType::kQ8_0)) ||
      (d == DType::kF32 && (s == DType::kF16 || s == DType::kBF16 || s == DType::kQ8_0));
  if (!ok_pair) {
    return invalid_argument(fmt::format("convert: {} -> {} is not supported", dtype_name(s), dtype_name(d)));
  }
  KVB_RETURN_IF_ERROR(check_tensor(src, s, "convert", "src"));
  KVB_RETURN_IF_ERROR(check_tensor(dst, d, "convert", "dst"));
  const int64_t n = src.numel();
  if (dst.numel() != n) {
    return invalid_argument(fmt::format("convert: src {} and dst {} differ in size", src.describe(), dst.describe()));
  }
  if (tensors_overlap(src, dst)) {
    if (s == d && src.data == dst.data) return Status::Ok();
    return invalid_argument("convert: src and dst overlap");
  }
  if (n == 0) return Status::Ok();

  const VecKernels& vk = *ctx.vec;
  const auto* in = src.as<const uint8_t>();
  auto* out = dst.as<uint8_t>();
  // Ranges are whole Q8_0 blocks (chunk is a multiple of 32), so byte offsets are exact.
  auto range = [&](int64_t begin, int64_t end, int) {
    const int64_t count = end - begin;
    const size_t src_off = size_t(begin / dtype_block_size(s)) * dtype_block_bytes(s);
    const size_t dst_off = size_t(begin / dtype_block_size(d)) * dtype_block_bytes(d);
    if (s == DType::kF32 && d == DType::kF16) {
      vk.f32_to_f16(reinterpret_cast<const float*>(in + src_off), reinterpret_cast<uint16_t*>(out + dst_off), count);
    } else if (s == DType::kF16 && d == DType::kF32) {
      vk.f16_to_f32(reinterpret_cast<const uint16_t*>(in + src_off), reinterpret_cast<float*>(out + dst_off), count);
    } else if (s == DType::kF32) {
      from_f32(d, reinterpret_cast<const float*>(in + src_off), out + dst_off, count);
    } else {
      to_f32(s, in + src_off, reinterpret_cast<float*>(out + dst_off), count);
    }
  };
  if (n < kMinParallelElements) {
    range(0, n, 0);
  } else {
    ctx.pool->parallel_for(n, kMinParallelElements, range);
  }
  return Status::Ok();
}

}  // namespace kvb::cpu
