// Decode steps as op graphs (RunnerOptions::graphs), the engine's side of Backend::begin_graph /
// end_graph, on the CPU: RecordingBackend gives the CPU backend graphs as the CUDA backend has them
// (ops between begin and end are queued, not run; end_graph(true) runs them in order), refuses what
// a CUDA recording cannot contain (host copies, synchronize, uploads) and can fail a recording the
// way a scratch that must grow does. The same runner on real CUDA graphs is test_gpu_model's.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <functional>
#include <vector>

#include "engine/forward.h"
#include "engine/model.h"
#include "kernels/registry.h"
#include "support/test_support.h"

using namespace kvb;

namespace {

class RecordingBackend final : public Backend {
 public:
  explicit RecordingBackend(std::unique_ptr<Backend> inner) : in_(std::move(inner)) {}

  const Device& device() const override { return in_->device(); }
  void set_n_threads(int n) override { in_->set_n_threads(n); }
  int n_threads() const override { return in_->n_threads(); }

  Result<std::unique_ptr<Weight>> upload_weight(const Tensor& host) override {
    if (recording_) return violation("upload_weight");
    return in_->upload_weight(host);
  }
  Status copy_from_host(void* dst, const void* src, size_t n) override {
    return recording_ ? violation("copy_from_host") : in_->copy_from_host(dst, src, n);
  }
  Status copy_to_host(void* dst, const void* src, size_t n) override {
    return recording_ ? violation("copy_to_host") : in_->copy_to_host(dst, src, n);
  }
  Status synchronize() override { return recording_ ? violation("synchronize") : in_->synchronize(); }
  Status copy(void* dst, const void* src, size_t n) override {
    return op([=, this] { return in_->copy(dst, src, n); });
  }

  Status begin_graph() override {
    if (recording_) return violation("begin_graph");
    recording_ = true;
    ++recordings;
    return Status::Ok();
  }
  Status end_graph(bool run) override {
    if (!recording_) return violation("end_graph");
    recording_ = false;
    std::vector<std::function<Status()>> ops = std::move(queued_);
    queued_.clear();
    if (failed_) {
      failed_ = false;
      return unavailable("the recording failed");
    }
    if (!run) return Status::Ok();
    ++graphs_run;
    for (const auto& f : ops) KVB_RETURN_IF_ERROR(f());
    return Status::Ok();
  }

  using Backend::matmul;
  using Backend::attention;
  Status matmul(const Tensor& x, std::span<const MatmulOut> outs, RowMode mode) override {
    std::vector<MatmulOut> o(outs.begin(), outs.end());
    return op([=, this] { return in_->matmul(x, o, mode); });
  }
  Status rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) override {
    return op([=, this] { return in_->rms_norm(x, w, eps, y); });
  }
  Status rope(const Tensor& x, const Tensor& pos, const RopeParams& p) override {
    return op([=, this] { return in_->rope(x, pos, p); });
  }
  Status softmax(const Tensor& x) override {
    return op([=, this] { return in_->softmax(x); });
  }
  Status silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) override {
    return op([=, this] { return in_->silu_mul(gate, up, out); });
  }
  Status add(const Tensor& a, const Tensor& b, const Tensor& out) override {
    return op([=, this] { return in_->add(a, b, out); });
  }
  Status attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                   RowMode mode) override {
    return op([=, this] { return in_->attention(q, k, v, out, scale, mode); });
  }
  Status embedding(const Tensor& table, const Tensor& tokens, const Tensor& out) override {
    return op([=, this] { return in_->embedding(table, tokens, out); });
  }
  Status convert(const Tensor& src, const Tensor& dst) override {
    return op([=, this] { return in_->convert(src, dst); });
  }
  Status gelu(const Tensor& x, const Tensor& out) override {
    return op([=, this] { return in_->gelu(x, out); });
  }
  Status gate_add(const Tensor& receiver, const Tensor& logits, const Tensor& projected, const Tensor& out) override {
    return op([=, this] { return in_->gate_add(receiver, logits, projected, out); });
  }

  int recordings = 0;  // begin_graph calls
  int graphs_run = 0;  // recordings that ran
  int violations = 0;  // calls a recording cannot contain
  // The 6th op of these recordings (1-based) fails, as a scratch that must grow does.
  std::vector<int> fail_recordings;

 private:
  Status violation(const char* what) {
    ++violations;
    return failed_precondition(std::string(what) + " while recording a graph");
  }
  Status op(std::function<Status()> f) {
    if (!recording_) return f();
    if (queued_.size() == 5 && std::find(fail_recordings.begin(), fail_recordings.end(), recordings) !=
                                   fail_recordings.end()) {
      failed_ = true;
      return unavailable("injected: the scratch must grow");
    }
    queued_.push_back(std::move(f));
    return Status::Ok();
  }

  std::unique_ptr<Backend> in_;
  bool recording_ = false;
  bool failed_ = false;
  std::vector<std::function<Status()>> queued_;
};

