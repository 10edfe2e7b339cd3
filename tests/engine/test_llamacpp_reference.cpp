// A real quantized model against llama.cpp: SmolLM2-135M-Instruct Q4_1 (../shared/models) and
// ../shared/reference/smollm2-135m-instruct.llamacpp-reference.json, made by llama.cpp itself
// (llama-cpp-python 0.3.36) from the same file; its README explains every field.
//   * tokenization: the 50 strings (special tokens parsed, no BOS) and every case's prompt_ids, exactly;
//   * teacher-forced logits: the runner over prompt_ids + greedy_ids in one batch (the prefill path,
//     f32 activations) and token by token (the decode path, 8-bit activations), compared with
//     llama.cpp's top-10 at every position: argmax agreement >= 97% and mean |delta logit| over the
//     top-10 <= 0.25, the bars the README calibrates with llama.cpp against itself (99.1% / 0.07 on the
//     same file; 98.0% / 0.17 on its F16 dequantization);
//   * the chat template: the model's Jinja source renders as llama.cpp rendered the ChatML cases.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "engine/chat_template.h"
#include "engine/forward.h"
#include "engine/model.h"
#include "kernels/registry.h"
#include "support/test_support.h"

using namespace kvb;

namespace {

constexpr const char* kModel = "smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
constexpr const char* kReference = "smollm2-135m-instruct.llamacpp-reference.json";

struct Fixture {
  std::unique_ptr<Model> model;
  nlohmann::json ref;
};

// Loaded once: the model is 90 MB.
Fixture& fixture() {
  static Fixture f = [] {
    Fixture x;
    auto m = load_model(test::model_path(kModel));
    INFO(m.status().to_string());
    REQUIRE(m.ok());
    x.model = std::move(m).value();
    x.ref = nlohmann::json::parse(test::read_file(test::reference_dir() + "/" + kReference));
    return x;
  }();
  return f;
}

std::vector<int32_t> encode(const Tokenizer& tok, const std::string& text) {
  return tok.encode(text, EncodeOptions{.add_bos = false, .parse_special = true});
}

struct Agreement {
  int positions = 0, argmax_equal = 0;
  double sum_abs_delta = 0;  // over llama.cpp's top-10 of every position
  int n_delta = 0;
  void add(const float* logits, const nlohmann::json& top) {
    const auto& ids = top["ids"];
    const auto& vals = top["logits"];
    const int32_t n_vocab = 49152;
    const int32_t ours = int32_t(std::max_element(logits, logits + n_vocab) - logits);
    ++positions;
    argmax_equal += ours == ids[0].get<int32_t>();
    for (size_t i = 0; i < ids.size(); ++i) {
      sum_abs_delta += std::fabs(double(logits[ids[i].get<int32_t>()]) - vals[i].get<double>());
      ++n_delta;
    }
  }
  double rate() const { return double(argmax_equal) / positions; }
  double mean_delta() const { return sum_abs_delta / n_delta; }
};

}  // namespace

TEST_CASE("SmolLM2 tokenization equals llama.cpp's", "[llamacpp][tokenizer]") {
  Fixture& f = fixture();
  REQUIRE(f.model->tokenizer);
  const Tokenizer& tok = *f.model->tokenizer;
  REQUIRE(f.ref["tokenize"].size() == 50);
  for (const auto& v : f.ref["tokenize"]) {
    const std::string text = v["text"];
    CAPTURE(text);
    CHECK(encode(tok, text) == v["ids"].get<std::vector<int32_t>>());
  }
  for (const auto& c : f.ref["cases"]) {
    const std::string prompt = c["prompt"];
    CAPTURE(prompt);
    CHECK(encode(tok, prompt) == c["prompt_ids"].get<std::vector<int32_t>>());
  }
}

