// The engine against an independent reference: llama2.c run.c logits and greedy tokens for
// stories260K (from the .gguf and the .bin) and aidreams260K, through the reference forward pass
// and the optimized runner, batched and token by token.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>

#include "engine/forward.h"
#include "engine/forward_reference.h"
#include "engine/gguf.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "kernels/registry.h"
#include "support/reference_vectors.h"
#include "support/model_checks.h"
#include "support/test_support.h"

using namespace kvb;

namespace {

using test::max_abs_diff;
using test::RefCase;
using test::load_reference;

std::unique_ptr<Model> load(const std::string& model, const std::string& tokenizer = "") {
  auto m = load_model(test::model_path(model), LoadOptions{tokenizer.empty() ? "" : test::model_path(tokenizer)});
  INFO(m.status().to_string());
  REQUIRE(m.ok());
  return std::move(m).value();
}

constexpr float kLogitTol = 1e-3f;  // the bound; run.c and kvbridge sum in different orders

struct ModelUnderTest {
  const char* name;
  const char* model;
  const char* tokenizer;
  const char* reference;
};

const ModelUnderTest kModels[] = {
    {"stories260K.gguf", "stories260K/stories260K.gguf", "", "stories260K.llama2c-reference.json"},
    {"stories260K.bin", "stories260K/stories260K.bin", "stories260K/tok512.bin", "stories260K.llama2c-reference.json"},
    {"aidreams260K.bin", "aidreams260K/aidreams260K.bin", "aidreams260K/tok512.bin",
     "aidreams260K.llama2c-reference.json"},
};

}  // namespace

TEST_CASE("reference forward matches llama2.c run.c", "[model][reference]") {
  for (const ModelUnderTest& mut : kModels) {
    DYNAMIC_SECTION(mut.name) {
      auto model = load(mut.model, mut.tokenizer);
      const int32_t vocab = model->config.n_vocab;
      for (const RefCase& rc : load_reference(mut.reference)) {
        INFO("prompt: " << rc.prompt);
        REQUIRE(model->tokenizer);
        CHECK(model->tokenizer->encode(rc.prompt) == rc.prompt_ids);
        auto cache = KvCache::create(cpu_device().buffer_type(),
                                     KvLayout{model->config.n_layer, model->config.n_head_kv, model->config.head_dim},
                                     model->config.n_ctx_train);
        REQUIRE(cache.ok());
        std::vector<int32_t> seq = rc.prompt_ids;
        seq.insert(seq.end(), rc.greedy_ids.begin(), rc.greedy_ids.end());
        // Feed the whole sequence; the reference processes it one token at a time.
        auto logits = forward_reference(*model, **cache, seq);
        REQUIRE(logits.ok());
        for (size_t i = 0; i < rc.logits.size(); ++i) {
          INFO("position " << i);
          CHECK(max_abs_diff(std::span(*logits).subspan(i * size_t(vocab), size_t(vocab)), rc.logits[i]) < kLogitTol);
        }
        // Greedy: the argmax after each prompt/generated token is the next generated token.
        for (size_t g = 0; g < rc.greedy_ids.size(); ++g) {
          const size_t at = rc.prompt_ids.size() - 1 + g;
          INFO("greedy step " << g);
          CHECK(argmax(std::span(*logits).subspan(at * size_t(vocab), size_t(vocab))) == rc.greedy_ids[g]);
        }
      }
    }
  }
}

