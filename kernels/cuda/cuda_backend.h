// The CUDA implementation of the backend interface (kernels/backend.h): NVIDIA GPUs of compute
// capability 8.0 or newer (the build carries sm_80 and sm_90 code, plus compute_90 PTX).
//
// Host-includable without CUDA headers; registry.cpp is the only user outside kernels/cuda.
//
//   CudaDevice     "cuda:N" (N = the CUDA runtime's ordinal, after CUDA_VISIBLE_DEVICES). Memory
//                  from cudaMemGetInfo; supports_op: matmul/embedding/convert for F32, F16, BF16
//                  and Q8_0; attention for f32/f16 caches; the rest for f32.
//   buffer_type()  device memory (cudaMalloc, 256-byte aligned, is_host false). Buffer::set/get are
//                  synchronous cudaMemcpy calls; they also wait for work queued on every backend
//                  stream of the device (those streams are blocking streams).
//   host_buffer_type(d)  pinned host memory (cudaHostAlloc, is_host true): staging for
//                  copy_from_host/copy_to_host that truly overlap with compute, and memory the GPU
//                  can read directly.
//   create_backend()  one CudaBackend = one CUDA stream + one cuBLAS handle + scratch memory:
//                  - every op and copy is enqueued on that stream in call order and returns
//                    without waiting; synchronize() waits for all of them;
//                  - copy_from_host from pageable memory returns once the source has been read
//                    (the host may reuse it at once); from pinned memory the host must keep it
//                    unchanged until synchronize(). copy_to_host into pageable memory completes
//                    before returning; into pinned memory, after synchronize().
//                  - upload_weight is synchronous (the host matrix may be freed on return); F32,
//                    F16 and BF16 keep their type, Q8_0 is stored dequantized as F16 (see
//                    kernels/cuda/matmul.cu), so Weight::dtype() reports F16 for it.
//                  - embedding checks token ids on the device: a bad id zeroes its row and makes the
//                    next synchronize() return INVALID_ARGUMENT naming it.
//                  - begin_graph()/end_graph() record ops as a CUDA graph (on a private
//                    non-blocking stream, thread-local capture mode) and launch it on the stream;
//                    an op that would grow the scratch fails the recording (UNAVAILABLE) and the
//                    caller runs the ops directly. cuBLAS has a fixed 32 MiB workspace, so it
//                    never allocates inside a recording.
//                  - set_n_threads is ignored; n_threads() is 1.
//                  Not thread-safe (one thread drives a backend); two backends may run
//                  concurrently on one device, each on its own stream.
// Device objects live for the whole process.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/backend.h"

namespace kvb::cuda {

// The CUDA devices of this process, probed once (thread-safe) with cudaGetDeviceCount and
// cudaGetDeviceProperties. devices is empty when there is no driver, no GPU, or no GPU of compute
// capability >= 8.0; `problem` then says why (and names skipped GPUs otherwise, or is empty).
struct Discovery {
  std::vector<const Device*> devices;
  std::string problem;
};
const Discovery& discover();

// The pinned host buffer type of a CUDA device; nullptr when `d` is not a CUDA device.
const BufferType* host_buffer_type(const Device& d);

}  // namespace kvb::cuda
