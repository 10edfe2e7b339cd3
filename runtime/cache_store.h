// CacheStore: the agent's named KV caches — id → immutable cache + metadata, under a byte budget.
//
// Ownership: entries hold std::shared_ptr<const KvCache>. A reader that got a pointer from get()
// keeps the cache alive for as long as it holds it, whatever the store does meanwhile (drop,
// eviction, expiry only remove the store's reference); caches are never modified after insert().
//
// Lifetime of a handle (the id returned by insert):
//   * it stays valid until it has been idle for its TTL (ttl_s after the last get()/insert();
//     0 = never expires) or until drop() — those are the only ways an entry goes away on its own;
//   * eviction happens only under pressure: when an insert() would push the store past its byte
//     budget, the least recently used UNPINNED entries are evicted, oldest first, until the new
//     cache fits. Pinned entries are never evicted (only their TTL or a drop removes them);
//   * an evicted, expired or dropped id answers NOT_FOUND, exactly as an id that never existed;
//   * when the new cache cannot fit even after evicting every unpinned entry, insert() fails with
//     RESOURCE_EXHAUSTED and evicts nothing: no existing cache is touched.
// Ids are 128-bit random numbers from the OS entropy source, as 32 lowercase hex characters,
// so a client cannot guess another client's id.
//
// Bytes are KvCache::bytes_allocated() (what the cache really occupies), not bytes_used().
// Time comes from an injectable clock (milliseconds since the Unix epoch) so tests can expire
// entries without sleeping. Expired entries are removed lazily by every call and by sweep().
//
// Threading: every method is thread-safe (one mutex; no call does more than O(n_entries) work
// under it and none allocates cache memory under it).
#pragma once

#include <cstdint>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "engine/kv_cache.h"
#include "kernels/status.h"

namespace kvb::runtime {

struct CacheInfo {
  std::string id;
  int32_t n_tokens = 0;
  uint64_t bytes = 0;
  bool pinned = false;
  int64_t created_ms = 0;    // Unix ms
  int64_t last_used_ms = 0;  // Unix ms
  int64_t expires_ms = 0;    // Unix ms; 0 = never
  uint32_t ttl_s = 0;        // 0 = never expires
  uint64_t fingerprint = 0;  // ModelIdentity::fingerprint of the model that made it
  // Its cells are what this model's prefill of its tokens computes (made by this agent's engine
  // from tokens, or from such caches): it may feed the prefix cache (SessionInput::context_exact).
  bool exact = false;
};

struct CacheStoreStats {
  uint64_t bytes_used = 0;
  uint64_t bytes_budget = 0;
  uint32_t n_caches = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
  uint64_t expirations = 0;
};

struct CacheStoreOptions {
  uint64_t max_bytes = uint64_t(1) << 30;
  uint32_t default_ttl_s = 3600;  // for inserts with ttl_s == 0 (0 here = never expire)
};

struct InsertOptions {
  uint32_t ttl_s = 0;  // 0 = the store's default
  bool pinned = false;
  uint64_t fingerprint = 0;
  bool exact = false;  // CacheInfo::exact
};

struct CacheEntry {
  std::shared_ptr<const KvCache> cache;
  CacheInfo info;
};

// True for ids this store could have issued (32 lowercase hex characters).
bool is_well_formed_cache_id(std::string_view id);
// INVALID_ARGUMENT naming `field` unless `id` is well formed.
Status check_cache_id(std::string_view id, std::string_view field);

class CacheStore {
 public:
  using Clock = std::function<int64_t()>;  // Unix milliseconds

  explicit CacheStore(const CacheStoreOptions& opt, Clock clock = {});

  // Takes a reference to `cache` (which must not be modified afterwards) and returns its new
  // entry's info. RESOURCE_EXHAUSTED when the cache does not fit the budget even after evicting
  // every unpinned entry (nothing is evicted then); INVALID_ARGUMENT for a null cache.
  Result<CacheInfo> insert(std::shared_ptr<const KvCache> cache, const InsertOptions& opt);
  // The cache and its info; refreshes last use (LRU order and idle TTL). NOT_FOUND when unknown,
  // dropped, evicted or expired. Counts a hit or a miss.
  Result<CacheEntry> get(std::string_view id);
  // Info without touching last use or the hit/miss counters. NOT_FOUND as get().
  Result<CacheInfo> info(std::string_view id);
  // Removes the entry (readers holding the cache keep it). NOT_FOUND when unknown.
  Status drop(std::string_view id);
  // Pins or unpins; returns the updated info. NOT_FOUND when unknown.
  Result<CacheInfo> set_pinned(std::string_view id, bool pinned);
  // Every live entry, most recently used first.
  std::vector<CacheInfo> list();
  CacheStoreStats stats();
  // Removes expired entries now; returns how many.
  size_t sweep();

  uint64_t max_bytes() const { return opt_.max_bytes; }
  uint32_t default_ttl_s() const { return opt_.default_ttl_s; }

 private:
  struct Slot {
    CacheEntry entry;
    std::list<std::string>::iterator lru_pos;  // in lru_, front = most recently used
  };
  using Map = std::unordered_map<std::string, Slot>;

  int64_t now() const { return clock_(); }
  // All below: mu_ held.
  size_t sweep_locked(int64_t now);
  void erase_locked(Map::iterator it);
  void touch_locked(Slot& s, int64_t now);
  std::string new_id_locked();

  const CacheStoreOptions opt_;
  const Clock clock_;
  std::mutex mu_;
  Map map_;
  std::list<std::string> lru_;
  uint64_t bytes_ = 0;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0, expirations_ = 0;
};

}  // namespace kvb::runtime