TEST_CASE("runner matches llama2.c run.c, batched and token by token", "[model][runner]") {
  for (const ModelUnderTest& mut : kModels) {
    for (int threads : {1, 2}) {
      DYNAMIC_SECTION(mut.name << ", " << threads << " threads") {
        auto model = load(mut.model, mut.tokenizer);
        const size_t vocab = size_t(model->config.n_vocab);
        auto backend = cpu_device().create_backend();
        REQUIRE(backend.ok());
        (*backend)->set_n_threads(threads);
        auto runner = ModelRunner::create(*model, **backend, RunnerOptions{.n_batch = 16});
        REQUIRE(runner.ok());

        for (const RefCase& rc : load_reference(mut.reference)) {
          INFO("prompt: " << rc.prompt);
          const size_t n_checked = rc.logits.size();  // prompt + 4 positions
          std::vector<int32_t> seq = rc.prompt_ids;
          seq.insert(seq.end(), rc.greedy_ids.begin(), rc.greedy_ids.end());

          // (a) Prefill prompt + 4 generated tokens in one call (all logits), then greedy decode.
          auto cache = (*runner)->new_cache();
          REQUIRE(cache.ok());
          std::vector<float> all(n_checked * vocab);
          REQUIRE((*runner)->forward(**cache, std::span(seq).first(n_checked), all, true).ok());
          for (size_t i = 0; i < n_checked; ++i) {
            INFO("batched position " << i);
            CHECK(max_abs_diff(std::span(all).subspan(i * vocab, vocab), rc.logits[i]) < kLogitTol);
          }
          std::vector<float> logits(vocab);
          std::copy(all.end() - std::ptrdiff_t(vocab), all.end(), logits.begin());
          for (size_t i = n_checked; i <= seq.size(); ++i) {
            const size_t g = i - rc.prompt_ids.size();
            INFO("decode step " << g);
            REQUIRE(argmax(logits) == rc.greedy_ids[g]);
            if (i == seq.size() || g + 1 == rc.greedy_ids.size()) break;
            REQUIRE((*runner)->forward(**cache, std::span(seq).subspan(i, 1), logits).ok());
          }

          // (b) Token by token from the start.
          auto cache2 = (*runner)->new_cache();
          REQUIRE(cache2.ok());
          for (size_t i = 0; i < seq.size(); ++i) {
            REQUIRE((*runner)->forward(**cache2, std::span(seq).subspan(i, 1), logits).ok());
            if (i < n_checked) {
              INFO("token-by-token position " << i);
              CHECK(max_abs_diff(logits, rc.logits[i]) < kLogitTol);
            }
            if (i + 1 >= rc.prompt_ids.size() && i + 1 < seq.size()) {
              INFO("token-by-token greedy at " << i);
              CHECK(argmax(logits) == seq[i + 1]);
            }
          }
        }
      }
    }
  }
}

TEST_CASE("llama-2-tiny-random (f16 weights) runs and matches the reference forward", "[model][f16]") {
  auto model = load("llama-2-tiny-random/llama-2-tiny-random.gguf");
  CHECK(model->weights.layers[0].wq.dtype == DType::kF16);
  const std::vector<int32_t> ids{1, 15043, 3186};  // BOS "Hello world"
  REQUIRE(model->tokenizer);
  CHECK(model->tokenizer->encode("Hello world") == ids);

  auto backend = cpu_device().create_backend();
  REQUIRE(backend.ok());
  auto runner = ModelRunner::create(*model, **backend);
  REQUIRE(runner.ok());
  const size_t vocab = size_t(model->config.n_vocab);
  auto cache = (*runner)->new_cache(64);
  REQUIRE(cache.ok());
  std::vector<float> logits(ids.size() * vocab);
  REQUIRE((*runner)->forward(**cache, ids, logits, true).ok());
  const std::span<const float> last = std::span(logits).subspan(2 * vocab, vocab);

  // Values from the models README (an independent Python forward pass).
  const float expect_head[] = {-0.0752f, 0.0533f, 0.0199f, -0.0171f, -0.0583f, -0.0423f};
  for (size_t i = 0; i < 6; ++i) CHECK(last[i] == Approx(expect_head[i]).margin(1e-4));
  CHECK(argmax(last) == 19356);
  CHECK(last[19356] == Approx(0.2504f).margin(1e-4));
  CHECK(last[25431] == Approx(0.2379f).margin(1e-4));

  // The reference pass on the same tokens agrees with the runner everywhere.
  auto ref_cache = (*runner)->new_cache(64);
  REQUIRE(ref_cache.ok());
  auto ref = forward_reference(*model, **ref_cache, ids);
  REQUIRE(ref.ok());
  CHECK(max_abs_diff(*ref, logits) < 1e-5f);
}

