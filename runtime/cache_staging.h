// CacheStager: whole caches between an engine's device memory and host memory, from any thread.
//
// On a GPU agent the cache store holds device caches, while the wire codec (KvWireEncoder,
// KvWireDecoder) reads and writes host caches only. So:
//   ExportCache  stages a stored device cache into host memory (to_host) and encodes that copy —
//                the bytes on the wire are the same whatever device the agent runs on;
//   ImportCache  decodes into host memory and uploads the cache (to_device) before storing it.
// On a host device (the CPU) both are identities that return the cache they were given: no copy,
// no backend, the CPU agent pays nothing.
//
// Memory: staged host copies come from `host_buffers` (the agent passes a BufferPool over pinned
// memory, kernels/registry.h host_staging_buffer_type), uploads from the device's own memory (they
// become long-lived store entries). Both copies have exactly n_tokens cells.
//
// Ownership: borrows `device` (registry devices live for the process) and `host_buffers` (must
// outlive the stager and every cache it returns). Threading: thread-safe. Copies run on the
// stager's own backend (one CUDA stream apart from the engine's, so they overlap with decoding),
// one at a time under a mutex; each returns once its copy is complete.
#pragma once

#include <memory>
#include <mutex>

#include "engine/kv_cache.h"
#include "kernels/backend.h"
#include "kernels/status.h"

namespace kvb::runtime {

class CacheStager {
 public:
  // host_buffers null: host_staging_buffer_type(device). Creates a backend when `device` computes on
  // device memory (errors as Device::create_backend).
  static Result<std::unique_ptr<CacheStager>> create(const Device& device, const BufferType* host_buffers = nullptr);

  // True when the device computes on host memory: to_host and to_device never copy.
  bool on_host() const { return backend_ == nullptr; }

  // `cache` itself when it is host memory; else a host copy of it (RESOURCE_EXHAUSTED when host
  // memory runs out; errors of the copy as copy_cache).
  Result<std::shared_ptr<const KvCache>> to_host(std::shared_ptr<const KvCache> cache);
  // `cache` itself when the device is the host or the cache already is device memory; else a copy
  // of it in the device's memory (RESOURCE_EXHAUSTED when the device is full).
  Result<std::unique_ptr<KvCache>> to_device(std::unique_ptr<KvCache> cache);

 private:
  CacheStager(const Device& device, const BufferType& host_buffers) : device_(device), host_buffers_(host_buffers) {}

  const Device& device_;
  const BufferType& host_buffers_;
  std::mutex mu_;                     // serializes the copies on backend_
  std::unique_ptr<Backend> backend_;  // null on a host device
};

}  // namespace kvb::runtime
