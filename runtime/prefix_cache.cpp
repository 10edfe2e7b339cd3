#include "runtime/prefix_cache.h"

#include <algorithm>

namespace kvb::runtime {

namespace {

// splitmix64's finalizer: a bijection that spreads every input bit over the output.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

uint64_t combine(uint64_t h, uint64_t v) { return mix64(h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2))); }

}  // namespace

uint64_t prefix_root_hash(uint64_t fingerprint, int32_t block_tokens) {
  return combine(combine(0x6b76627269646765ULL /* "kvbridge" */, fingerprint), uint64_t(uint32_t(block_tokens)));
}

uint64_t prefix_block_hash(uint64_t parent, std::span<const int32_t> tokens) {
  uint64_t h = combine(parent, tokens.size());
  for (const int32_t t : tokens) h = combine(h, uint64_t(uint32_t(t)));
  return h;
}

PrefixCache::PrefixCache(const PrefixCacheOptions& opt, const KvLayout& layout, const BufferType& memory)
    : opt_(opt), layout_(layout), memory_(memory) {
  KVB_ASSERT(opt_.block_tokens > 0, "prefix cache: block_tokens must be > 0");
  block_bytes_ = uint64_t(opt_.block_tokens) * layout_.cell_bytes() * 2 * uint64_t(layout_.n_layer);
  root_ = prefix_root_hash(opt_.fingerprint, opt_.block_tokens);
}

PrefixCache::Entry* PrefixCache::find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens) {
  const auto it = entries_.find(hash);
  if (it == entries_.end() || it->second.parent != parent) return nullptr;
  const std::span<const int32_t> have = it->second.block->tokens();
  return std::equal(have.begin(), have.end(), tokens.begin(), tokens.end()) ? &it->second : nullptr;
}

void PrefixCache::touch(uint64_t hash, Entry& e) {
  lru_.erase(e.lru_pos);
  lru_.push_front(hash);
  e.lru_pos = lru_.begin();
}

PrefixMatch PrefixCache::match(std::span<const int32_t> tokens, int32_t limit, int32_t counted_from) {
  const int32_t b = opt_.block_tokens;
  PrefixMatch m;
  m.block_tokens = b;
  limit = std::clamp<int32_t>(limit, 0, int32_t(tokens.size()));
  if (!enabled() || limit <= 0) return m;
  query_tokens_ += uint64_t(std::max(0, limit - counted_from));
  std::vector<uint64_t> keys;
  uint64_t parent = root_;
  int32_t at = 0;
  for (; at + b <= limit; at += b) {
    const std::span<const int32_t> block_tokens = tokens.subspan(size_t(at), size_t(b));
    const uint64_t h = prefix_block_hash(parent, block_tokens);
    Entry* e = find(h, parent, block_tokens);
    if (e == nullptr) break;
    m.blocks.push_back(e->block);
    keys.push_back(h);
    parent = h;
  }
  // Copy-on-write: the child of the last matched block that shares the most of the next tokens.
  const int32_t want = std::min(b, limit - at);
  if (const auto kids = children_.find(parent); kids != children_.end() && want > 0) {
    for (const uint64_t k : kids->second) {
      const Entry& e = entries_.at(k);
      const std::span<const int32_t> have = e.block->tokens();
      int32_t n = 0;
      while (n < want && have[size_t(n)] == tokens[size_t(at + n)]) ++n;
      if (n > m.partial_n) {
        m.partial_n = n;
        m.partial = e.block;
      }
    }
  }
  for (auto it = keys.rbegin(); it != keys.rend(); ++it) touch(*it, entries_.at(*it));  // deepest first
  hit_tokens_ += uint64_t(std::max(0, m.tokens() - counted_from));
  gauges_stale_ = true;  // m holds blocks
  return m;
}

