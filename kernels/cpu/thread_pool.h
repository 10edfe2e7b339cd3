// ThreadPool: the persistent workers of one CPU backend.
//
// run(fn) executes fn(tid, n_threads) once per thread, tid 0 on the calling thread, and returns when
// every thread has finished (a full barrier). Between jobs the workers spin for ~100 µs, so the
// ~100 back-to-back ops of a decode step cost a few hundred nanoseconds each to dispatch, and then
// sleep on a futex (no CPU is burnt while the backend is idle).
//
// Threading: one thread drives a pool (as one thread drives a Backend). run() is not reentrant: a job
// must not call run() or parallel_for() on its own pool. Jobs must not throw.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <thread>
#include <type_traits>
#include <vector>

namespace kvb::cpu {

class ThreadPool {
 public:
  // Starts n_threads - 1 workers (n_threads is clamped to [1, 512]). If the OS refuses to start a
  // thread, the pool keeps the ones it has (n_threads() reports how many).
  explicit ThreadPool(int n_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int n_threads() const { return n_threads_; }
  // Joins or starts workers. Only between jobs (never from inside one).
  void resize(int n_threads);

  // fn(int tid, int n_threads) on every thread; returns after all are done.
  template <class F>
  void run(F&& fn) {
    if (n_threads_ == 1) {
      fn(0, 1);
      return;
    }
    run_job(Job{&fn, [](void* ctx, int tid, int n) { (*static_cast<std::remove_reference_t<F>*>(ctx))(tid, n); }});
  }

  // Splits [0, n) into chunks of `chunk` items handed out dynamically (a thread that is descheduled
  // by a noisy neighbour does not stall the others); fn(int64_t begin, int64_t end, int tid).
  // Runs inline, as one range, when there is a single chunk or a single thread.
  template <class F>
  void parallel_for(int64_t n, int64_t chunk, F&& fn) {
    if (n <= 0) return;
    chunk = std::max<int64_t>(chunk, 1);
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    if (n_chunks == 1 || n_threads_ == 1) {
      fn(int64_t(0), n, 0);
      return;
    }
    next_chunk_.store(0, std::memory_order_relaxed);
    run([&](int tid, int) {
      for (;;) {
        const int64_t c = next_chunk_.fetch_add(1, std::memory_order_relaxed);
        if (c >= n_chunks) break;
        fn(c * chunk, std::min(n, (c + 1) * chunk), tid);
      }
    });
  }

 private:
  struct Job {
    void* ctx = nullptr;
    void (*fn)(void* ctx, int tid, int n_threads) = nullptr;
  };

  void run_job(Job job);
  void start_workers(int n_threads);
  void stop_workers();
  void worker_loop(int tid, uint32_t generation);

  int n_threads_ = 1;
  std::vector<std::thread> workers_;
  Job job_;
  bool stop_ = false;  // published by the generation_ bump that ends the workers
  // Each hot atomic on its own cache line: workers poll generation_ while others bump n_done_.
  alignas(64) std::atomic<uint32_t> generation_{0};  // bumped once per job (and once to stop)
  alignas(64) std::atomic<uint32_t> n_done_{0};      // workers finished with the current job
  alignas(64) std::atomic<int> n_sleeping_{0};       // workers blocked in generation_.wait
  std::atomic<bool> caller_sleeping_{false};
  alignas(64) std::atomic<int64_t> next_chunk_{0};
};

}  // namespace kvb::cpu
