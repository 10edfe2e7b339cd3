// Perplexity and KL-divergence math (engine/perplexity.h) on hand-computable logits, the
// base-logits file (engine/perplexity_base.h), and the save → compare round trip of
// engine/perplexity_run.h on stories260K (against itself: KLD 0, same top token everywhere;
// against a random-weight model of the same vocabulary size: KLD > 0).
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <numeric>

#include "engine/forward.h"
#include "engine/model.h"
#include "engine/perplexity.h"
#include "engine/perplexity_base.h"
#include "engine/perplexity_run.h"
#include "engine/synth.h"
#include "kernels/registry.h"
#include "support/test_support.h"

using namespace kvb;
using namespace kvb::ppl;

TEST_CASE("plan_windows cuts n_tokens / n_ctx windows and scores their second half", "[perplexity]") {
  auto plan = plan_windows(10, 4);
  REQUIRE(plan.ok());
  CHECK(plan->n_chunk == 2);
  CHECK(plan->first == 2);
  CHECK(plan->n_scored() == 1);  // row 2 predicts id 3
  CHECK(plan_windows(1000, 256)->n_scored() == 127);
  CHECK(plan_windows(1000, 256, 2)->n_chunk == 2);
  auto short_text = plan_windows(255, 256);
  CHECK(short_text.status().code() == StatusCode::kInvalidArgument);
  CHECK(short_text.status().message().find("255") != std::string::npos);
  CHECK(plan_windows(100, 2).status().code() == StatusCode::kInvalidArgument);

  const std::vector<int32_t> ids = {5, 6, 7, 8, 9, 10, 11, 12, 13};
  CHECK(window_ids(ids, *plan, 1, 1) == std::vector<int32_t>{1, 10, 11, 12});
  CHECK(window_ids(ids, *plan, 1, -1) == std::vector<int32_t>{9, 10, 11, 12});
}

TEST_CASE("token_nll is -ln softmax", "[perplexity]") {
  const std::vector<float> uniform(8, 0.25f);
  CHECK(token_nll(uniform, 3) == Approx(std::log(8.0)).epsilon(1e-6));
  // p = (1/4, 3/4): logits (0, ln 3), shifted by a constant.
  const std::vector<float> two = {10.f, 10.f + float(std::log(3.0))};
  CHECK(token_nll(two, 1) == Approx(std::log(4.0 / 3.0)).epsilon(1e-6));
  CHECK(token_nll(two, 0) == Approx(std::log(4.0)).epsilon(1e-6));
}

TEST_CASE("NllStats: PPL = exp(mean), error = PPL·sqrt(var/(n-1))", "[perplexity]") {
  NllStats st;
  for (double v : {1.0, 2.0, 3.0}) st.add(v);
  CHECK(st.mean() == Approx(2.0));
  CHECK(st.ppl() == Approx(std::exp(2.0)));
  // E[x²] - E[x]² = 14/3 - 4 = 2/3; / (n - 1) = 1/3.
  CHECK(st.ppl_err() == Approx(std::exp(2.0) * std::sqrt(1.0 / 3.0)));
  NllStats one;
  one.add(1.0);
  CHECK(one.ppl_err() == 0);

  CHECK(mean_and_uncertainty(6, 14, 3).err == 0);  // llama.cpp: no error below 11 values
  std::vector<double> xs(20);
  std::iota(xs.begin(), xs.end(), 1.0);
  double s = 0, s2 = 0;
  for (double x : xs) s += x, s2 += x * x;
  const MeanErr me = mean_and_uncertainty(s, s2, xs.size());
  CHECK(me.mean == Approx(10.5));
  CHECK(me.err == Approx(std::sqrt((s2 / 20 - 10.5 * 10.5) / 19)));
}

TEST_CASE("percentile interpolates like llama.cpp", "[perplexity]") {
  const std::vector<float> v = {1, 2, 3, 4};
  CHECK(percentile(v, 0.5f) == Approx(2.5f));
  CHECK(percentile(v, 0.25f) == Approx(1.75f));
  CHECK(percentile(v, 0.f) == 1);
  CHECK(percentile(v, 1.f) == 4);
}

TEST_CASE("base rows store log-probs within one quantization step", "[perplexity]") {
  const std::vector<float> logits = {1.0f, -2.0f, 3.5f, 0.25f, -30.0f};  // -30 is below the floor
  std::vector<uint16_t> row(size_t(base_row_words(5)));
  CHECK(row.size() == 10);  // 4 header words + 5 rounded up to 6
  const double nll = encode_base_row(logits, 2, row);
  CHECK(nll == Approx(token_nll(logits, 2)).epsilon(1e-6));
  const double step = (3.5 - (3.5 - 16)) / 65535;
  double lse = 0;
  for (float l : logits) lse += std::exp(double(l));
  lse = std::log(lse);
  for (int32_t i = 0; i < 4; ++i) CHECK(std::abs(base_log_prob(row, i) - (logits[size_t(i)] - lse)) <= step);
  CHECK(base_log_prob(row, 4) == Approx(3.5 - 16 - lse).margin(1e-5));  // clamped to the floor
}