bool PrefixCache::make_room() {
  while ((entries_.size() + 1) * block_bytes_ > opt_.max_bytes) {
    // The least recently used block that nothing else holds.
    auto victim = lru_.end();
    for (auto it = lru_.end(); it != lru_.begin();) {
      --it;
      if (entries_.at(*it).block.use_count() == 1) {
        victim = it;
        break;
      }
    }
    if (victim == lru_.end()) return false;
    erase(*victim);
    ++evictions_;
  }
  return true;
}

void PrefixCache::erase(uint64_t hash) {
  const auto it = entries_.find(hash);
  KVB_ASSERT(it != entries_.end(), "prefix cache: erasing an unknown block");
  if (auto kids = children_.find(it->second.parent); kids != children_.end()) {
    std::erase(kids->second, hash);
    if (kids->second.empty()) children_.erase(kids);
  }
  lru_.erase(it->second.lru_pos);
  entries_.erase(it);
  blocks_used_ = entries_.size();
}

std::vector<std::shared_ptr<const KvCache>> PrefixCache::insert(std::span<const int32_t> tokens,
                                                                std::vector<std::shared_ptr<const KvCache>> held,
                                                                const KvCache& cells, Backend& backend) {
  const int32_t b = opt_.block_tokens;
  if (!enabled()) return held;
  const int32_t start = int32_t(held.size()) * b;
  KVB_ASSERT(cells.pos0() == start && int64_t(start) + cells.n_tokens() <= int64_t(tokens.size()),
             "prefix cache: the cells do not continue the held blocks");
  std::vector<uint64_t> keys;  // of every block in `held`, in order
  uint64_t parent = root_;
  for (size_t i = 0; i < held.size(); ++i) {
    parent = prefix_block_hash(parent, tokens.subspan(i * size_t(b), size_t(b)));
    keys.push_back(parent);
  }
  const int32_t end = start + cells.n_tokens();
  std::vector<uint64_t> made;
  for (int32_t at = start; at + b <= end; at += b) {
    const std::span<const int32_t> block_tokens = tokens.subspan(size_t(at), size_t(b));
    const uint64_t h = prefix_block_hash(parent, block_tokens);
    Entry* e = find(h, parent, block_tokens);
    if (e == nullptr) {
      if (entries_.count(h) != 0 || !make_room()) break;  // a collision keeps the first; a full budget stops
      auto block = KvCache::create(memory_, layout_, b);
      if (!block.ok()) break;
      if (!(*block)->append_cells(backend, cells, at - start, b).ok()) break;
      made.push_back(h);
      lru_.push_front(h);
      e = &entries_[h];
      *e = Entry{std::shared_ptr<const KvCache>(std::move(block).value()), parent, lru_.begin()};
      children_[parent].push_back(h);
      blocks_used_ = entries_.size();
    }
    held.push_back(e->block);
    keys.push_back(h);
    parent = h;
  }
  // Deepest first, so that parents stay more recent than their children.
  for (size_t i = keys.size(); i-- > 0;) {
    const auto it = entries_.find(keys[i]);
    if (it != entries_.end() && it->second.block == held[i]) touch(keys[i], it->second);
  }
  if (!made.empty() && !backend.synchronize().ok()) {
    // The copies may not have happened: forget what this call made (nobody else holds it yet).
    held.resize(size_t(start / b));
    for (const uint64_t h : made) erase(h);
  }
  gauges_stale_ = true;  // the caller may hold more blocks now
  return held;
}

void PrefixCache::refresh_gauges(bool force) {
  if (!force && !gauges_stale_) return;
  uint64_t in_use = 0;
  for (const auto& [h, e] : entries_) in_use += e.block.use_count() > 1 ? 1 : 0;
  blocks_in_use_ = in_use;
  gauges_stale_ = false;
}

PrefixCacheStats PrefixCache::stats() const {
  PrefixCacheStats s;
  s.query_tokens = query_tokens_;
  s.hit_tokens = hit_tokens_;
  s.blocks_used = blocks_used_;
  s.blocks_total = block_bytes_ > 0 ? opt_.max_bytes / block_bytes_ : 0;
  s.blocks_in_use = blocks_in_use_;
  s.evictions = evictions_;
  return s;
}

}  // namespace kvb::runtime