TEST_CASE("kv cache after a batched prefill equals token-by-token decode", "[model][kv]") {
  for (const char* path : {"llama-2-tiny-random/llama-2-tiny-random.gguf", "stories260K/stories260K.gguf"}) {
    DYNAMIC_SECTION(path) {
      auto model = load(path);
      auto backend = cpu_device().create_backend();
      REQUIRE(backend.ok());
      auto runner = ModelRunner::create(*model, **backend, RunnerOptions{.n_batch = 8});
      REQUIRE(runner.ok());
      const std::vector<int32_t> ids = model->tokenizer->encode("Once upon a time, there was a little dog named Max.");
      REQUIRE(ids.size() > 8);  // crosses a ubatch boundary
      const size_t vocab = size_t(model->config.n_vocab);

      auto batched = (*runner)->new_cache(128);
      auto stepped = (*runner)->new_cache(128);
      auto reference = (*runner)->new_cache(128);
      REQUIRE((batched.ok() && stepped.ok() && reference.ok()));
      std::vector<float> logits(vocab);
      REQUIRE((*runner)->forward(**batched, ids, logits).ok());
      for (int32_t id : ids) REQUIRE((*runner)->forward(**stepped, std::span(&id, 1), logits).ok());
      REQUIRE(forward_reference(*model, **reference, ids).ok());

      CHECK((*batched)->n_tokens() == int32_t(ids.size()));
      CHECK((*batched)->tokens().size() == ids.size());
      CHECK(std::equal(ids.begin(), ids.end(), (*stepped)->tokens().begin()));
      for (int32_t l = 0; l < model->config.n_layer; ++l) {
        INFO("layer " << l);
        for (auto which : {0, 1}) {
          auto view = [&](const KvCache& c) {
            const Tensor t = which == 0 ? c.k_used(l) : c.v_used(l);
            return std::span<const float>(t.as<float>(), size_t(t.numel()));
          };
          // Equal up to f32 reassociation: the prefill and decode paths sum in other orders, and
          // by layer 4 of stories260K (|K| up to 26, where an ulp is 2e-6) they differ by ~1e-5.
          CHECK(max_abs_diff(view(**batched), view(**stepped)) < 3e-5f);
          CHECK(max_abs_diff(view(**batched), view(**reference)) < 1e-4f);
        }
      }
    }
  }
}

// A prefill that returns only the last token's logits carries only that row through the last layer
// (and no row of an inner ubatch): its logits and cache must equal the full computation's.
TEST_CASE("last-token prefill (pruned last layer) matches all-logits prefill and the reference", "[model][prune]") {
  for (const char* path : {"llama-2-tiny-random/llama-2-tiny-random.gguf", "stories260K/stories260K.gguf"}) {
    for (int32_t n_batch : {5, 512}) {
      for (int threads : {1, 2}) {
        DYNAMIC_SECTION(path << ", n_batch " << n_batch << ", " << threads << " threads") {
          auto model = load(path);
          auto backend = cpu_device().create_backend();
          REQUIRE(backend.ok());
          (*backend)->set_n_threads(threads);
          auto runner = ModelRunner::create(*model, **backend, RunnerOptions{.n_batch = n_batch});
          REQUIRE(runner.ok());
          const std::vector<int32_t> ids =
              model->tokenizer->encode("Once upon a time, there was a little dog named Max.");
          REQUIRE(ids.size() > 8);
          const size_t vocab = size_t(model->config.n_vocab);
          auto pruned = (*runner)->new_cache(128), full = (*runner)->new_cache(128), ref = (*runner)->new_cache(128);
          REQUIRE((pruned.ok() && full.ok() && ref.ok()));
          std::vector<float> last(vocab), all(ids.size() * vocab);
          REQUIRE((*runner)->forward(**pruned, ids, last).ok());
          REQUIRE((*runner)->forward(**full, ids, all, true).ok());
          auto ref_logits = forward_reference(*model, **ref, ids);
          REQUIRE(ref_logits.ok());
          const auto tail = [&](std::span<const float> l) { return l.subspan(l.size() - vocab, vocab); };
          CHECK(max_abs_diff(last, tail(all)) < 1e-5f);
          CHECK(max_abs_diff(last, tail(*ref_logits)) < 1e-4f);
          for (int32_t l = 0; l < model->config.n_layer; ++l) {
            INFO("layer " << l);
            const auto k = [&](const KvCache& c) {
              return std::span<const float>(c.k_used(l).as<float>(), size_t(c.k_used(l).numel()));
            };
            const auto v = [&](const KvCache& c) {
              return std::span<const float>(c.v_used(l).as<float>(), size_t(c.v_used(l).numel()));
            };
            CHECK(max_abs_diff(k(**pruned), k(**full)) < 1e-6f);
            CHECK(max_abs_diff(v(**pruned), v(**full)) < 1e-6f);
          }
        }
      }
    }
  }
}