TEST_CASE("KldStats: KL of hand-computed distributions, same top, Δp", "[perplexity]") {
  const std::vector<float> base = {0.f, 0.f};  // p = (1/2, 1/2)
  std::vector<uint16_t> row(size_t(base_row_words(2)));
  encode_base_row(base, 1, row);

  KldStats same;
  const KldPoint z = same.add(base, row, 1);
  CHECK(std::abs(z.kld) < 1e-6);
  CHECK(std::abs(z.p_diff) < 1e-6);
  CHECK(same.n_same_top == 1);

  const std::vector<float> q = {0.f, float(std::log(3.0))};  // q = (1/4, 3/4)
  KldStats st;
  const KldPoint d = st.add(q, row, 1);
  // KL(p || q) = ½ ln(½ / ¼) + ½ ln(½ / ¾) = ½ ln(4/3).
  CHECK(d.kld == Approx(0.5 * std::log(4.0 / 3.0)).epsilon(1e-4));
  CHECK(d.p_diff == Approx(0.25f).epsilon(1e-4));
  CHECK(st.nll.sum == Approx(std::log(4.0 / 3.0)).epsilon(1e-6));
  CHECK(st.nll_base.sum == Approx(std::log(2.0)).epsilon(1e-4));
  CHECK(st.n_same_top == 0);  // argmax q = 1, argmax p = 0 (first on ties)

  const KldReport r = kld_report(st);
  CHECK(r.kld.mean == Approx(d.kld));
  CHECK(r.ppl.mean == Approx(4.0 / 3.0).epsilon(1e-5));
  CHECK(r.ppl_ratio.mean == Approx((4.0 / 3.0) / 2.0).epsilon(1e-4));
  CHECK(r.same_top.mean == 0);
  REQUIRE(r.kld_percentiles.size() == 11);
  CHECK(r.kld_percentiles.front().first == "Maximum");
  CHECK(r.kld_percentiles[5].first == "Median");
}