TEST_CASE("SmolLM2 Q4_1 logits agree with llama.cpp when teacher-forced", "[llamacpp][model]") {
  Fixture& f = fixture();
  auto backend = cpu_device().create_backend();
  REQUIRE(backend.ok());
  auto runner = ModelRunner::create(*f.model, **backend);
  REQUIRE(runner.ok());
  const int32_t n_vocab = f.model->config.n_vocab;
  REQUIRE(n_vocab == 49152);
  Agreement batched, stepwise;
  for (const auto& c : f.ref["cases"]) {
    std::vector<int32_t> ids = c["prompt_ids"].get<std::vector<int32_t>>();
    for (int32_t t : c["greedy_ids"]) ids.push_back(t);
    const auto& top = c["topk_from_pos0"];
    REQUIRE(top.size() >= ids.size() - 1);
    const size_t n = std::min(ids.size(), top.size());
    // One batch: every position's logits (the prefill path).
    auto cache = (*runner)->new_cache(int32_t(ids.size()));
    REQUIRE(cache.ok());
    std::vector<float> logits(ids.size() * size_t(n_vocab));
    REQUIRE((*runner)->forward(**cache, ids, logits, /*all_logits=*/true).ok());
    for (size_t i = 0; i < n; ++i) batched.add(logits.data() + i * size_t(n_vocab), top[i]);
    // One token at a time (the decode path).
    auto cache2 = (*runner)->new_cache(int32_t(ids.size()));
    REQUIRE(cache2.ok());
    std::vector<float> step(static_cast<size_t>(n_vocab));
    for (size_t i = 0; i < n; ++i) {
      REQUIRE((*runner)->forward(**cache2, std::span<const int32_t>(&ids[i], 1), step).ok());
      stepwise.add(step.data(), top[i]);
    }
  }
  INFO("batched: " << batched.positions << " positions, argmax " << batched.rate() << ", mean |delta| "
                   << batched.mean_delta());
  INFO("token by token: argmax " << stepwise.rate() << ", mean |delta| " << stepwise.mean_delta());
  CHECK(batched.rate() >= 0.97);
  CHECK(batched.mean_delta() <= 0.25);
  CHECK(stepwise.rate() >= 0.97);
  CHECK(stepwise.mean_delta() <= 0.25);
  // Printed for docs/BENCHMARKS.md and the note.
  WARN("SmolLM2 Q4_1 vs llama.cpp: batched argmax " << batched.rate() << " mean|d| " << batched.mean_delta()
                                                     << "; token by token argmax " << stepwise.rate() << " mean|d| "
                                                     << stepwise.mean_delta() << " over " << batched.positions
                                                     << " positions");
}

TEST_CASE("SmolLM2's chat template renders the ChatML cases with the default system message", "[llamacpp][chat]") {
  Fixture& f = fixture();
  auto t = ChatTemplate::from_source(f.model->tokenizer->vocab().chat_template);
  REQUIRE(t.ok());
  CHECK(t->format() == ChatFormat::kChatML);
  CHECK(t->default_system() == "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
  constexpr std::string_view kUser = "<|im_start|>user\n";
  int chat_cases = 0;
  for (const auto& c : f.ref["cases"]) {
    const std::string prompt = c["prompt"];
    const size_t u = prompt.find(kUser);
    if (u == std::string::npos) continue;
    ++chat_cases;
    // The case's user message, as llama.cpp's reference rendered it after the default system turn.
    const std::string user = prompt.substr(u + kUser.size(), prompt.find("<|im_end|>", u) - u - kUser.size());
    const std::vector<ChatMessage> messages = {{"user", user}};
    auto rendered = t->render(messages);
    REQUIRE(rendered.ok());
    CHECK(*rendered == prompt);
    // An explicit system message replaces the default.
    const std::vector<ChatMessage> with_system = {{"system", "Be brief."}, {"user", user}};
    CHECK(t->render(with_system)->find("You are a helpful AI assistant") == std::string::npos);
  }
  CHECK(chat_cases == 3);
}