TEST_CASE("runner rejects bad input and leaves the cache unchanged", "[model][bad-input]") {
  auto model = load("stories260K/stories260K.gguf");
  auto backend = cpu_device().create_backend();
  REQUIRE(backend.ok());
  auto runner = ModelRunner::create(*model, **backend, RunnerOptions{.n_batch = 4});
  REQUIRE(runner.ok());
  auto cache = (*runner)->new_cache(16);
  REQUIRE(cache.ok());
  std::vector<float> logits(size_t(model->config.n_vocab));
  const std::vector<int32_t> ctx{1, 403, 407};
  REQUIRE((*runner)->forward(**cache, ctx, logits).ok());

  SECTION("prompt longer than the context") {
    std::vector<int32_t> many(20, 300);
    const Status s = (*runner)->forward(**cache, many, logits);
    CHECK(s.code() == StatusCode::kResourceExhausted);
    CHECK_THAT(s.message(), Catch::Contains("context"));
  }
  SECTION("token id out of range") {
    const std::vector<int32_t> bad{5, 512};
    CHECK((*runner)->forward(**cache, bad, logits).code() == StatusCode::kInvalidArgument);
    const std::vector<int32_t> neg{-1};
    CHECK((*runner)->forward(**cache, neg, logits).code() == StatusCode::kInvalidArgument);
    CHECK(forward_reference(*model, **cache, neg).status().code() == StatusCode::kInvalidArgument);
  }
  SECTION("wrong logits size") {
    std::vector<float> small(10);
    CHECK((*runner)->forward(**cache, ctx, small).code() == StatusCode::kInvalidArgument);
  }
  SECTION("cache of another model") {
    auto tiny = load("llama-2-tiny-random/llama-2-tiny-random.gguf");
    auto tiny_runner = ModelRunner::create(*tiny, **backend);
    REQUIRE(tiny_runner.ok());
    auto other = (*tiny_runner)->new_cache(16);
    REQUIRE(other.ok());
    CHECK((*runner)->forward(**other, ctx, logits).code() == StatusCode::kInvalidArgument);
  }
  CHECK((*cache)->n_tokens() == 3);
  CHECK(std::equal(ctx.begin(), ctx.end(), (*cache)->tokens().begin()));
}

TEST_CASE("llama2.c loader rejects malformed checkpoints", "[model][bad-input]") {
  const std::string good = test::read_file(test::model_path("stories260K/stories260K.bin"));
  auto write = [](const std::string& name, const std::string& bytes) {
    const std::string p = test::temp_dir() + "/" + name;
    std::ofstream(p, std::ios::binary) << bytes;
    return p;
  };
  SECTION("truncated") {
    for (size_t cut : {size_t(0), size_t(10), size_t(28), size_t(1000), good.size() - 4}) {
      INFO("cut " << cut);
      auto m = load_model(write("trunc.bin", good.substr(0, cut)));
      REQUIRE_FALSE(m.ok());
      CHECK(m.status().code() == StatusCode::kInvalidArgument);
    }
  }
  SECTION("implausible header") {
    std::string bad = good;
    const int32_t huge = 1 << 30;
    std::memcpy(bad.data(), &huge, 4);
    auto m = load_model(write("header.bin", bad));
    REQUIRE_FALSE(m.ok());
    CHECK_THAT(m.status().message(), Catch::Contains("implausible header"));
  }
  SECTION("missing file") {
    auto m = load_model(test::temp_dir() + "/nope.bin");
    REQUIRE_FALSE(m.ok());
    CHECK(m.status().code() == StatusCode::kNotFound);
  }
}

TEST_CASE("gguf loader names missing and unsupported tensors", "[model][bad-input]") {
  auto src = GgufFile::open(test::model_path("stories260K/stories260K.gguf"));
  REQUIRE(src.ok());
  // Rewrite the model without blk.3.ffn_up.weight.
  GgufWriter w;
  for (const auto& [key, v] : (*src)->metadata()) {
    if (v.type == GgufType::kString) w.set_string(key, v.str);
    else if (v.type == GgufType::kU32) w.set_u32(key, uint32_t(v.i));
    else if (v.type == GgufType::kF32) w.set_f32(key, float(v.f));
    else if (v.type == GgufType::kArray && v.array_type == GgufType::kString) w.set_string_array(key, v.arr_str);
    else if (v.type == GgufType::kArray && v.array_type == GgufType::kF32)
      w.set_f32_array(key, std::vector<float>(v.arr_f.begin(), v.arr_f.end()));
    else if (v.type == GgufType::kArray) w.set_i32_array(key, std::vector<int32_t>(v.arr_i.begin(), v.arr_i.end()));
  }
  for (const GgufTensor& t : (*src)->tensors()) {
    if (t.name == "blk.3.ffn_up.weight") continue;
    REQUIRE(w.add_tensor(t.name, t.dtype, t.ne, std::string(static_cast<const char*>(t.data), t.nbytes)).ok());
  }
  const std::string path = test::temp_dir() + "/missing_tensor.gguf";
  REQUIRE(w.write(path).ok());
  auto m = load_model(path);
  REQUIRE_FALSE(m.ok());
  CHECK(m.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(m.status().message(), Catch::Contains("blk.3.ffn_up.weight"));
}
