// GGUF export and synthetic models: round trips through our loader, byte equality with the official
// stories260K.gguf, dtype conversion bounds, determinism, and preset headers.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>

#include "engine/gguf_export.h"
#include "engine/synth.h"
#include "support/test_support.h"
#include "support/model_checks.h"

using namespace kvb;
using kvb::test::check_same_config;

namespace {

std::unique_ptr<Model> load_stories260k_bin() {
  auto m = load_model(test::model_path("stories260K/stories260K.bin"),
                      LoadOptions{test::model_path("stories260K/tok512.bin")});
  INFO(m.status().to_string());
  REQUIRE(m.ok());
  return std::move(m).value();
}

std::unique_ptr<Model> load_ok(const std::string& path) {
  auto m = load_model(path);
  INFO(path << ": " << m.status().to_string());
  REQUIRE(m.ok());
  return std::move(m).value();
}

void check_same_vocab(const Vocab& a, const Vocab& b) {
  CHECK(a.pieces == b.pieces);
  CHECK(a.scores == b.scores);
  CHECK(a.types == b.types);
  CHECK(a.bos == b.bos);
  CHECK(a.eos == b.eos);
  CHECK(a.unk == b.unk);
  CHECK(a.add_bos == b.add_bos);
  CHECK(a.add_eos == b.add_eos);
  CHECK(a.add_space_prefix == b.add_space_prefix);
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.dtype == b.dtype && a.numel() == b.numel() && a.nbytes() == b.nbytes() &&
         std::memcmp(a.data, b.data, a.nbytes()) == 0;
}

std::vector<float> dequant(const Tensor& t) {
  std::vector<float> out(static_cast<size_t>(t.numel()));
  to_f32(t.dtype, t.data, out.data(), t.numel());
  return out;
}

// Largest allowed |converted - x| for one element, given its Q8_0 block maximum.
double tolerance(DType t, float x, float block_amax) {
  switch (t) {
    case DType::kF16: return std::max(std::fabs(double(x)) * std::ldexp(1.0, -11), std::ldexp(1.0, -25));
    case DType::kBF16: return std::fabs(double(x)) * std::ldexp(1.0, -8);
    // Half a step of d = amax/127, plus the f16 rounding of d itself (2^-11 relative, times |q| <= 127).
    case DType::kQ8_0: return double(block_amax) / 127.0 * (0.5 + 127.0 * std::ldexp(1.0, -11)) + 1e-12;
    default: return 0.0;
  }
}

std::string write_or_fail(const Model& m, const std::string& name, std::optional<DType> dtype = {}) {
  const std::string path = test::temp_dir() + "/" + name;
  const Status s = write_model_gguf(m, path, dtype);
  INFO(s.to_string());
  REQUIRE(s.ok());
  return path;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Export of a real model
// ---------------------------------------------------------------------------------------------

TEST_CASE("export of stories260K.bin round-trips through the GGUF loader", "[export][model]") {
  const auto src = load_stories260k_bin();
  const std::string path = write_or_fail(*src, "stories260K-f32.gguf");
  const auto back = load_ok(path);

  CHECK(back->format == ModelFormat::kGguf);
  check_same_config(back->config, src->config);
  REQUIRE(back->tokenizer);
  check_same_vocab(back->tokenizer->vocab(), src->tokenizer->vocab());
  for (const LlamaTensorSlot& s : llama_tensor_slots(src->config)) {
    INFO(s.name);
    CHECK(same_bytes(llama_weight(back->weights, s), llama_weight(src->weights, s)));
  }
  CHECK(back->weights.output.data == back->weights.tok_embd.data);  // tied: no output.weight

  auto f = GgufFile::open(path);
  REQUIRE(f.ok());
  CHECK((*f)->tensors().size() == 3 - 1 + 9 * 5);
  CHECK((*f)->find_tensor("output.weight") == nullptr);
  CHECK(*(*f)->get_string("general.name").value() == "stories260K");
  CHECK(*(*f)->get_int("general.file_type").value() == 0);
  CHECK(*(*f)->get_int("llama.context_length").value() == 512);
  CHECK((*f)->find("llama.attention.key_length") == nullptr);  // head_dim == n_embd / n_head
  CHECK((*f)->find("tokenizer.ggml.padding_token_id") == nullptr);

  // The same tokens come out of both tokenizers (README §1 test vector).
  CHECK(back->tokenizer->encode("Once upon a time", {false, false}) == std::vector<int32_t>{403, 407, 261, 378});
}

TEST_CASE("export of stories260K.bin equals the official stories260K.gguf tensor for tensor",
          "[export][model]") {
  const auto src = load_stories260k_bin();
  const std::string path = write_or_fail(*src, "stories260K-official-cmp.gguf");
  auto ours = GgufFile::open(path);
  auto official = GgufFile::open(test::model_path("stories260K/stories260K.gguf"));
  REQUIRE(ours.ok());
  REQUIRE(official.ok());

  size_t compared = 0;
  for (const GgufTensor& t : (*official)->tensors()) {
    INFO(t.name);
    // The official file keeps a separate output.weight whose bytes equal token_embd (README §1).
    const GgufTensor* mine = (*ours)->find_tensor(t.name == "output.weight" ? "token_embd.weight" : t.name);
    REQUIRE(mine != nullptr);
    CHECK(mine->ne == t.ne);
    CHECK(mine->dtype == t.dtype);
    REQUIRE(mine->nbytes == t.nbytes);
    CHECK(std::memcmp(mine->data, t.data, t.nbytes) == 0);
    ++compared;
  }
  CHECK(compared == 48);

  // Same vocabulary and hyper-parameters (the official context_length is 2048, llama2.c says 512).
  for (const char* key : {"tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"}) {
    INFO(key);
    const GgufValue* a = (*ours)->find(key);
    const GgufValue* b = (*official)->find(key);
    REQUIRE(a != nullptr);
    REQUIRE(b != nullptr);
    CHECK(a->arr_str == b->arr_str);
    CHECK(a->arr_f == b->arr_f);
    CHECK(a->arr_i == b->arr_i);
  }
  for (const char* key : {"llama.embedding_length", "llama.feed_forward_length", "llama.attention.head_count",
                          "llama.attention.head_count_kv", "llama.block_count", "llama.rope.dimension_count",
                          "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.unknown_token_id"}) {
    INFO(key);
    CHECK((*ours)->get_int(key).value() == (*official)->get_int(key).value());
  }
  CHECK(*(*ours)->get_float("llama.attention.layer_norm_rms_epsilon").value() ==
        *(*official)->get_float("llama.attention.layer_norm_rms_epsilon").value());
  CHECK(*(*ours)->get_string("tokenizer.ggml.model").value() == "llama");
}

TEST_CASE("f16, bf16 and q8_0 exports dequantize within the type's rounding", "[export][model]") {
  const DType dtype = GENERATE(DType::kF16, DType::kBF16, DType::kQ8_0);
  INFO("dtype " << dtype_name(dtype));
  const auto src = load_stories260k_bin();
  const std::string path = write_or_fail(*src, fmt::format("stories260K-{}.gguf", dtype_name(dtype)), dtype);
  const auto back = load_ok(path);
  check_same_config(back->config, src->config);

  auto f = GgufFile::open(path);
  REQUIRE(f.ok());
  CHECK(uint32_t(*(*f)->get_int("general.file_type").value()) == gguf_file_type(dtype));

  for (const LlamaTensorSlot& s : llama_tensor_slots(src->config)) {
    INFO(s.name);
    const Tensor& x = llama_weight(src->weights, s);
    const Tensor& y = llama_weight(back->weights, s);
    if (s.is_norm()) {
      CHECK(same_bytes(x, y));  // norms always stay f32
      continue;
    }
    // ffn_down has n_in = 172, not a multiple of 32: q8_0 falls back to f16 there.
    const DType want = (dtype == DType::kQ8_0 && s.cols % 32 != 0) ? DType::kF16 : dtype;
    REQUIRE(y.dtype == want);
    const std::vector<float> xf = dequant(x), yf = dequant(y);
    size_t bad = 0;
    for (size_t i = 0; i < xf.size(); ++i) {
      float amax = 0.0f;
      if (want == DType::kQ8_0) {
        const size_t b0 = i / 32 * 32;
        for (size_t j = b0; j < b0 + 32; ++j) amax = std::max(amax, std::fabs(xf[j]));
      }
      if (std::fabs(double(xf[i]) - double(yf[i])) > tolerance(want, xf[i], amax)) ++bad;
    }
    CHECK(bad == 0);
  }
}

TEST_CASE("export rejects dtypes GGUF cannot hold", "[export]") {
  const auto m = synth_model("stories260K", DType::kF32, 1);
  REQUIRE(m.ok());
  const Status s = write_model_gguf(**m, test::temp_dir() + "/i8.gguf", DType::kI8);
  CHECK(s.code() == StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------------------------------------
// Synthetic models
// ---------------------------------------------------------------------------------------------

TEST_CASE("synth shapes: presets, overrides and errors", "[export][synth]") {
  const std::vector<std::string> names = synth_shape_names();
  for (const char* want : {"stories260K", "stories15M", "stories110M", "qwen2.5-0.5b", "qwen3-0.6b", "llama3.2-1b",
                           "llama3-8b"}) {
    CHECK(std::find(names.begin(), names.end(), want) != names.end());
  }
  for (const SynthShape& s : synth_shapes()) {
    INFO(s.name);
    CHECK(s.config.validate().ok());
  }

  auto unknown = find_synth_shape("llama-9000");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.status().code() == StatusCode::kInvalidArgument);
  CHECK_THAT(unknown.status().message(), Catch::Contains("stories110M") && Catch::Contains("llama3-8b"));
  CHECK(synth_model("nope", DType::kF32, 1).status().code() == StatusCode::kInvalidArgument);

  auto small = find_synth_shape("stories110M:n_layer=2,n_vocab=1024,n_ctx=64");
  REQUIRE(small.ok());
  CHECK(small->config.n_layer == 2);
  CHECK(small->config.n_vocab == 1024);
  CHECK(small->config.n_ctx_train == 64);
  CHECK(small->config.n_embd == 768);
  CHECK_FALSE(find_synth_shape("stories110M:n_heads=2").ok());
  auto narrow = find_synth_shape("stories110M:n_embd=128,n_head=4,n_head_kv=4,n_ff=256");
  REQUIRE(narrow.ok());
  CHECK(narrow->config.head_dim == 32);  // stays n_embd / n_head
  CHECK(narrow->config.rope.n_rot == 32);
  auto qwen = find_synth_shape("qwen3-0.6b:n_embd=64,n_head=4,n_head_kv=2,n_ff=128");
  REQUIRE(qwen.ok());
  CHECK(qwen->config.head_dim == 128);  // Qwen3's head_dim is its own
  CHECK_FALSE(find_synth_shape("qwen3-0.6b:n_head=5").ok());   // 8 kv heads do not divide 5
  CHECK_FALSE(find_synth_shape("qwen3-0.6b:n_vocab=259").ok());  // below 256 + 3 specials + 1
  CHECK(find_synth_shape("qwen3-0.6b:n_vocab=260").ok());
  CHECK_FALSE(find_synth_shape("stories110M:n_layer=0").ok());
  CHECK_FALSE(find_synth_shape("stories110M:n_layer").ok());
  CHECK_FALSE(find_synth_shape("stories110M:n_vocab=100").ok());  // below 3 + 256 + 1
  CHECK(synth_model("stories260K", DType::kI32, 1).status().code() == StatusCode::kInvalidArgument);
}

TEST_CASE("synth vocab has exactly n_vocab distinct pieces and tokenizes", "[export][synth]") {
  for (int32_t n : {260, 512, 32000, 151936}) {
    INFO("n_vocab " << n);
    const Vocab v = synth_vocab(n);
    REQUIRE(v.n_vocab() == n);
    CHECK(std::set<std::string>(v.pieces.begin(), v.pieces.end()).size() == size_t(n));
    CHECK(v.pieces[0] == "<unk>");
    CHECK(v.pieces[1] == "<s>");
    CHECK(v.pieces[2] == "</s>");
    CHECK(v.pieces[3] == "<0x00>");
    CHECK(v.pieces[258] == "<0xFF>");
    CHECK(v.types[258] == TokenType::kByte);
    for (size_t i = 260; i < size_t(n); ++i) REQUIRE(v.scores[i] < v.scores[i - 1]);
    auto tok = Tokenizer::create(v);
    INFO(tok.status().to_string());
    REQUIRE(tok.ok());
    const std::string text = "Once upon a time, Lily went to the park. Ünïcode too!";
    const auto ids = (*tok)->encode(text);
    CHECK(ids.front() == 1);
    CHECK((*tok)->decode(ids) == text);
    if (n >= 32000) CHECK(ids.size() < text.size() * 2 / 3);  // characters merge into pairs and triples
  }
}

TEST_CASE("synth is deterministic per seed and differs across seeds", "[export][synth]") {
  const DType dtype = GENERATE(DType::kF32, DType::kQ8_0);
  INFO("dtype " << dtype_name(dtype));
  auto a = synth_model("stories260K", dtype, 42);
  auto b = synth_model("stories260K", dtype, 42);
  auto c = synth_model("stories260K", dtype, 43);
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  REQUIRE(c.ok());
  for (const LlamaTensorSlot& s : llama_tensor_slots((*a)->config)) {
    INFO(s.name);
    const Tensor& ta = llama_weight((*a)->weights, s);
    CHECK(same_bytes(ta, llama_weight((*b)->weights, s)));
    if (s.is_norm()) {
      CHECK(dequant(ta) == std::vector<float>(size_t(s.cols), 1.0f));
    } else {
      CHECK_FALSE(same_bytes(ta, llama_weight((*c)->weights, s)));
    }
  }
  // Distinct tensors get distinct streams.
  CHECK_FALSE(same_bytes((*a)->weights.layers[0].wq, (*a)->weights.layers[1].wq));

  // Matrix statistics: uniform, std 0.02, bounded by 0.02·√3.
  const std::vector<float> e = dequant((*a)->weights.tok_embd);
  double sum = 0, sq = 0, amax = 0;
  for (float x : e) sum += x, sq += double(x) * x, amax = std::max(amax, std::fabs(double(x)));
  const double mean = sum / double(e.size()), sd = std::sqrt(sq / double(e.size()) - mean * mean);
  CHECK(std::fabs(mean) < 1e-3);
  CHECK(sd == Approx(0.02).epsilon(0.03));
  CHECK(amax <= 0.0346411);
}

TEST_CASE("streamed synth GGUF equals exporting the in-memory synth model", "[export][synth]") {
  const DType dtype = GENERATE(DType::kF32, DType::kF16, DType::kBF16, DType::kQ8_0);
  INFO("dtype " << dtype_name(dtype));
  const std::string dir = test::temp_dir();
  const std::string streamed = dir + "/synth-streamed.gguf";
  REQUIRE(write_synth_gguf("stories260K:n_layer=2", dtype, 5, streamed).ok());
  auto m = synth_model("stories260K:n_layer=2", dtype, 5);
  REQUIRE(m.ok());
  const std::string exported = write_or_fail(**m, "synth-exported.gguf");
  CHECK(test::read_file(streamed) == test::read_file(exported));
}

TEST_CASE("synth GGUFs of small presets load with the preset's config", "[export][synth]") {
  const std::string name = GENERATE(std::string("stories260K"), std::string("stories15M"));
  const DType dtype = GENERATE(DType::kF32, DType::kQ8_0);
  INFO(name << " " << dtype_name(dtype));
  auto shape = find_synth_shape(name);
  REQUIRE(shape.ok());
  const std::string path = test::temp_dir() + "/synth-" + name + ".gguf";
  REQUIRE(write_synth_gguf(name, dtype, 3, path).ok());
  const auto m = load_ok(path);
  check_same_config(m->config, shape->config);
  REQUIRE(m->tokenizer);
  check_same_vocab(m->tokenizer->vocab(), synth_vocab(shape->config.n_vocab));
  const std::string text = "Once upon a time, there was a little girl.";
  CHECK(m->tokenizer->decode(m->tokenizer->encode(text)) == text);

  auto f = GgufFile::open(path);
  REQUIRE(f.ok());
  CHECK(*(*f)->get_string("general.name").value() == "synth-" + name);
  CHECK(uint32_t(*(*f)->get_int("general.file_type").value()) == gguf_file_type(dtype));
  CHECK(m->weights.layers[0].wq.dtype == dtype);
  CHECK(m->weights.tok_embd.dtype == dtype);
  CHECK(m->weights.output_norm.dtype == DType::kF32);
}

// Big presets: only the header (metadata written without tensor data), never GBs of weights.
TEST_CASE("synth big presets have the real models' shapes", "[export][synth]") {
  struct Want {
    const char* name;
    int32_t n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab;
    float theta;
    bool tied;
    double params_lo, params_hi;  // total parameters, for a sanity bound on the shapes
  };
  const Want want = GENERATE(Want{"qwen2.5-0.5b", 24, 896, 14, 2, 64, 4864, 151936, 1e6f, true, 0.49e9, 0.50e9},
                             Want{"qwen3-0.6b", 28, 1024, 16, 8, 128, 3072, 151936, 1e6f, true, 0.59e9, 0.60e9},
                             Want{"llama3.2-1b", 16, 2048, 32, 8, 64, 8192, 128256, 5e5f, true, 1.23e9, 1.24e9},
                             Want{"llama3-8b", 32, 4096, 32, 8, 128, 14336, 128256, 5e5f, false, 8.02e9, 8.04e9});
  INFO(want.name);
  auto shape = find_synth_shape(want.name);
  REQUIRE(shape.ok());
  const ModelConfig& c = shape->config;
  CHECK(c.n_layer == want.n_layer);
  CHECK(c.n_embd == want.n_embd);
  CHECK(c.n_head == want.n_head);
  CHECK(c.n_head_kv == want.n_head_kv);
  CHECK(c.head_dim == want.head_dim);
  CHECK(c.n_ff == want.n_ff);
  CHECK(c.n_vocab == want.n_vocab);
  CHECK(c.rope.theta_base == want.theta);
  CHECK(c.tied_output == want.tied);

  const std::vector<LlamaTensorSlot> slots = llama_tensor_slots(c);
  const std::string arch(arch_name(c.arch));
  const size_t per_layer = arch == "qwen2" ? 12 : arch == "qwen3" ? 11 : 9;  // + biases / + q,k norms
  const size_t rope_freqs = c.rope_freq_factors.empty() ? 0 : 1;              // llama3.2's scaling
  CHECK(slots.size() == 2 + (want.tied ? 0 : 1) + rope_freqs + per_layer * size_t(want.n_layer));
  double params = 0;
  for (const LlamaTensorSlot& s : slots) {
    if (s.weight != LlamaWeight::kRopeFreqs) params += double(s.rows) * double(s.cols);
  }
  CHECK(params >= want.params_lo);
  CHECK(params <= want.params_hi);

  GgufWriter w;
  const Vocab v = synth_shape_vocab(*shape);
  set_model_gguf_metadata(w, c, &v, want.name, DType::kQ8_0);
  const std::string path = test::temp_dir() + "/header-" + std::string(want.name) + ".gguf";
  REQUIRE(w.write(path).ok());
  auto f = GgufFile::open(path);
  REQUIRE(f.ok());
  const GgufFile& g = **f;
  const auto key = [&arch](const char* k) { return arch + "." + k; };
  CHECK(*g.get_string("general.architecture").value() == arch);
  CHECK(*g.get_int("general.file_type").value() == 7);
  CHECK(*g.get_int(key("block_count")).value() == want.n_layer);
  CHECK(*g.get_int(key("embedding_length")).value() == want.n_embd);
  CHECK(*g.get_int(key("feed_forward_length")).value() == want.n_ff);
  CHECK(*g.get_int(key("attention.head_count")).value() == want.n_head);
  CHECK(*g.get_int(key("attention.head_count_kv")).value() == want.n_head_kv);
  CHECK(*g.get_int(key("rope.dimension_count")).value() == want.head_dim);
  CHECK(*g.get_float(key("rope.freq_base")).value() == double(want.theta));
  CHECK(g.find("tokenizer.ggml.tokens")->arr_str.size() == size_t(want.n_vocab));
  CHECK(*g.get_string("tokenizer.ggml.model").value() == "gpt2");
  CHECK(*g.get_string("tokenizer.ggml.pre").value() == (arch == "llama" ? "llama-bpe" : "qwen2"));
  // key_length only when head_dim differs from n_embd / n_head (Qwen3).
  const bool odd_head = want.head_dim * want.n_head != want.n_embd;
  CHECK((g.find(key("attention.key_length")) != nullptr) == odd_head);
  if (odd_head) CHECK(*g.get_int(key("attention.value_length")).value() == want.head_dim);
}
