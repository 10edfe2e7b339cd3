#include "kernels/cpu/thread_pool.h"

#include <chrono>
#include <system_error>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace kvb::cpu {
namespace {

constexpr int kMaxThreads = 512;
// Spin budget before sleeping: long enough to cover the gap between two ops of a decode step
// (the caller's own bookkeeping), short enough not to burn a shared core while idle.
constexpr auto kSpinTime = std::chrono::microseconds(100);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#else
  std::this_thread::yield();
#endif
}

// Spins until `a` differs from `old` or the spin budget is spent; returns the last value seen.
template <class T>
T spin_while_equal(const std::atomic<T>& a, T old) {
  T v = a.load(std::memory_order_acquire);
  if (v != old) return v;
  const auto deadline = std::chrono::steady_clock::now() + kSpinTime;
  for (int i = 1;; ++i) {
    cpu_relax();
    v = a.load(std::memory_order_acquire);
    if (v != old) return v;
    if ((i & 63) == 0 && std::chrono::steady_clock::now() > deadline) return v;
  }
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) { start_workers(n_threads); }

ThreadPool::~ThreadPool() { stop_workers(); }

void ThreadPool::resize(int n_threads) {
  if (std::clamp(n_threads, 1, kMaxThreads) == n_threads_) return;
  stop_workers();
  start_workers(n_threads);
}

void ThreadPool::start_workers(int n_threads) {
  n_threads = std::clamp(n_threads, 1, kMaxThreads);
  stop_.store(false, std::memory_order_relaxed);
  const uint32_t generation = generation_.load();
  workers_.reserve(size_t(n_threads - 1));
  for (int tid = 1; tid < n_threads; ++tid) {
    try {
      workers_.emplace_back([this, tid, generation] { worker_loop(tid, generation); });
    } catch (const std::system_error&) {
      break;  // keep the workers we have
    }
  }
  n_threads_ = int(workers_.size()) + 1;
}

void ThreadPool::stop_workers() {
  if (workers_.empty()) return;
  stop_.store(true, std::memory_order_relaxed);
  generation_.fetch_add(1, std::memory_order_seq_cst);
  generation_.notify_all();
  for (std::thread& t : workers_) t.join();
  workers_.clear();
  n_threads_ = 1;
}

void ThreadPool::run_chunks(uint32_t n_chunks, Job job) {
  job_ = job;
  n_done_.store(0, std::memory_order_relaxed);
  ticket_.store(uint64_t(n_chunks) << 32, std::memory_order_release);
  // seq_cst pairs with the workers' n_sleeping_ increment (Dekker): either a worker sees the new
  // generation before it blocks, or we see it counted as sleeping and wake it.
  generation_.fetch_add(1, std::memory_order_seq_cst);
  if (n_sleeping_.load(std::memory_order_seq_cst) > 0) generation_.notify_all();

  work(0);

  // Only chunks that workers claimed can be outstanding now.
  for (;;) {
    uint32_t done = n_done_.load(std::memory_order_acquire);
    if (done == n_chunks) break;
    const uint32_t seen = spin_while_equal(n_done_, done);
    if (seen != done) continue;  // progress: keep spinning
    // Spin budget spent (a worker was descheduled mid-chunk): sleep, same Dekker pairing as above.
    caller_sleeping_.store(true, std::memory_order_seq_cst);
    done = n_done_.load(std::memory_order_seq_cst);
    if (done != n_chunks) n_done_.wait(done, std::memory_order_seq_cst);
    caller_sleeping_.store(false, std::memory_order_relaxed);
  }
}

void ThreadPool::work(int tid) {
  uint64_t t = ticket_.load(std::memory_order_acquire);
  for (;;) {
    const auto n = uint32_t(t >> 32), next = uint32_t(t);
    if (next >= n) return;
    // A successful claim also acquires job_ (published before the ticket), which cannot change
    // until this chunk is counted done.
    if (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
    job_.fn(job_.ctx, int64_t(next), tid);
    n_done_.fetch_add(1, std::memory_order_seq_cst);
    if (caller_sleeping_.load(std::memory_order_seq_cst)) n_done_.notify_one();
    t = ticket_.load(std::memory_order_acquire);
  }
}

void ThreadPool::worker_loop(int tid, uint32_t generation) {
  for (;;) {
    uint32_t g = spin_while_equal(generation_, generation);
    if (g == generation) {
      n_sleeping_.fetch_add(1, std::memory_order_seq_cst);
      while ((g = generation_.load(std::memory_order_seq_cst)) == generation) {
        generation_.wait(generation, std::memory_order_seq_cst);
      }
      n_sleeping_.fetch_sub(1, std::memory_order_relaxed);
    }
    generation = g;
    if (stop_.load(std::memory_order_relaxed)) return;
    work(tid);
  }
}

}  // namespace kvb::cpu