struct Run {
  std::vector<std::vector<float>> logits;  // per decode step
  GraphStats stats;
};

// Prefills 8 tokens (one ubatch: never a graph), then 16 greedy decode steps.
Run decode(const Model& model, Backend& backend, bool graphs, DType cache_dtype) {
  auto runner = ModelRunner::create(model, backend, RunnerOptions{.n_batch = 8, .graphs = graphs});
  REQUIRE(runner.ok());
  auto cache = (*runner)->new_cache(64, cache_dtype);
  REQUIRE(cache.ok());
  const int32_t vocab = model.config.n_vocab;
  std::vector<float> logits(static_cast<size_t>(vocab));
  const std::vector<int32_t> prompt = {1, 403, 407, 1975 % 512, 471, 2053 % 512, 263, 931 % 512};
  REQUIRE((*runner)->forward(**cache, prompt, logits).ok());
  Run out;
  for (int step = 0; step < 16; ++step) {
    const int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
    const Status st = (*runner)->forward(**cache, std::span<const int32_t>(&next, 1), logits);
    INFO(st.to_string());
    REQUIRE(st.ok());
    out.logits.push_back(logits);
  }
  out.stats = (*runner)->graph_stats();
  return out;
}

bool same_bits(const std::vector<std::vector<float>>& a, const std::vector<std::vector<float>>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].size() != b[i].size() || std::memcmp(a[i].data(), b[i].data(), a[i].size() * sizeof(float)) != 0) {
      return false;
    }
  }
  return true;
}

std::unique_ptr<Backend> cpu_backend() {
  auto b = cpu_device().create_backend();
  REQUIRE(b.ok());
  return std::move(b).value();
}

}  // namespace

TEST_CASE("decode steps recorded as op graphs give op-by-op's logits bit for bit", "[model][graphs]") {
  auto model = load_model(test::model_path("stories260K/stories260K.bin"),
                          LoadOptions{test::model_path("stories260K/tok512.bin")});
  REQUIRE(model.ok());
  const DType dtype = GENERATE(DType::kF32, DType::kF16);
  CAPTURE(dtype_name(dtype));
  auto plain = cpu_backend();
  const Run want = decode(**model, *plain, /*graphs=*/false, dtype);
  CHECK(want.stats.graph_steps == 0);

  SECTION("every decode step is one graph; nothing the recording cannot hold is called in it") {
    RecordingBackend rec(cpu_backend());
    const Run got = decode(**model, rec, /*graphs=*/true, dtype);
    CHECK(rec.violations == 0);
    CHECK(got.stats.graph_steps == 16);
    CHECK(rec.graphs_run == 16);
    CHECK(got.stats.fallbacks == 0);
    CHECK_FALSE(got.stats.disabled);
    CHECK(same_bits(got.logits, want.logits));
  }
  SECTION("a recording that fails runs its step op by op; the next steps record again") {
    RecordingBackend rec(cpu_backend());
    rec.fail_recordings = {3, 9};
    const Run got = decode(**model, rec, /*graphs=*/true, dtype);
    CHECK(rec.violations == 0);
    CHECK(got.stats.graph_steps == 14);
    CHECK(got.stats.fallbacks == 2);
    CHECK_FALSE(got.stats.disabled);
    CHECK_THAT(got.stats.last_error, Catch::Contains("injected: the scratch must grow"));
    CHECK(same_bits(got.logits, want.logits));
  }
  SECTION("recordings that keep failing: the runner stops trying and decodes op by op") {
    RecordingBackend rec(cpu_backend());
    rec.fail_recordings = {1, 2, 3, 4, 5};
    const Run got = decode(**model, rec, /*graphs=*/true, dtype);
    CHECK(got.stats.disabled);
    CHECK(got.stats.fallbacks == 3);
    CHECK(rec.recordings == 3);
    CHECK(got.stats.graph_steps == 0);
    CHECK(same_bits(got.logits, want.logits));
  }
  SECTION("graphs off, or a backend without graphs (the CPU's): op by op, same logits") {
    RecordingBackend rec(cpu_backend());
    const Run off = decode(**model, rec, /*graphs=*/false, dtype);
    CHECK(rec.recordings == 0);
    CHECK(same_bits(off.logits, want.logits));
    auto cpu = cpu_backend();
    const Run none = decode(**model, *cpu, /*graphs=*/true, dtype);
    CHECK(none.stats.disabled);
    CHECK(none.stats.graph_steps == 0);
    CHECK(none.stats.last_error.empty());  // UNIMPLEMENTED is not an error
    CHECK(same_bits(none.logits, want.logits));
  }
}
