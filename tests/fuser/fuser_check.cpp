// fuser_check: loads a fuser directory with kvb::fuser::Fuser on the CPU backend and replays cases
// computed by an independent implementation (tests/python/test_convert_c2c.py: a torch C2CProjector).
//
//   fuser_check <fuser_dir> <cases.safetensors> [--tol 1e-5] [--threads N] [--reference]
//
// cases.safetensors holds, for k = 0 .. n_cases-1, f32 tensors "case.{k}.sharer" [n][sharer kv_dim],
// "case.{k}.receiver" [n][receiver kv_dim] and "case.{k}.expected" (same shape), and metadata
// "n_cases", "case.{k}.layer", "case.{k}.is_v" ("0"/"1"). For each case the receiver is fused and
// compared with expected: max|got - expected| / max|expected| <= tol. A gated-off branch must leave
// the receiver bit-identical. --reference also checks the scalar reference (projector_reference.h).
// Exit status: 0 all cases pass, 1 a mismatch, 2 a usage or load error.
#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "fuser/fuser.h"
#include "fuser/projector_reference.h"
#include "engine/safetensors.h"
#include "kernels/cpu/cpu_backend.h"

namespace {

using namespace kvb;
using namespace kvb::fuser;

double rel_error(const std::vector<float>& got, const float* want, size_t n, size_t& worst) {
  double num = 0, den = 0;
  worst = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = std::fabs(double(got[i]) - double(want[i]));
    if (!(d <= num)) {  // NaN counts as the worst
      num = std::isnan(d) ? INFINITY : d;
      worst = i;
    }
    den = std::max(den, std::fabs(double(want[i])));
  }
  return den > 0 ? num / den : num;
}

int run(int argc, char** argv) {
  if (argc < 3) {
    fmt::print(stderr, "usage: fuser_check <fuser_dir> <cases.safetensors> [--tol X] [--threads N] [--reference]\n");
    return 2;
  }
  const std::string dir = argv[1], cases_path = argv[2];
  double tol = 1e-5;
  int threads = 2;
  bool reference = false;
  for (int i = 3; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--tol" && i + 1 < argc) {
      tol = std::atof(argv[++i]);
    } else if (a == "--threads" && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else if (a == "--reference") {
      reference = true;
    } else {
      fmt::print(stderr, "fuser_check: unknown argument {}\n", a);
      return 2;
    }
  }
  Result<std::unique_ptr<Backend>> be = cpu::create_backend(cpu::detected_isa(), threads);
  if (!be.ok()) return fmt::print(stderr, "fuser_check: {}\n", be.status().to_string()), 2;
  Result<std::unique_ptr<Fuser>> f = Fuser::load(dir, *be.value());
  if (!f.ok()) return fmt::print(stderr, "fuser_check: {}\n", f.status().to_string()), 2;
  std::unique_ptr<ReferenceFuser> ref;
  if (reference) {
    Result<std::unique_ptr<ReferenceFuser>> r = ReferenceFuser::load(dir);
    if (!r.ok()) return fmt::print(stderr, "fuser_check: {}\n", r.status().to_string()), 2;
    ref = std::move(r).value();
  }
  Result<SafetensorsFile> cases = SafetensorsFile::open(cases_path);
  if (!cases.ok()) return fmt::print(stderr, "fuser_check: {}\n", cases.status().to_string()), 2;
  const auto& meta = cases->metadata();
  const auto meta_int = [&](const std::string& key) { return meta.count(key) ? std::atoi(meta.at(key).c_str()) : -1; };
  const int n_cases = meta_int("n_cases");
  if (n_cases < 0) return fmt::print(stderr, "fuser_check: {} has no n_cases metadata\n", cases_path), 2;

  int failures = 0;
  for (int k = 0; k < n_cases; ++k) {
    const std::string p = fmt::format("case.{}.", k);
    Result<Tensor> sharer = cases->tensor(p + "sharer");
    Result<Tensor> receiver = cases->tensor(p + "receiver");
    Result<Tensor> expected = cases->tensor(p + "expected");
    const int layer = meta_int(p + "layer"), is_v = meta_int(p + "is_v");
    if (!sharer.ok() || !receiver.ok() || !expected.ok() || layer < 0 || is_v < 0 ||
        expected->numel() != receiver->numel()) {
      return fmt::print(stderr, "fuser_check: case {} is incomplete\n", k), 2;
    }
    const size_t n = size_t(receiver->numel());
    const auto* orig = receiver->as<const float>();
    const auto* want = expected->as<const float>();
    const bool gate = f.value()->gate(layer, is_v == 1);

    std::vector<std::pair<std::string, std::vector<float>>> outputs;
    std::vector<float> got(orig, orig + n);
    Tensor out = *receiver;
    out.data = got.data();
    if (Status s = f.value()->fuse(layer, is_v == 1, *sharer, out); !s.ok()) {
      return fmt::print(stderr, "fuser_check: case {}: {}\n", k, s.to_string()), 2;
    }
    outputs.emplace_back("fuser", std::move(got));
    if (ref != nullptr) {
      std::vector<float> r(orig, orig + n);
      out.data = r.data();
      if (Status s = ref->fuse(layer, is_v == 1, *sharer, out); !s.ok()) {
        return fmt::print(stderr, "fuser_check: case {}: reference: {}\n", k, s.to_string()), 2;
      }
      outputs.emplace_back("reference", std::move(r));
    }
    for (const auto& [who, o] : outputs) {
      size_t worst = 0;
      const double err = rel_error(o, want, n, worst);
      bool ok = err <= tol;
      if (!gate) ok = ok && std::memcmp(o.data(), orig, n * sizeof(float)) == 0;
      fmt::print("case {:3} layer {:2} {} gate {} tokens {:5} {:9}: rel err {:.3e}{}\n", k, layer, is_v ? "V" : "K",
                 gate ? "on " : "off", receiver->shape[0], who, err, ok ? "" : "  FAIL");
      if (!ok) {
        fmt::print("  worst at {}: got {} expected {} (receiver was {})\n", worst, o[worst], want[worst], orig[worst]);
        ++failures;
      }
    }
  }
  fmt::print("fuser_check: {} case(s), {} failure(s), tol {}\n", n_cases, failures, tol);
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) { return run(argc, argv); }
