// Timing helpers shared by the benchmarks. Header-only.
#pragma once

#include <algorithm>
#include <chrono>

namespace kvb::bench {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Best time of fn() in seconds over at least min_reps runs and about budget_s seconds, after one
// warm-up run (at most ~200 runs).
template <class F>
double best_time(F&& fn, int min_reps = 3, double budget_s = 0.3) {
  fn();
  double best = 1e30, total = 0;
  for (int rep = 0; rep < min_reps || total < budget_s; ++rep) {
    const auto t0 = Clock::now();
    fn();
    const double t = seconds_since(t0);
    best = std::min(best, t);
    total += t;
    if (rep > 200) break;
  }
  return best;
}

}  // namespace kvb::bench
