// BufferPool: a BufferType that keeps freed buffers resident and hands them out again.
//
// An agent allocates a cache-sized buffer for every pulled cache and every Generate session
// (~150 MB for 2048 tokens of a 110M model). Fresh host memory is paid for at first touch: on the
// machines we run on, faulting pages in costs ~75 ms per 150 MB — five times the copy that fills
// them, and as much as the transfer itself. Reusing a recently freed buffer of about the same
// size skips all of it, so the agent routes its short-lived caches (pulls, sessions) through one
// pool; long-lived store entries use the device's memory directly.
//
// Policy: alloc(bytes) takes the smallest idle buffer of size in [bytes, bytes + bytes/8], else
// allocates from the base type; a buffer of at least min_pooled_bytes goes back to the pool when
// its owner destroys it, and the oldest idle buffers are released while the idle total exceeds
// max_idle_bytes. Buffer::size() of a handed-out buffer is its real size (what it occupies), which
// may exceed the request by up to 1/8. Contents of a reused buffer are whatever its last owner
// left: callers treat new buffers as uninitialized, as with any BufferType.
//
// Ownership and threading: the pool borrows `base` (which must outlive every buffer it allocated);
// buffers may outlive the BufferPool object itself (they share the idle list). alloc and buffer
// destruction are thread-safe (one mutex, held for list operations only; never while allocating or
// freeing memory).
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "kernels/backend.h"

namespace kvb::runtime {

struct BufferPoolOptions {
  size_t max_idle_bytes = size_t(1) << 30;    // 0 disables pooling
  size_t min_pooled_bytes = size_t(1) << 20;  // smaller buffers come and go through `base`
};

class BufferPool final : public BufferType {
 public:
  BufferPool(const BufferType& base, BufferPoolOptions opt = {});
  ~BufferPool() override;
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  std::string name() const override;  // "<base>+pool"
  size_t alignment() const override { return base_.alignment(); }
  bool is_host() const override { return base_.is_host(); }
  // RESOURCE_EXHAUSTED as the base type's alloc. Never fails for want of pool space.
  Result<std::unique_ptr<Buffer>> alloc(size_t bytes) const override;

  struct Stats {
    size_t idle_buffers = 0, idle_bytes = 0;
    uint64_t hits = 0, misses = 0;  // allocs of at least min_pooled_bytes served from / not from the pool
  };
  Stats stats() const;

 private:
  struct Shared;
  class Loan;
  const BufferType& base_;
  std::shared_ptr<Shared> shared_;
};

}  // namespace kvb::runtime
