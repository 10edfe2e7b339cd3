#include "runtime/cache_staging.h"

#include <fmt/format.h>

#include "kernels/registry.h"

namespace kvb::runtime {

Result<std::unique_ptr<CacheStager>> CacheStager::create(const Device& device, const BufferType* host_buffers) {
  std::unique_ptr<CacheStager> s(
      new CacheStager(device, host_buffers != nullptr ? *host_buffers : host_staging_buffer_type(device)));
  if (!device.buffer_type().is_host()) {
    auto b = device.create_backend();
    if (!b.ok()) return b.status().with_context(fmt::format("creating the cache staging backend on {}", device.name()));
    s->backend_ = std::move(b).value();
  }
  return s;
}

Result<std::shared_ptr<const KvCache>> CacheStager::to_host(std::shared_ptr<const KvCache> cache) {
  if (cache->is_host()) return cache;
  std::lock_guard<std::mutex> lock(mu_);
  auto copy = clone_cache(*cache, host_buffers_, *backend_);
  if (!copy.ok()) return copy.status().with_context("staging a device cache in host memory");
  return std::shared_ptr<const KvCache>(std::move(copy).value());
}

Result<std::unique_ptr<KvCache>> CacheStager::to_device(std::unique_ptr<KvCache> cache) {
  if (on_host() || !cache->is_host()) return cache;
  std::lock_guard<std::mutex> lock(mu_);
  auto copy = clone_cache(*cache, device_.buffer_type(), *backend_);
  if (!copy.ok()) return copy.status().with_context(fmt::format("uploading a cache to {}", device_.name()));
  return copy;
}

}  // namespace kvb::runtime
