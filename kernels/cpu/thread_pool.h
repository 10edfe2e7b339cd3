// ThreadPool: the persistent workers of one CPU backend.
//
// parallel_for(n, chunk, fn) cuts [0, n) into chunks that the calling thread (tid 0) and the
// workers (tid 1 .. n_threads-1) claim from one atomic ticket, and returns when every chunk is done.
// The caller works too and never waits for a worker that has not started: a worker descheduled by a
// noisy neighbour costs at most the chunk it already holds. Between jobs the workers spin for
// ~100 µs, so the ~100 back-to-back ops of a decode step dispatch in well under a microsecond, and
// then sleep on a futex (no CPU is burnt while the backend is idle).
//
// Threading: one thread drives a pool (as one thread drives a Backend). parallel_for is not
// reentrant: a job must not call it on its own pool. Jobs must not throw. Each tid runs on one thread
// only, so per-tid scratch memory needs no locking.
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

  // fn(int64_t begin, int64_t end, int tid) over chunks of `chunk` items covering [0, n); returns
  // when all are done. Runs inline, as one range, when there is a single chunk or a single thread.
  template <class F>
  void parallel_for(int64_t n, int64_t chunk, F&& fn) {
    if (n <= 0) return;
    chunk = std::max<int64_t>({chunk, 1, (n + kMaxChunks - 1) / kMaxChunks});
    const int64_t n_chunks = (n + chunk - 1) / chunk;
    if (n_chunks == 1 || n_threads_ == 1) {
      fn(int64_t(0), n, 0);
      return;
    }
    auto body = [&](int64_t c, int tid) { fn(c * chunk, std::min(n, (c + 1) * chunk), tid); };
    run_chunks(uint32_t(n_chunks),
               Job{&body, [](void* ctx, int64_t c, int tid) { (*static_cast<decltype(body)*>(ctx))(c, tid); }});
  }

 private:
  static constexpr int64_t kMaxChunks = int64_t(1) << 30;
  struct Job {
    void* ctx = nullptr;
    void (*fn)(void* ctx, int64_t chunk, int tid) = nullptr;
  };

  void run_chunks(uint32_t n_chunks, Job job);
  // Claims and runs chunks of the current job until none is left.
  void work(int tid);
  void start_workers(int n_threads);
  void stop_workers();
  void worker_loop(int tid, uint32_t generation);

  int n_threads_ = 1;
  std::vector<std::thread> workers_;
  Job job_;                        // written by the caller before the ticket is published
  std::atomic<bool> stop_{false};  // published by the generation_ bump that ends the workers
  // Each hot atomic on its own cache line.
  // ticket_ = n_chunks << 32 | next unclaimed chunk. One word, so a claim (CAS) can only succeed on
  // a live job, and job_ cannot change under a claimed chunk (the caller waits for it).
  alignas(64) std::atomic<uint64_t> ticket_{0};
  alignas(64) std::atomic<uint32_t> n_done_{0};      // chunks finished in the current job
  alignas(64) std::atomic<uint32_t> generation_{0};  // bumped per job (and to stop): wakes workers
  alignas(64) std::atomic<int> n_sleeping_{0};       // workers blocked in generation_.wait
  std::atomic<bool> caller_sleeping_{false};
};

}  // namespace kvb::cpu
