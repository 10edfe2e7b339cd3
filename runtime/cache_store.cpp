#include "runtime/cache_store.h"

#include <fmt/format.h>
#include <sys/random.h>

#include <chrono>
#include <random>

namespace kvb::runtime {

namespace {

int64_t system_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void fill_random(unsigned char* p, size_t n) {
  size_t got = 0;
  while (got < n) {
    const ssize_t r = getrandom(p + got, n - got, 0);
    if (r <= 0) break;
    got += static_cast<size_t>(r);
  }
  if (got < n) {  // no getrandom (very old kernel): std::random_device reads /dev/urandom
    std::random_device rd;
    for (size_t i = got; i < n; ++i) p[i] = static_cast<unsigned char>(rd());
  }
}

}  // namespace

bool is_well_formed_cache_id(std::string_view id) {
  if (id.size() != 32) return false;
  for (char c : id) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

CacheStore::CacheStore(const CacheStoreOptions& opt, Clock clock)
    : opt_(opt), clock_(clock ? std::move(clock) : Clock(system_now_ms)) {}

std::string CacheStore::new_id_locked() {
  static constexpr char kHex[] = "0123456789abcdef";
  for (;;) {
    unsigned char raw[16];
    fill_random(raw, sizeof raw);
    std::string id(32, '0');
    for (size_t i = 0; i < 16; ++i) {
      id[2 * i] = kHex[raw[i] >> 4];
      id[2 * i + 1] = kHex[raw[i] & 15];
    }
    if (map_.find(id) == map_.end()) return id;  // a collision would need ~2^64 ids
  }
}

void CacheStore::touch_locked(Slot& s, int64_t t) {
  s.entry.info.last_used_ms = t;
  s.entry.info.expires_ms = s.entry.info.ttl_s ? t + int64_t(s.entry.info.ttl_s) * 1000 : 0;
  lru_.splice(lru_.begin(), lru_, s.lru_pos);
}

void CacheStore::erase_locked(Map::iterator it) {
  bytes_ -= it->second.entry.info.bytes;
  lru_.erase(it->second.lru_pos);
  map_.erase(it);
}

size_t CacheStore::sweep_locked(int64_t t) {
  size_t n = 0;
  for (auto it = map_.begin(); it != map_.end();) {
    const int64_t exp = it->second.entry.info.expires_ms;
    if (exp != 0 && exp <= t) {
      auto next = std::next(it);
      erase_locked(it);
      it = next;
      ++n;
    } else {
      ++it;
    }
  }
  expirations_ += n;
  return n;
}

Result<CacheInfo> CacheStore::insert(std::shared_ptr<const KvCache> cache, const InsertOptions& opt) {
  if (!cache) return invalid_argument("cache store: null cache");
  const uint64_t bytes = cache->bytes_allocated();
  const int64_t t = now();
  std::lock_guard<std::mutex> lock(mu_);
  sweep_locked(t);
  if (bytes > opt_.max_bytes) {
    return resource_exhausted(
        fmt::format("cache store: a cache of {} bytes exceeds the store budget of {} bytes", bytes, opt_.max_bytes));
  }
  if (bytes_ + bytes > opt_.max_bytes) {
    // Check first that evicting every unpinned entry would be enough: if not, evict nothing.
    const uint64_t need = bytes_ + bytes - opt_.max_bytes;
    uint64_t evictable = 0;
    for (const auto& [id, slot] : map_) {
      if (!slot.entry.info.pinned) evictable += slot.entry.info.bytes;
    }
    if (evictable < need) {
      return resource_exhausted(fmt::format(
          "cache store full: {} bytes needed, {} of {} bytes used, only {} bytes held by unpinned caches", bytes,
          bytes_, opt_.max_bytes, evictable));
    }
    // Oldest first (back of the LRU list), skipping pinned entries.
    auto pos = lru_.end();
    while (bytes_ + bytes > opt_.max_bytes && pos != lru_.begin()) {
      --pos;
      auto it = map_.find(*pos);
      if (it->second.entry.info.pinned) continue;
      pos = std::next(pos);  // erase_locked invalidates the current element only
      erase_locked(it);
      ++evictions_;
    }
  }
  CacheInfo info;
  info.id = new_id_locked();
  info.n_tokens = cache->n_tokens();
  info.bytes = bytes;
  info.pinned = opt.pinned;
  info.exact = opt.exact;
  info.created_ms = t;
  info.ttl_s = opt.ttl_s ? opt.ttl_s : opt_.default_ttl_s;
  info.fingerprint = opt.fingerprint;
  lru_.push_front(info.id);
  Slot slot{CacheEntry{std::move(cache), info}, lru_.begin()};
  auto [it, inserted] = map_.emplace(info.id, std::move(slot));
  touch_locked(it->second, t);
  bytes_ += bytes;
  return it->second.entry.info;
}

Result<CacheEntry> CacheStore::get(std::string_view id) {
  const int64_t t = now();
  std::lock_guard<std::mutex> lock(mu_);
  sweep_locked(t);
  auto it = map_.find(std::string(id));
  if (it == map_.end()) {
    ++misses_;
    return not_found(fmt::format("unknown cache id '{}' (never created, dropped, evicted or expired)", id));
  }
  ++hits_;
  touch_locked(it->second, t);
  return it->second.entry;
}

Result<CacheInfo> CacheStore::info(std::string_view id) {
  const int64_t t = now();
  std::lock_guard<std::mutex> lock(mu_);
  sweep_locked(t);
  auto it = map_.find(std::string(id));
  if (it == map_.end()) return not_found(fmt::format("unknown cache id '{}'", id));
  return it->second.entry.info;
}

Status CacheStore::drop(std::string_view id) {
  const int64_t t = now();
  std::lock_guard<std::mutex> lock(mu_);
  sweep_locked(t);
  auto it = map_.find(std::string(id));
  if (it == map_.end()) return not_found(fmt::format("unknown cache id '{}'", id));
  erase_locked(it);
  return Status::Ok();
}

Result<CacheInfo> CacheStore::set_pinned(std::string_view id, bool pinned) {
  const int64_t t = now();
  std::lock_guard<std::mutex> lock(mu_);
  sweep_locked(t);
  auto it = map_.find(std::string(id));
  if (it == map_.end()) return not_found(fmt::format("unknown cache id '{}'", id));
  it->second.entry.info.pinned = pinned;
  return it->second.entry.info;
}

std::vector<CacheInfo> CacheStore::list() {
  const int64_t t = now();
  std::lock_guard<std::mutex> lock(mu_);
  sweep_locked(t);
  std::vector<CacheInfo> out;
  out.reserve(map_.size());
  for (const std::string& id : lru_) out.push_back(map_.at(id).entry.info);
  return out;
}

CacheStoreStats CacheStore::stats() {
  const int64_t t = now();
  std::lock_guard<std::mutex> lock(mu_);
  sweep_locked(t);
  CacheStoreStats s;
  s.bytes_used = bytes_;
  s.bytes_budget = opt_.max_bytes;
  s.n_caches = static_cast<uint32_t>(map_.size());
  s.hits = hits_;
  s.misses = misses_;
  s.evictions = evictions_;
  s.expirations = expirations_;
  return s;
}

size_t CacheStore::sweep() {
  const int64_t t = now();
  std::lock_guard<std::mutex> lock(mu_);
  return sweep_locked(t);
}

Status check_cache_id(std::string_view id, std::string_view field) {
  if (id.empty()) return invalid_argument(fmt::format("{} is empty", field));
  if (!is_well_formed_cache_id(id)) {
    return invalid_argument(fmt::format("{} is not a cache id (32 lowercase hex characters)", field));
  }
  return Status::Ok();
}

}  // namespace kvb::runtime
