// Helpers for the CPU kernel tests: one backend per (ISA, thread count) this machine can run,
// random data, NaN-poisoned outputs with guard zones, and a normalized error.
#pragma once

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/backend.h"
#include "kernels/cpu/cpu_backend.h"

namespace kvb::test {

struct BackendConfig {
  std::string label;  // "avx2/2t"
  Backend* backend;
};

// Every ISA up to detected_isa() with 1 and 2 threads. Created once per process.
inline const std::vector<BackendConfig>& cpu_backends() {
  static std::vector<std::unique_ptr<Backend>> owned;
  static const std::vector<BackendConfig> configs = [] {
    std::vector<BackendConfig> out;
    for (cpu::Isa isa : {cpu::Isa::kGeneric, cpu::Isa::kAvx2, cpu::Isa::kAvx512}) {
      if (int(isa) > int(cpu::detected_isa())) continue;
      for (int threads : {1, 2}) {
        auto b = cpu::create_backend(isa, threads);
        REQUIRE(b.ok());
        out.push_back({std::string(cpu::isa_name(isa)) + "/" + std::to_string(threads) + "t", b.value().get()});
        owned.push_back(std::move(b).value());
      }
    }
    return out;
  }();
  return configs;
}

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// An f32 output region of n floats surrounded by guard floats; poisoned with NaN by default.
class Guarded {
 public:
  explicit Guarded(size_t n) : buf_(n + 2 * kGuard, kSentinel), n_(n) { poison(); }
  float* data() { return buf_.data() + kGuard; }
  const float* data() const { return buf_.data() + kGuard; }
  size_t size() const { return n_; }
  void poison() {
    for (size_t i = 0; i < n_; ++i) data()[i] = std::nanf("");
  }
  void fill(const std::vector<float>& v) {
    for (size_t i = 0; i < n_; ++i) data()[i] = v[i];
  }
  std::vector<float> values() const { return {data(), data() + n_}; }
  bool guards_intact() const {
    for (size_t i = 0; i < kGuard; ++i) {
      if (buf_[i] != kSentinel || buf_[kGuard + n_ + i] != kSentinel) return false;
    }
    return true;
  }

 private:
  static constexpr size_t kGuard = 64;
  static constexpr float kSentinel = 12345.0f;
  std::vector<float> buf_;
  size_t n_;
};

// max |a - ref| / max |ref| (NaN in a counts as infinite error).
inline double normalized_error(const float* a, const std::vector<double>& ref) {
  double max_ref = 0.0, max_diff = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_ref = std::max(max_ref, std::fabs(ref[i]));
    const double d = std::fabs(double(a[i]) - ref[i]);
    if (std::isnan(d)) return INFINITY;
    max_diff = std::max(max_diff, d);
  }
  return max_ref > 0 ? max_diff / max_ref : max_diff;
}

}  // namespace kvb::test
