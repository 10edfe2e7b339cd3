// Model families (qwen2, qwen3, llama 3 with its RoPE scaling, tied and untied) through both
// loaders: small synthetic variants of the real shapes written as a Hugging Face directory and as a
// GGUF file must load with the same config and give the same logits, through the reference pass
// and the optimized runner, batched and token by token; sharded directories, HF → GGUF export, and
// malformed inputs that must each be rejected with a message naming the file and the tensor/key.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>

#include "engine/chat_template.h"
#include "engine/forward.h"
#include "engine/forward_reference.h"
#include "engine/gguf.h"
#include "engine/gguf_export.h"
#include "engine/model.h"
#include "engine/model_loaders.h"  // white box: Model::Storage holds the mapped files
#include "engine/safetensors.h"
#include "engine/synth.h"
#include "kernels/registry.h"
#include "support/test_support.h"
#include "support/model_checks.h"

using namespace kvb;
using kvb::test::check_same_config;
using kvb::test::RopePairing;
namespace fs = std::filesystem;

namespace {

using test::max_abs_diff;

constexpr float kSameModelTol = 1e-5f;  // one model in two files: only summation order differs
constexpr float kRunnerTol = 1e-4f;     // runner vs reference (test_model.cpp's bound)
constexpr float kBatchTol = 1e-5f;      // runner batched vs token by token

struct Family {
  const char* label;
  const char* spec;
  Arch arch;
};

// Small variants of the presets (2 layers, 64 wide, 1024 tokens): each family's blocks at test speed.
const Family kFamilies[] = {
    {"qwen2 (qkv bias)",
     "qwen2.5-0.5b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=16,n_ff=96,n_vocab=1024,n_ctx=512", Arch::kQwen2},
    {"qwen3 (qk norm, head_dim != n_embd/n_head)",
     "qwen3-0.6b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=32,n_ff=96,n_vocab=1024,n_ctx=512", Arch::kQwen3},
    {"llama3.2 (llama3 rope scaling, tied)",
     "llama3.2-1b:n_layer=2,n_embd=64,n_head=4,n_head_kv=2,head_dim=16,n_ff=96,n_vocab=1024,n_ctx=512", Arch::kLlama},
    {"llama3 (untied)", "llama3-8b:n_layer=2,n_embd=64,n_head=4,n_head_kv=1,head_dim=16,n_ff=96,n_vocab=1024,n_ctx=512",
     Arch::kLlama},
    {"stories260K (spm, no HF tokenizer)", "stories260K:n_layer=2", Arch::kLlama},
};

std::unique_ptr<Model> load_ok(const std::string& path) {
  auto m = load_model(path);
  INFO(path << ": " << m.status().to_string());
  REQUIRE(m.ok());
  return std::move(m).value();
}

// A fresh directory under the test's temp dir.
std::string new_dir(const std::string& name) {
  const std::string d = test::temp_dir() + "/" + name;
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string write_hf(const std::string& spec, DType dtype, const std::string& name, uint64_t shard_bytes = 0) {
  const std::string dir = new_dir(name);
  SynthHfOptions opt;
  if (shard_bytes) opt.shard_bytes = shard_bytes;
  const Status s = write_synth_hf(spec, dtype, 11, dir, opt);
  INFO(s.to_string());
  REQUIRE(s.ok());
  return dir;
}

std::string write_gguf(const std::string& spec, DType dtype, const std::string& name) {
  const std::string path = test::temp_dir() + "/" + name;
  const Status s = write_synth_gguf(spec, dtype, 11, path);
  INFO(s.to_string());
  REQUIRE(s.ok());
  return path;
}

std::vector<int32_t> test_ids(int32_t n_vocab, size_t n) {
  std::vector<int32_t> ids(n);
  for (size_t i = 0; i < n; ++i) ids[i] = int32_t((i * 7919 + 13) % size_t(n_vocab));
  return ids;
}

std::vector<float> reference_logits(const Model& m, std::span<const int32_t> ids) {
  const ModelConfig& c = m.config;
  auto cache = KvCache::create(cpu_device().buffer_type(), KvLayout{c.n_layer, c.n_head_kv, c.head_dim},
                               int32_t(ids.size()));
  REQUIRE(cache.ok());
  auto logits = forward_reference(m, **cache, ids);
  INFO(logits.status().to_string());
  REQUIRE(logits.ok());
  return std::move(logits).value();
}

// All logits from the runner on `backend`, fed in calls of `step` tokens (0: one call).
std::vector<float> runner_logits(const Model& m, Backend& backend, std::span<const int32_t> ids, int32_t n_batch,
                                 size_t step = 0) {
  auto runner = ModelRunner::create(m, backend, RunnerOptions{.n_batch = n_batch});
  INFO(runner.status().to_string());
  REQUIRE(runner.ok());
  auto cache = (*runner)->new_cache(int32_t(ids.size()));
  REQUIRE(cache.ok());
  const size_t vocab = size_t(m.config.n_vocab);
  std::vector<float> out(ids.size() * vocab);
  if (step == 0) step = ids.size();
  for (size_t i = 0; i < ids.size(); i += step) {
    const size_t n = std::min(step, ids.size() - i);
    const Status s = (*runner)->forward(**cache, ids.subspan(i, n), std::span(out).subspan(i * vocab, n * vocab), true);
    INFO(s.to_string());
    REQUIRE(s.ok());
  }
  return out;
}

std::unique_ptr<Backend> cpu_backend(int threads) {
  auto b = cpu_device().create_backend();
  REQUIRE(b.ok());
  (*b)->set_n_threads(threads);
  return std::move(b).value();
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(test::read_file(path)); }
void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

// Expects load_model(path) to fail with `code` and a message containing every needle.
void expect_load_error(const std::string& path, StatusCode code, std::initializer_list<const char*> needles) {
  auto m = load_model(path);
  REQUIRE_FALSE(m.ok());
  INFO(m.status().to_string());
  CHECK(m.status().code() == code);
  for (const char* n : needles) CHECK_THAT(m.status().message(), Catch::Contains(n));
}

// Copies a GGUF's metadata (every type synth writes) and tensors, minus `drop`, with `arch` when set.
std::string rewrite_gguf(const std::string& src, const std::string& name, const std::string& drop,
                         const std::string& arch = "") {
  auto f = GgufFile::open(src);
  REQUIRE(f.ok());
  GgufWriter w;
  const std::string old_prefix = *(*f)->get_string("general.architecture").value() + ".";
  for (const auto& [stored_key, v] : (*f)->metadata()) {
    std::string key = stored_key;
    if (!arch.empty() && key.rfind(old_prefix, 0) == 0) key = arch + "." + key.substr(old_prefix.size());
    if (key == "general.architecture" && !arch.empty()) {
      w.set_string(key, arch);
    } else if (v.type == GgufType::kString) {
      w.set_string(key, v.str);
    } else if (v.type == GgufType::kU32) {
      w.set_u32(key, uint32_t(v.i));
    } else if (v.type == GgufType::kF32) {
      w.set_f32(key, float(v.f));
    } else if (v.type == GgufType::kBool) {
      w.set_bool(key, v.i != 0);
    } else if (v.type == GgufType::kArray && v.array_type == GgufType::kString) {
      w.set_string_array(key, v.arr_str);
    } else if (v.type == GgufType::kArray && v.array_type == GgufType::kF32) {
      w.set_f32_array(key, std::vector<float>(v.arr_f.begin(), v.arr_f.end()));
    } else if (v.type == GgufType::kArray) {
      w.set_i32_array(key, std::vector<int32_t>(v.arr_i.begin(), v.arr_i.end()));
    }
  }
  for (const GgufTensor& t : (*f)->tensors()) {
    if (t.name == drop) continue;
    REQUIRE(w.add_tensor(t.name, t.dtype, t.ne, std::string(static_cast<const char*>(t.data), t.nbytes)).ok());
  }
  const std::string path = test::temp_dir() + "/" + name;
  REQUIRE(w.write(path).ok());
  return path;
}

}  // namespace

// ---------------------------------------------------------------------------------------------

TEST_CASE("each family loads from Hugging Face and GGUF files with one config and the same logits",
          "[model][families]") {
  for (const Family& fam : kFamilies) {
    DYNAMIC_SECTION(fam.label) {
      auto shape = find_synth_shape(fam.spec);
      REQUIRE(shape.ok());
      const auto hf = load_ok(write_hf(fam.spec, DType::kF32, "hf"));
      const auto gguf = load_ok(write_gguf(fam.spec, DType::kF32, "m.gguf"));
      CHECK(hf->format == ModelFormat::kHf);
      CHECK(hf->config.arch == fam.arch);
      check_same_config(hf->config, gguf->config, RopePairing::kIgnore);
      check_same_config(gguf->config, shape->config, RopePairing::kIgnore);
      CHECK(gguf->config.rope.type == shape->config.rope.type);
      // Hugging Face rotates halves; llama GGUFs adjacent pairs of permuted rows; Qwen GGUFs halves.
      CHECK(hf->config.rope.type == RopeType::kNeox);
      CHECK(gguf->config.rope.type == (fam.arch == Arch::kLlama ? RopeType::kNormal : RopeType::kNeox));
      CHECK(hf->weights.layers[0].wq.dtype == DType::kF32);
      CHECK(hf->weight_bytes() == gguf->weight_bytes());
      CHECK(describe(*hf) == describe(*gguf));
      if (fam.arch == Arch::kQwen2) {
        CHECK(hf->weights.layers[1].bias.k.numel() == hf->config.n_embd_kv());
        CHECK(hf->weights.layers[1].qk_norm.q.data == nullptr);
      }
      if (fam.arch == Arch::kQwen3) {
        CHECK(hf->weights.layers[1].qk_norm.k.numel() == hf->config.head_dim);
        CHECK(hf->weights.layers[1].bias.q.data == nullptr);
      }

      const std::vector<int32_t> ids = test_ids(hf->config.n_vocab, 13);
      const std::vector<float> ref_hf = reference_logits(*hf, ids);
      const std::vector<float> ref_gguf = reference_logits(*gguf, ids);
      CHECK(max_abs_diff(ref_hf, ref_gguf) <= kSameModelTol);
      // The in-memory synthetic model is the GGUF's: same bytes, same logits.
      auto mem = synth_model(fam.spec, DType::kF32, 11);
      REQUIRE(mem.ok());
      CHECK(max_abs_diff(reference_logits(**mem, ids), ref_gguf) == 0.0f);

      for (int threads : {1, 2}) {
        INFO(threads << " threads");
        auto backend = cpu_backend(threads);
        for (const Model* m : {hf.get(), gguf.get()}) {
          INFO((m == hf.get() ? "hf" : "gguf"));
          const std::vector<float> batched = runner_logits(*m, *backend, ids, 512);
          CHECK(max_abs_diff(batched, ref_hf) <= kRunnerTol);
          CHECK(max_abs_diff(runner_logits(*m, *backend, ids, 4), batched) <= kBatchTol);     // ubatches of 4
          CHECK(max_abs_diff(runner_logits(*m, *backend, ids, 512, 1), batched) <= kBatchTol);  // one by one
        }
      }
    }
  }
}

TEST_CASE("16-bit Hugging Face weights are used in place and match the GGUF of the same dtype", "[model][families]") {
  const DType dtype = GENERATE(DType::kBF16, DType::kF16);
  for (const Family& fam : {kFamilies[0], kFamilies[1], kFamilies[2]}) {
    DYNAMIC_SECTION(fam.label << " " << dtype_name(dtype)) {
      const auto hf = load_ok(write_hf(fam.spec, dtype, "hf16"));
      const auto gguf = load_ok(write_gguf(fam.spec, dtype, "m16.gguf"));
      CHECK(hf->weights.layers[0].wq.dtype == dtype);
      CHECK(hf->weights.tok_embd.dtype == dtype);
      CHECK(hf->weights.layers[0].attn_norm.dtype == DType::kF32);
      // Zero-copy: the matrices point into the mapped safetensors file.
      const SafetensorsFile& file = hf->storage->safetensors.at(0);
      auto view = file.tensor("model.layers.0.mlp.up_proj.weight");
      REQUIRE(view.ok());
      CHECK(view->data == hf->weights.layers[0].w_up.data);
      const std::vector<int32_t> ids = test_ids(hf->config.n_vocab, 9);
      const std::vector<float> ref = reference_logits(*hf, ids);
      CHECK(max_abs_diff(ref, reference_logits(*gguf, ids)) <= kSameModelTol);
      auto backend = cpu_backend(2);
      CHECK(max_abs_diff(runner_logits(*hf, *backend, ids, 512), ref) <= kRunnerTol);
    }
  }
}

TEST_CASE("llama3 rope scaling: the factor table of config.json and of rope_freqs.weight", "[model][families]") {
  // Hugging Face's _compute_llama3_parameters for Llama 3.2 1B (head_dim 64, theta 500000,
  // factor 32, low 1, high 4, original 8192): high frequencies keep 1, low ones get 32.
  auto f = llama3_rope_freq_factors(64, 500000.0f, Llama3RopeScaling{32.0f, 1.0f, 4.0f, 8192});
  REQUIRE(f.ok());
  REQUIRE(f->size() == 32);
  CHECK(f->front() == 1.0f);
  CHECK(f->back() == 32.0f);
  for (size_t i = 1; i < f->size(); ++i) CHECK((*f)[i] >= (*f)[i - 1]);  // monotone in wavelength
  const size_t smooth = size_t(std::count_if(f->begin(), f->end(), [](float x) { return x > 1.0f && x < 32.0f; }));
  CHECK(smooth > 0);
  CHECK_FALSE(llama3_rope_freq_factors(64, 5e5f, Llama3RopeScaling{0.0f, 1.0f, 4.0f, 8192}).ok());
  CHECK_FALSE(llama3_rope_freq_factors(64, 5e5f, Llama3RopeScaling{32.0f, 4.0f, 1.0f, 8192}).ok());

  // The GGUF carries the table as llama.cpp's converter writes it.
  const std::string spec = kFamilies[2].spec;
  const std::string path = write_gguf(spec, DType::kF32, "l3.gguf");
  auto g = GgufFile::open(path);
  REQUIRE(g.ok());
  const GgufTensor* rf = (*g)->find_tensor("rope_freqs.weight");
  REQUIRE(rf != nullptr);
  CHECK(rf->dtype == DType::kF32);
  CHECK(rf->ne == std::vector<int64_t>{8});

  // Far enough into a sequence the scaling changes the logits, and runner and reference agree.
  auto m = load_ok(path);
  REQUIRE(m->config.rope_freq_factors.size() == 8);
  const std::vector<int32_t> ids = test_ids(m->config.n_vocab, 300);
  const std::vector<float> ref = reference_logits(*m, ids);
  auto backend = cpu_backend(2);
  const std::vector<float> run = runner_logits(*m, *backend, ids, 64);
  CHECK(max_abs_diff(run, ref) <= kRunnerTol);
  const auto hf = load_ok(write_hf(spec, DType::kF32, "l3hf"));
  CHECK(max_abs_diff(runner_logits(*hf, *backend, ids, 64), ref) <= kRunnerTol);
  m->config.rope_freq_factors.clear();  // the same weights without scaling
  const std::vector<float> unscaled = reference_logits(*m, ids);
  const size_t last = (ids.size() - 1) * size_t(m->config.n_vocab);
  CHECK(max_abs_diff(std::span(unscaled).subspan(last), std::span(ref).subspan(last)) > 1e-4f);
}

TEST_CASE("sharded Hugging Face directories load like a single file", "[model][families]") {
  const std::string spec = kFamilies[1].spec;
  const std::string single = write_hf(spec, DType::kF32, "single");
  const std::string sharded = write_hf(spec, DType::kF32, "sharded", /*shard_bytes=*/100'000);
  CHECK_FALSE(fs::exists(sharded + "/model.safetensors"));
  REQUIRE(fs::exists(sharded + "/model.safetensors.index.json"));
  const nlohmann::json index = read_json(sharded + "/model.safetensors.index.json");
  std::set<std::string> shards;
  for (const auto& [name, file] : index["weight_map"].items()) shards.insert(file.get<std::string>());
  CHECK(shards.size() >= 3);
  CHECK(shards.count("model-00001-of-0000" + std::to_string(shards.size()) + ".safetensors") == 1);

  const auto a = load_ok(single);
  const auto b = load_ok(sharded);
  CHECK(b->storage->safetensors.size() == shards.size());
  check_same_config(a->config, b->config, RopePairing::kIgnore);
  const std::vector<int32_t> ids = test_ids(a->config.n_vocab, 7);
  CHECK(max_abs_diff(reference_logits(*a, ids), reference_logits(*b, ids)) == 0.0f);
  // A path to config.json loads the directory.
  const auto c = load_ok(sharded + "/config.json");
  CHECK(c->config.n_layer == a->config.n_layer);

  // Writing the same directory unsharded removes the index, which would otherwise win.
  REQUIRE(write_synth_hf(spec, DType::kF32, 11, sharded).ok());
  CHECK_FALSE(fs::exists(sharded + "/model.safetensors.index.json"));
  CHECK(load_ok(sharded)->storage->safetensors.size() == 1);
}

TEST_CASE("Hugging Face tokenizer files, generation config and eos ids", "[model][families]") {
  for (const Family& fam : {kFamilies[0], kFamilies[2]}) {
    DYNAMIC_SECTION(fam.label) {
      const std::string dir = write_hf(fam.spec, DType::kF32, "tok");
      for (const char* f : {"vocab.json", "merges.txt", "tokenizer_config.json", "generation_config.json"}) {
        CHECK(fs::exists(dir + "/" + f));
      }
      auto shape = find_synth_shape(fam.spec);
      REQUIRE(shape.ok());
      const Vocab v = synth_shape_vocab(*shape);
      REQUIRE(v.n_vocab() == 1024);
      const nlohmann::json vocab = read_json(dir + "/vocab.json");
      const nlohmann::json cfg = read_json(dir + "/tokenizer_config.json");
      const size_t n_special = cfg["added_tokens_decoder"].size();
      CHECK(vocab.size() + n_special == 1024);
      CHECK(vocab["!"] == 0);
      CHECK(vocab["\xC4\xA0t"].is_number());  // "Ġt": a merge of space and t
      const std::string merges = test::read_file(dir + "/merges.txt");
      CHECK(merges.rfind("#version: 0.2\n", 0) == 0);
      CHECK(size_t(std::count(merges.begin(), merges.end(), '\n')) == 1 + v.merges.size());
      CHECK(cfg["chat_template"].get<std::string>() == v.chat_template);
      auto tmpl = ChatTemplate::from_source(v.chat_template);  // the family's layout is recognized
      REQUIRE(tmpl.ok());
      CHECK(tmpl->format() == (fam.arch == Arch::kLlama ? ChatFormat::kLlama3 : ChatFormat::kChatML));
      CHECK(cfg["eos_token"] == v.pieces[size_t(v.eos)]);

      const auto hf = load_ok(dir);
      const auto gguf = load_ok(write_gguf(fam.spec, DType::kF32, "tok.gguf"));
      if (fam.arch == Arch::kQwen2) {  // <|im_end|> and <|endoftext|>
        CHECK(hf->is_eos(1023));
        CHECK(hf->is_eos(1021));
        CHECK_FALSE(hf->is_eos(1022));
      } else {  // <|end_of_text|> and <|eot_id|>
        CHECK(hf->is_eos(1020));
        CHECK(hf->is_eos(1023));
        CHECK_FALSE(hf->is_eos(1019));
      }
      CHECK(gguf->is_eos(v.eos));
      // Where kvbridge cannot build a byte-level BPE tokenizer, both load with ids only, saying why.
      for (const Model* m : {hf.get(), gguf.get()}) {
        if (m->tokenizer) {
          CHECK(m->tokenizer->vocab().pieces == v.pieces);
          CHECK(m->tokenizer->eos() == v.eos);
          CHECK(m->tokenizer->bos() == v.bos);
        } else {
          CHECK_FALSE(m->tokenizer_note.empty());
        }
      }
      if (hf->tokenizer && gguf->tokenizer) {  // one tokenizer in two formats
        const std::string text = "Once upon a time, Lily said: \"hello world 42!\"";
        const std::vector<int32_t> ids = hf->tokenizer->encode(text);
        CHECK(gguf->tokenizer->encode(text) == ids);
        CHECK(ids.size() < text.size());  // the merges apply
        CHECK(hf->tokenizer->decode(ids) == gguf->tokenizer->decode(ids));
      }
      // The streamed GGUF equals exporting the in-memory model, tokenizer metadata included.
      auto mem = synth_model(fam.spec, DType::kF32, 11);
      REQUIRE(mem.ok());
      if ((*mem)->tokenizer) {
        const std::string exported = test::temp_dir() + "/tok-exported.gguf";
        REQUIRE(write_model_gguf(**mem, exported).ok());
        CHECK(test::read_file(exported) == test::read_file(test::temp_dir() + "/tok.gguf"));
      }
    }
  }
}

TEST_CASE("a Hugging Face llama exports to the GGUF llama.cpp's converter would write", "[model][families][export]") {
  for (const Family& fam : {kFamilies[2], kFamilies[3], kFamilies[0]}) {
    DYNAMIC_SECTION(fam.label) {
      const auto hf = load_ok(write_hf(fam.spec, DType::kF32, "exp"));
      const std::string out = test::temp_dir() + "/exported.gguf";
      const Status s = write_model_gguf(*hf, out);
      INFO(s.to_string());
      REQUIRE(s.ok());
      // Tensor for tensor the synthetic GGUF: Q/K rows permuted for llama, as stored for qwen.
      auto a = GgufFile::open(out);
      auto b = GgufFile::open(write_gguf(fam.spec, DType::kF32, "exp-ref.gguf"));
      REQUIRE((a.ok() && b.ok()));
      REQUIRE((*a)->tensors().size() == (*b)->tensors().size());
      for (const GgufTensor& t : (*b)->tensors()) {
        INFO(t.name);
        const GgufTensor* x = (*a)->find_tensor(t.name);
        REQUIRE(x != nullptr);
        CHECK(x->ne == t.ne);
        CHECK((x->nbytes == t.nbytes && std::memcmp(x->data, t.data, t.nbytes) == 0));
      }
      CHECK(*(*a)->get_string("general.architecture").value() == std::string(arch_name(fam.arch)));
      const auto back = load_ok(out);
      check_same_config(back->config, hf->config, RopePairing::kIgnore);
      const std::vector<int32_t> ids = test_ids(hf->config.n_vocab, 6);
      CHECK(max_abs_diff(reference_logits(*back, ids), reference_logits(*hf, ids)) <= kSameModelTol);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Malformed inputs

TEST_CASE("Hugging Face loader rejects malformed directories, naming the file and tensor", "[model][bad-input]") {
  const std::string spec = kFamilies[0].spec;  // qwen2: biases too
  const std::string good = write_hf(spec, DType::kF32, "good");
  auto copy = [&](const std::string& name) {
    const std::string d = new_dir(name);
    for (const auto& e : fs::directory_iterator(good)) fs::copy(e.path(), d + "/" + e.path().filename().string());
    return d;
  };

  SECTION("missing tensor") {
    const std::string d = copy("missing");
    auto src = SafetensorsFile::open(good + "/model.safetensors");
    REQUIRE(src.ok());
    std::vector<SafetensorsTensor> keep;
    for (const SafetensorsEntry& e : src->entries()) {
      if (e.name == "model.layers.1.self_attn.k_proj.bias") continue;
      keep.push_back({e.name, e.dtype, e.shape, src->view(e).data});
    }
    REQUIRE(write_safetensors(d + "/model.safetensors", keep).ok());
    expect_load_error(d, StatusCode::kInvalidArgument, {"model.layers.1.self_attn.k_proj.bias", "model.safetensors"});
  }
  SECTION("unknown model_type") {
    const std::string d = copy("mtype");
    nlohmann::json cfg = read_json(d + "/config.json");
    cfg["model_type"] = "mistral";
    write_text(d + "/config.json", cfg.dump());
    expect_load_error(d, StatusCode::kInvalidArgument, {"mistral", "config.json", "model_type"});
  }
  SECTION("truncated safetensors") {
    const std::string d = copy("trunc");
    const std::string bytes = test::read_file(good + "/model.safetensors");
    write_text(d + "/model.safetensors", bytes.substr(0, bytes.size() - 100));
    expect_load_error(d, StatusCode::kInvalidArgument, {"model.safetensors"});
  }
  SECTION("shape mismatch against config.json") {
    const std::string d = copy("shape");
    nlohmann::json cfg = read_json(d + "/config.json");
    cfg["intermediate_size"] = 100;
    write_text(d + "/config.json", cfg.dump());
    expect_load_error(d, StatusCode::kInvalidArgument, {"mlp.gate_proj.weight", "[100][64]", "model.safetensors"});
  }
  SECTION("unsupported dtype") {
    const std::string d = copy("dtype");
    std::string bytes = test::read_file(good + "/model.safetensors");
    const size_t at = bytes.find("\"F32\"");  // same length: the header stays consistent
    REQUIRE(at != std::string::npos);
    bytes.replace(at, 5, "\"F64\"");
    write_text(d + "/model.safetensors", bytes);
    expect_load_error(d, StatusCode::kInvalidArgument, {"F64", "model.safetensors"});
  }
  SECTION("unsupported rope scaling and config errors") {
    const std::string d = copy("rope");
    nlohmann::json cfg = read_json(d + "/config.json");
    cfg["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
    write_text(d + "/config.json", cfg.dump());
    expect_load_error(d, StatusCode::kInvalidArgument, {"yarn", "rope_scaling"});
    cfg["rope_scaling"] = nullptr;
    cfg["hidden_size"] = "64";
    write_text(d + "/config.json", cfg.dump());
    expect_load_error(d, StatusCode::kInvalidArgument, {"hidden_size", "config.json"});
    cfg["hidden_size"] = 64;
    cfg.erase("num_hidden_layers");
    write_text(d + "/config.json", cfg.dump());
    expect_load_error(d, StatusCode::kInvalidArgument, {"num_hidden_layers", "missing"});
    write_text(d + "/config.json", "{not json");
    expect_load_error(d, StatusCode::kInvalidArgument, {"config.json"});
  }
  SECTION("no weights, no config") {
    const std::string d = copy("noweights");
    fs::remove(d + "/model.safetensors");
    expect_load_error(d, StatusCode::kInvalidArgument, {"model.safetensors"});
    expect_load_error(new_dir("empty"), StatusCode::kNotFound, {"config.json"});
    expect_load_error(test::temp_dir() + "/no-such-dir/config.json", StatusCode::kNotFound, {"no-such-dir"});
  }
  SECTION("sharded: a missing shard, a tensor the index does not name") {
    const std::string d = write_hf(spec, DType::kF32, "badshards", 100'000);
    nlohmann::json index = read_json(d + "/model.safetensors.index.json");
    index["weight_map"]["model.norm.weight"] = "model-00099-of-00099.safetensors";
    write_text(d + "/model.safetensors.index.json", index.dump());
    expect_load_error(d, StatusCode::kInvalidArgument, {"model-00099-of-00099.safetensors", "index.json"});
    index["weight_map"]["model.norm.weight"] = "../config.json";
    write_text(d + "/model.safetensors.index.json", index.dump());
    expect_load_error(d, StatusCode::kInvalidArgument, {"plain file name"});
    index["weight_map"].erase("model.norm.weight");
    write_text(d + "/model.safetensors.index.json", index.dump());
    expect_load_error(d, StatusCode::kInvalidArgument, {"model.norm.weight", "index.json"});
  }
}

TEST_CASE("GGUF loader names unknown architectures and missing family tensors", "[model][bad-input]") {
  const std::string qwen2 = write_gguf(kFamilies[0].spec, DType::kF32, "q2.gguf");
  const std::string qwen3 = write_gguf(kFamilies[1].spec, DType::kF32, "q3.gguf");
  expect_load_error(rewrite_gguf(qwen2, "mamba.gguf", "", "mamba"), StatusCode::kInvalidArgument,
                    {"mamba", "not supported"});
  expect_load_error(rewrite_gguf(qwen2, "nobias.gguf", "blk.1.attn_k.bias"), StatusCode::kInvalidArgument,
                    {"blk.1.attn_k.bias", "nobias.gguf"});
  expect_load_error(rewrite_gguf(qwen3, "nonorm.gguf", "blk.0.attn_q_norm.weight"), StatusCode::kInvalidArgument,
                    {"blk.0.attn_q_norm.weight"});
  // A qwen3 file read as qwen2 lacks the biases.
  expect_load_error(rewrite_gguf(qwen3, "as-qwen2.gguf", "", "qwen2"), StatusCode::kInvalidArgument,
                    {"attn_q.bias"});
}

// ---------------------------------------------------------------------------------------------
// GPU: the runner on cuda:0 for every family (exits 77, Skipped, without a GPU).

TEST_CASE("every family on the CUDA backend matches the reference pass", "[gpu][families]") {
  auto dev = find_device("cuda:0");
  if (!dev.ok()) {
    std::printf("no CUDA device: %s; skipping\n", dev.status().to_string().c_str());
    std::fflush(stdout);
    std::exit(77);
  }
  auto backend = (*dev)->create_backend();
  REQUIRE(backend.ok());
  for (const Family& fam : kFamilies) {
    for (DType dtype : {DType::kF32, DType::kBF16}) {
      DYNAMIC_SECTION(fam.label << " " << dtype_name(dtype)) {
        const auto m = load_ok(write_hf(fam.spec, dtype, "gpu"));
        const std::vector<int32_t> ids = test_ids(m->config.n_vocab, 40);
        const std::vector<float> ref = reference_logits(*m, ids);
        const std::vector<float> gpu = runner_logits(*m, **backend, ids, 16);
        CHECK(max_abs_diff(gpu, ref) <= 1e-3f);
        CHECK(max_abs_diff(runner_logits(*m, **backend, ids, 16, 1), gpu) <= 1e-4f);
      }
    }
  }
}