namespace {

std::string temp_file(const std::string& name) { return test::temp_dir() + "/" + name; }

void write_base(const std::string& path, bool trailer) {
  const BaseHeader h{4, 3, 2};
  auto w = BaseWriter::create(path, h, std::vector<int32_t>{1, 2, 0, 1, 1, 0, 0, 2});
  REQUIRE(w.ok());
  std::vector<uint16_t> rows(h.chunk_words());
  for (uint16_t c = 0; c < 2; ++c) {
    std::fill(rows.begin(), rows.end(), uint16_t(c + 7));
    REQUIRE((*w)->append_chunk(rows).ok());
  }
  if (trailer) {
    REQUIRE((*w)->finish({0x1234'5678'9abc'def0ull, 1}).ok());
  } else {
    REQUIRE((*w)->finish({}).ok());
    std::filesystem::resize_file(path, std::filesystem::file_size(path) - 24);  // llama.cpp's layout
  }
}

}  // namespace

TEST_CASE("base-logits file: round trip, llama.cpp layout, damaged files", "[perplexity][file]") {
  const std::string path = temp_file("base.kld");
  write_base(path, true);
  // 20 header + 4·8 ids + 2 windows · 1 row · (4 + 4) words · 2 bytes + 24 trailer.
  CHECK(std::filesystem::file_size(path) == 20 + 32 + 32 + 24);
  auto r = BaseReader::open(path);
  REQUIRE(r.ok());
  CHECK((*r)->header().n_ctx == 4);
  CHECK((*r)->header().n_vocab == 3);
  CHECK((*r)->ids() == std::vector<int32_t>{1, 2, 0, 1, 1, 0, 0, 2});
  REQUIRE((*r)->trailer().has_value());
  CHECK((*r)->trailer()->tokenizer_hash == 0x1234'5678'9abc'def0ull);
  CHECK((*r)->trailer()->bos == 1);
  std::vector<uint16_t> rows;
  REQUIRE((*r)->read_chunk(rows).ok());
  CHECK(rows == std::vector<uint16_t>(8, 7));
  REQUIRE((*r)->read_chunk(rows).ok());
  CHECK(rows == std::vector<uint16_t>(8, 8));
  CHECK((*r)->read_chunk(rows).code() == StatusCode::kOutOfRange);

  const std::string plain = temp_file("plain.kld");
  write_base(plain, false);
  auto p = BaseReader::open(plain);
  REQUIRE(p.ok());
  CHECK(!(*p)->trailer().has_value());

  std::filesystem::resize_file(plain, std::filesystem::file_size(plain) - 2);
  auto truncated = BaseReader::open(plain);
  CHECK(truncated.status().code() == StatusCode::kInvalidArgument);
  CHECK(truncated.status().message().find("truncated") != std::string::npos);

  const std::string junk = temp_file("junk.kld");
  std::ofstream(junk) << "not a logits file at all";
  CHECK(BaseReader::open(junk).status().code() == StatusCode::kInvalidArgument);
  CHECK(BaseReader::open(temp_file("missing.kld")).status().code() == StatusCode::kNotFound);
}

namespace {

struct Loaded {
  std::unique_ptr<Model> model;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<ModelRunner> runner;
};

Loaded make_runner(std::unique_ptr<Model> model) {
  Loaded l;
  l.model = std::move(model);
  auto b = cpu_device().create_backend();
  REQUIRE(b.ok());
  l.backend = std::move(b).value();
  auto r = ModelRunner::create(*l.model, *l.backend, RunnerOptions{.n_batch = 48});  // windows span ubatches
  REQUIRE(r.ok());
  l.runner = std::move(r).value();
  return l;
}

}  // namespace

TEST_CASE("save base logits, then compare: itself gives KLD 0, another model KLD > 0", "[perplexity][model]") {
  auto m = load_model(test::model_path("stories260K/stories260K.gguf"));
  REQUIRE(m.ok());
  Loaded base = make_runner(std::move(m).value());
  const std::string text = test::read_file(std::string(KVB_SOURCE_DIR) + "/tests/data/ppl_text.txt");
  const std::vector<int32_t> ids = base.model->tokenizer->encode(text);
  auto plan = plan_windows(ids.size(), 128, 4);
  REQUIRE(plan.ok());
  REQUIRE(plan->n_chunk == 4);
  const int32_t bos = base.model->tokenizer->bos();

  const std::string path = temp_file("stories.kld");
  auto w = BaseWriter::create(path, {plan->n_ctx, base.model->config.n_vocab, plan->n_chunk},
                              std::span(ids).first(4 * 128));
  REQUIRE(w.ok());
  auto ppl_saved = run_perplexity(*base.runner, ids, *plan, PplRunOptions{.bos = bos, .save = w->get()});
  REQUIRE(ppl_saved.ok());
  REQUIRE((*w)->finish({}).ok());
  auto ppl_plain = run_perplexity(*base.runner, ids, *plan, PplRunOptions{.bos = bos});
  REQUIRE(ppl_plain.ok());
  CHECK(ppl_plain->count == size_t(4 * 63));
  CHECK(ppl_plain->ppl() == Approx(ppl_saved->ppl()).epsilon(1e-5));
  CHECK(ppl_plain->ppl() > 1.0);
  CHECK(ppl_plain->ppl() < 100.0);  // stories260K knows simple stories

  SECTION("against itself") {
    auto r = BaseReader::open(path);
    REQUIRE(r.ok());
    auto kld = run_kl_divergence(*base.runner, **r, KldRunOptions{.bos = bos});
    REQUIRE(kld.ok());
    const KldReport rep = kld_report(*kld);
    CHECK(kld->count == ppl_plain->count);
    CHECK(std::abs(rep.kld.mean) < 1e-5);  // only the 16-bit quantization of the base
    CHECK(rep.same_top.mean == 1.0);
    CHECK(rep.ppl_ratio.mean == Approx(1.0).epsilon(1e-4));
    CHECK(rep.ppl.mean == Approx(ppl_plain->ppl()).epsilon(1e-5));
  }
  SECTION("against a random-weight model with the same vocabulary size") {
    auto synth = synth_model("stories260K", DType::kF32, 7);
    REQUIRE(synth.ok());
    Loaded other = make_runner(std::move(synth).value());
    REQUIRE(other.model->config.n_vocab == base.model->config.n_vocab);
    auto r = BaseReader::open(path);
    REQUIRE(r.ok());
    auto kld = run_kl_divergence(*other.runner, **r, KldRunOptions{.bos = bos});
    REQUIRE(kld.ok());
    const KldReport rep = kld_report(*kld);
    CHECK(rep.kld.mean > 0.5);
    CHECK(rep.same_top.mean < 0.5);
    CHECK(rep.ppl_base.mean == Approx(ppl_plain->ppl()).epsilon(1e-3));
  }
  SECTION("a model of another vocabulary size is refused") {
    auto synth = synth_model("stories260K:n_vocab=600", DType::kF32, 7);
    REQUIRE(synth.ok());
    Loaded other = make_runner(std::move(synth).value());
    auto r = BaseReader::open(path);
    REQUIRE(r.ok());
    CHECK(run_kl_divergence(*other.runner, **r, KldRunOptions{}).status().code() == StatusCode::kFailedPrecondition);
  }
}
