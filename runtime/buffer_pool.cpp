#include "runtime/buffer_pool.h"

#include <list>
#include <mutex>
#include <vector>

namespace kvb::runtime {

struct BufferPool::Shared {
  explicit Shared(const BufferPoolOptions& o) : opt(o) {}

  // Takes an idle buffer of size in [bytes, bytes + bytes/8] (the smallest), or null.
  std::unique_ptr<Buffer> take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu);
    auto best = idle.end();
    for (auto it = idle.begin(); it != idle.end(); ++it) {
      const size_t n = (*it)->size();
      if (n >= bytes && n - bytes <= bytes / 8 && (best == idle.end() || n < (*best)->size())) best = it;
    }
    if (best == idle.end()) {
      ++misses;
      return nullptr;
    }
    std::unique_ptr<Buffer> b = std::move(*best);
    idle.erase(best);
    idle_bytes -= b->size();
    ++hits;
    return b;
  }

  void give_back(std::unique_ptr<Buffer> b) {
    std::vector<std::unique_ptr<Buffer>> released;  // freed after the lock is dropped
    {
      std::lock_guard<std::mutex> lock(mu);
      idle_bytes += b->size();
      idle.push_back(std::move(b));
      while (idle_bytes > opt.max_idle_bytes && !idle.empty()) {
        idle_bytes -= idle.front()->size();
        released.push_back(std::move(idle.front()));
        idle.pop_front();
      }
    }
  }

  const BufferPoolOptions opt;
  mutable std::mutex mu;
  std::list<std::unique_ptr<Buffer>> idle;  // oldest first; guarded by mu
  size_t idle_bytes = 0;                    // guarded by mu
  uint64_t hits = 0, misses = 0;            // guarded by mu
};

// A base buffer on loan from the pool: everything forwards to it, and destruction returns it.
class BufferPool::Loan final : public Buffer {
 public:
  Loan(std::unique_ptr<Buffer> inner, std::shared_ptr<BufferPool::Shared> pool)
      : inner_(std::move(inner)), pool_(std::move(pool)) {}
  ~Loan() override { pool_->give_back(std::move(inner_)); }

  void* data() override { return inner_->data(); }
  size_t size() const override { return inner_->size(); }
  bool is_host() const override { return inner_->is_host(); }
  Status set(size_t offset, const void* host_src, size_t n) override { return inner_->set(offset, host_src, n); }
  Status get(size_t offset, void* host_dst, size_t n) const override { return inner_->get(offset, host_dst, n); }

 private:
  std::unique_ptr<Buffer> inner_;
  std::shared_ptr<BufferPool::Shared> pool_;
};

BufferPool::BufferPool(const BufferType& base, BufferPoolOptions opt)
    : base_(base), shared_(std::make_shared<Shared>(opt)) {}

BufferPool::~BufferPool() = default;

std::string BufferPool::name() const { return base_.name() + "+pool"; }

Result<std::unique_ptr<Buffer>> BufferPool::alloc(size_t bytes) const {
  const BufferPoolOptions& o = shared_->opt;
  if (o.max_idle_bytes == 0 || bytes < o.min_pooled_bytes) return base_.alloc(bytes);
  std::unique_ptr<Buffer> b = shared_->take(bytes);
  if (b == nullptr) {
    KVB_ASSIGN_OR_RETURN(b, base_.alloc(bytes));
  }
  std::unique_ptr<Buffer> loan(new (std::nothrow) Loan(std::move(b), shared_));
  if (loan == nullptr) return resource_exhausted("buffer pool: cannot allocate a buffer object");
  return loan;
}

BufferPool::Stats BufferPool::stats() const {
  std::lock_guard<std::mutex> lock(shared_->mu);
  Stats s;
  s.idle_buffers = shared_->idle.size();
  s.idle_bytes = shared_->idle_bytes;
  s.hits = shared_->hits;
  s.misses = shared_->misses;
  return s;
}

}  // namespace kvb::runtime
