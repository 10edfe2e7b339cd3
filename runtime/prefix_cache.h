// PrefixCache: automatic prefix caching. KV cells a sequence computed from position 0 are kept in
// blocks of `block_tokens` cells and found again by the tokens that made them, so a request whose
// tokens start with a cached prefix prefills only the rest (vLLM's automatic prefix caching).
//
// Blocks. A block is an immutable KvCache of exactly block_tokens cells at positions
// [i·B, (i+1)·B) (B = block_tokens), held by std::shared_ptr<const KvCache>. Sequences attend to
// them in place (SeqStep::prefix): two sequences that share a prefix hold the same blocks, not
// copies. A block is "in use" while anything besides the cache holds it (a running sequence);
// in-use blocks are never evicted.
//
// Keys. Block i's key is a hash chain: h(-1) = root(fingerprint, B), h(i) = block_hash(h(i-1),
// tokens of block i). The hash is a fixed 64-bit mix with no seed from the process, so the same
// tokens give the same keys in every process and run. A lookup also compares the block's tokens
// and its parent's key, so a hash collision can never hand out wrong cells.
//
// Matching. match() walks the chain over whole blocks, then looks at the children of the last
// matched block for the one sharing the longest run of the following tokens: those cells are
// copied into the sequence's own cache (copy-on-write at the first divergent block), so a prefix
// is reused to the token, not only to the block.
//
// Budget and eviction. Blocks live in `memory` (the engine's session memory) and count
// bytes_allocated() against max_bytes. Making room evicts the least recently used blocks that are
// not in use; when that is not enough the new block is not cached (insert() stops there; the
// sequence keeps its own cells), never an error. A lookup refreshes the blocks it matched, the
// deepest first, so a parent is always at least as recent as its children and chains are evicted
// from their leaves.
//
// Threading: one thread (the engine loop's) calls everything but stats(), which any thread may
// call (atomic counters).
#pragma once

#include <atomic>
#include <cstdint>
#include <list>
#include <memory>
#include <span>
#include <unordered_map>
#include <vector>

#include "engine/kv_cache.h"
#include "kernels/backend.h"
#include "kernels/status.h"

namespace kvb::runtime {

// The hash chain (documented above; stable across processes and versions of this file's users).
uint64_t prefix_root_hash(uint64_t fingerprint, int32_t block_tokens);
uint64_t prefix_block_hash(uint64_t parent, std::span<const int32_t> tokens);

struct PrefixCacheOptions {
  int32_t block_tokens = 64;  // cells per block
  uint64_t max_bytes = 0;     // 0: no prefix caching
  uint64_t fingerprint = 0;   // ModelIdentity::fingerprint: caches of different models never match
};

struct PrefixCacheStats {
  uint64_t query_tokens = 0;  // tokens looked up (match()'s limit, summed)
  uint64_t hit_tokens = 0;    // of those, found cached (whole blocks and copied cells)
  uint64_t blocks_used = 0;   // blocks held
  uint64_t blocks_total = 0;  // blocks the budget holds
  uint64_t blocks_in_use = 0; // held by a running sequence too (as of the last refresh_gauges())
  uint64_t evictions = 0;
};

// What match() found: whole blocks for the first blocks.size()·B tokens, then `partial_n` cells of
// `partial` (a shared block whose first partial_n tokens match the next ones; 0 when none).
struct PrefixMatch {
  std::vector<std::shared_ptr<const KvCache>> blocks;
  std::shared_ptr<const KvCache> partial;
  int32_t partial_n = 0;
  int32_t block_tokens = 0;
  int32_t tokens() const { return int32_t(blocks.size()) * block_tokens + partial_n; }
};

class PrefixCache {
 public:
  // `layout` is the engine's cache layout; `memory` the memory blocks are allocated from
  // (borrowed; must outlive the cache and be memory `backend` computes on).
  PrefixCache(const PrefixCacheOptions& opt, const KvLayout& layout, const BufferType& memory);

  bool enabled() const { return opt_.max_bytes > 0 && block_bytes_ <= opt_.max_bytes; }
  int32_t block_tokens() const { return opt_.block_tokens; }

  // The longest cached prefix of tokens[0, limit) (limit <= tokens.size()). Counts the tokens
  // from `counted_from` on (those before came with the request, e.g. a context cache's): limit -
  // counted_from query tokens, and the match's hit tokens past counted_from.
  PrefixMatch match(std::span<const int32_t> tokens, int32_t limit, int32_t counted_from = 0);

  // Caches the whole blocks of a sequence that was computed from position 0: `tokens` are its
  // tokens (those past its cells are ignored), `held` the blocks it already attends to (covering tokens[0, held.size()·B)), and
  // `cells` its own cells, which continue them (cells.pos0() == held.size()·B). Returns the blocks
  // that now cover its tokens, `held` first: each further block is found in the cache (made by
  // another sequence meanwhile) or cut out of `cells` (enqueued on `backend`; synchronized before
  // returning). Stops at the first block it cannot make (budget full of in-use blocks, allocation
  // failure): caching is best effort and never fails the sequence.
  std::vector<std::shared_ptr<const KvCache>> insert(std::span<const int32_t> tokens,
                                                     std::vector<std::shared_ptr<const KvCache>> held,
                                                     const KvCache& cells, Backend& backend);

  // Recounts the blocks in use (held by anything besides the cache), which stats() reports: a scan
  // of every block, done only after match() or insert() handed blocks out, or when `force`d (the
  // engine forces it when sequences end and let theirs go). The engine calls it once per loop
  // iteration, when no transient holders exist.
  void refresh_gauges(bool force = false);
  PrefixCacheStats stats() const;

 private:
  struct Entry {
    std::shared_ptr<const KvCache> block;
    uint64_t parent = 0;
    std::list<uint64_t>::iterator lru_pos;  // in lru_, front = most recently used
  };

  // The cached block with key `hash` whose parent is `parent` and whose tokens are `tokens`.
  Entry* find(uint64_t hash, uint64_t parent, std::span<const int32_t> tokens);
  void touch(uint64_t hash, Entry& e);
  // Evicts unused blocks, least recently used first, until one more block fits; false if it cannot.
  bool make_room();
  void erase(uint64_t hash);

  const PrefixCacheOptions opt_;
  const KvLayout layout_;
  const BufferType& memory_;
  uint64_t block_bytes_ = 0;
  uint64_t root_ = 0;
  std::unordered_map<uint64_t, Entry> entries_;
  std::unordered_map<uint64_t, std::vector<uint64_t>> children_;  // parent key → child keys
  std::list<uint64_t> lru_;
  bool gauges_stale_ = false;  // match() or insert() ran since the last refresh_gauges()

  std::atomic<uint64_t> query_tokens_{0}, hit_tokens_{0}, evictions_{0}, blocks_used_{0}, blocks_in_use_{0};
};

}  // namespace kvb::runtime
