// Device twins of engine/kv_wire_values.cpp (wire_quant.cuh): f32/f16/bf16/int8 payloads.
//
// Bit-exactness: the f16/bf16 conversions are device_util.cuh's integer twins of kernels/dtype.cpp;
// the int8 path uses the same IEEE operations as the host loops, each written as an explicit
// round-to-nearest intrinsic (__fdiv_rn, __fmul_rn) so that nvcc cannot contract or approximate
// them: amax = max|x| (NaN never enters), scale = amax / 127, inv = amax > 0 ? 127 / amax : 0,
// q = rint(clamp(x · inv)) with NaN → -127, and decode scale · q.
//   encode_elements_kernel / decode_elements_kernel: grid-stride, one element per thread per step.
//   encode_int8_kernel: one warp per row (grid-stride over rows): lanes reduce amax, lane 0 writes
//     the scale, the lanes write the row's int8 values.
// Everything is enqueued on the backend's stream.
#include "kernels/cuda/device_util.cuh"
#include "kernels/cuda/ops.h"
#include "kernels/cuda/wire_quant.cuh"

namespace kvb::cuda {
namespace {

__device__ __forceinline__ float load_value(const void* x, bool f16, int64_t i) {
  return f16 ? f16_bits_to_f32(static_cast<const uint16_t*>(x)[i]) : static_cast<const float*>(x)[i];
}

// F32 / F16 / BF16 payloads.
__global__ void encode_elements_kernel(WireCodec codec, const void* x, bool x_f16, void* dst, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float v = load_value(x, x_f16, i);
    if (codec == WireCodec::kF16) {
      static_cast<uint16_t*>(dst)[i] = f32_to_f16_bits(v);
    } else if (codec == WireCodec::kBF16) {
      static_cast<uint16_t*>(dst)[i] = f32_to_bf16_bits(v);
    } else {
      static_cast<float*>(dst)[i] = v;
    }
  }
}

__global__ void encode_int8_kernel(const void* x, bool x_f16, char* dst, int64_t n_rows, int64_t head_dim) {
  const int lane = int(threadIdx.x) % kWarpSize;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / kWarpSize);
  auto* scales = reinterpret_cast<float*>(dst);
  auto* q = reinterpret_cast<int8_t*>(dst + n_rows * 4);
  for (int64_t r = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / kWarpSize; r < n_rows; r += warps) {
    float amax = 0.0f;
    for (int64_t d = lane; d < head_dim; d += kWarpSize) {
      const float a = fabsf(load_value(x, x_f16, r * head_dim + d));
      amax = a > amax ? a : amax;  // NaN never enters
    }
    amax = warp_max(amax);  // lanes hold non-NaN values >= 0: fmaxf is the exact maximum
    const float inv = amax > 0.0f ? __fdiv_rn(127.0f, amax) : 0.0f;
    if (lane == 0) scales[r] = __fdiv_rn(amax, 127.0f);
    for (int64_t d = lane; d < head_dim; d += kWarpSize) {
      float t = __fmul_rn(load_value(x, x_f16, r * head_dim + d), inv);
      if (!(t >= -127.0f)) t = -127.0f;  // also NaN
      if (t > 127.0f) t = 127.0f;
      q[r * head_dim + d] = static_cast<int8_t>(__float2int_rn(t));
    }
  }
}

__global__ void decode_elements_kernel(WireCodec codec, const char* src, int64_t n_rows, int64_t head_dim, void* y,
                                       bool y_f16) {
  const int64_t n = n_rows * head_dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float v;
    switch (codec) {
      case WireCodec::kF16:
        v = f16_bits_to_f32(reinterpret_cast<const uint16_t*>(src)[i]);
        break;
      case WireCodec::kBF16:
        v = bf16_bits_to_f32(reinterpret_cast<const uint16_t*>(src)[i]);
        break;
      case WireCodec::kInt8: {
        const float scale = reinterpret_cast<const float*>(src)[i / head_dim];
        v = __fmul_rn(scale, float(reinterpret_cast<const int8_t*>(src + n_rows * 4)[i]));
        break;
      }
      default:
        v = reinterpret_cast<const float*>(src)[i];
        break;
    }
    if (y_f16) {
      static_cast<uint16_t*>(y)[i] = f32_to_f16_bits(v);
    } else {
      static_cast<float*>(y)[i] = v;
    }
  }
}

bool valid_codec(WireCodec c) {
  return c == WireCodec::kF32 || c == WireCodec::kF16 || c == WireCodec::kBF16 || c == WireCodec::kInt8;
}

size_t codec_alignment(WireCodec c) { return c == WireCodec::kF16 || c == WireCodec::kBF16 ? 2 : 4; }

// Shared checks of encode and decode: the backend, the value tensor, the payload's size and
// alignment. Fills ctx and the payload size.
Status check_call(Backend& b, WireCodec codec, const Tensor& t, const void* payload, size_t payload_bytes,
                  const char* op, OpContext*& ctx, size_t& need) {
  ctx = op_context(b);
  if (ctx == nullptr) return invalid_argument(cat(op, ": not a CUDA backend"));
  if (!valid_codec(codec)) return invalid_argument(cat(op, ": bad wire codec ", int(codec)));
  if (t.dtype != DType::kF32 && t.dtype != DType::kF16) {
    return invalid_argument(cat(op, ": values must be f32 or f16, got ", t.describe()));
  }
  KVB_RETURN_IF_ERROR(check_tensor(t, t.dtype, op, "values"));
  need = wire_payload_bytes(codec, t.rows(), t.cols());
  if (payload_bytes < need) {
    return invalid_argument(cat(op, ": ", t.describe(), " needs ", need, " payload bytes, got ", payload_bytes));
  }
  if (need > 0 && payload == nullptr) return invalid_argument(cat(op, ": null payload"));
  if (reinterpret_cast<uintptr_t>(payload) % codec_alignment(codec) != 0) {
    return invalid_argument(cat(op, ": the payload must be ", codec_alignment(codec), "-byte aligned"));
  }
  const auto p0 = reinterpret_cast<uintptr_t>(payload), t0 = reinterpret_cast<uintptr_t>(t.data);
  if (need > 0 && t.nbytes() > 0 && p0 < t0 + t.nbytes() && t0 < p0 + need) {
    return invalid_argument(cat(op, ": the payload overlaps the values"));
  }
  return Status::Ok();
}

}  // namespace

size_t wire_payload_bytes(WireCodec codec, int64_t n_rows, int64_t head_dim) {
  const auto n = size_t(n_rows * head_dim);
  switch (codec) {
    case WireCodec::kF32: return n * 4;
    case WireCodec::kF16:
    case WireCodec::kBF16: return n * 2;
    case WireCodec::kInt8: return n + size_t(n_rows) * 4;
  }
  return 0;
}

Status wire_encode(Backend& b, WireCodec codec, const Tensor& x, void* dst, size_t dst_bytes) {
  OpContext* ctx = nullptr;
  size_t need = 0;
  KVB_RETURN_IF_ERROR(check_call(b, codec, x, dst, dst_bytes, "wire_encode", ctx, need));
  const int64_t n_rows = x.rows(), head_dim = x.cols();
  if (n_rows == 0 || head_dim == 0) return Status::Ok();
  DeviceGuard guard(ctx->device);
  KVB_RETURN_IF_ERROR(guard.status());
  const bool x_f16 = x.dtype == DType::kF16;
  if (codec == WireCodec::kF32 && !x_f16) {
    KVB_CUDA_CHECK(cudaMemcpyAsync(dst, x.data, need, cudaMemcpyDefault, ctx->stream));
    return Status::Ok();
  }
  if (codec == WireCodec::kInt8) {
    constexpr int64_t kWarpsPerBlock = kElementwiseThreads / kWarpSize;
    const int64_t blocks = (n_rows + kWarpsPerBlock - 1) / kWarpsPerBlock;
    encode_int8_kernel<<<unsigned(blocks < 65536 ? blocks : 65536), kElementwiseThreads, 0, ctx->stream>>>(
        x.data, x_f16, static_cast<char*>(dst), n_rows, head_dim);
  } else {
    const int64_t n = n_rows * head_dim;
    encode_elements_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, ctx->stream>>>(codec, x.data, x_f16, dst,
                                                                                          n);
  }
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

Status wire_decode(Backend& b, WireCodec codec, const void* src, size_t src_bytes, const Tensor& y) {
  OpContext* ctx = nullptr;
  size_t need = 0;
  KVB_RETURN_IF_ERROR(check_call(b, codec, y, src, src_bytes, "wire_decode", ctx, need));
  const int64_t n_rows = y.rows(), head_dim = y.cols();
  if (n_rows == 0 || head_dim == 0) return Status::Ok();
  DeviceGuard guard(ctx->device);
  KVB_RETURN_IF_ERROR(guard.status());
  const bool y_f16 = y.dtype == DType::kF16;
  if (codec == WireCodec::kF32 && !y_f16) {
    KVB_CUDA_CHECK(cudaMemcpyAsync(y.data, src, need, cudaMemcpyDefault, ctx->stream));
    return Status::Ok();
  }
  const int64_t n = n_rows * head_dim;
  decode_elements_kernel<<<elementwise_blocks(n), kElementwiseThreads, 0, ctx->stream>>>(
      codec, static_cast<const char*>(src), n_rows, head_dim, y.data, y_f16);
  KVB_CUDA_CHECK_LAUNCH();
  return Status::Ok();
}

}  // namespace kvb::cuda
