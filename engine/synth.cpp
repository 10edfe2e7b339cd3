// Synthetic models: presets, shape specs, the seeded weight generator, and the GGUF and Hugging
// Face writers (the vocabularies are in synth_vocab.cpp).
#include "engine/synth.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/model_loaders.h"
#include "engine/safetensors.h"
#include "kernels/quants.h"

namespace kvb {

namespace {

constexpr int64_t kChunkElems = int64_t(1) << 20;  // weights generated per step (4 MiB of f32)

// ---- presets ----

ModelConfig family_config(Arch arch, int32_t n_layer, int32_t n_embd, int32_t n_head, int32_t n_head_kv,
                          int32_t head_dim, int32_t n_ff, int32_t n_vocab, int32_t n_ctx, float theta, float eps,
                          bool tied) {
  ModelConfig c;
  c.arch = arch;
  c.n_layer = n_layer;
  c.n_embd = n_embd;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.head_dim = head_dim;
  c.n_ff = n_ff;
  c.n_vocab = n_vocab;
  c.n_ctx_train = n_ctx;
  c.norm_eps = eps;
  // The GGUF form: llama rotates adjacent pairs of permuted Q/K rows, Qwen rotates halves.
  c.rope = RopeParams{arch == Arch::kLlama ? RopeType::kNormal : RopeType::kNeox, head_dim, theta, 1.0f};
  c.tied_output = tied;
  return c;
}

std::vector<SynthShape> make_presets() {
  using V = SynthVocabKind;
  const Arch llama = Arch::kLlama, qwen2 = Arch::kQwen2, qwen3 = Arch::kQwen3;
  return {
      {"stories260K", family_config(llama, 5, 64, 8, 4, 8, 172, 512, 512, 1e4f, 1e-5f, true),
       "TinyStories 260K (llama2.c): GQA 8/4, head_dim 8", V::kSpm, {}},
      {"stories15M", family_config(llama, 6, 288, 6, 6, 48, 768, 32000, 256, 1e4f, 1e-5f, true),
       "TinyStories 15M (llama2.c)", V::kSpm, {}},
      {"stories42M", family_config(llama, 8, 512, 8, 8, 64, 1376, 32000, 1024, 1e4f, 1e-5f, true),
       "TinyStories 42M (llama2.c)", V::kSpm, {}},
      {"stories110M", family_config(llama, 12, 768, 12, 12, 64, 2048, 32000, 1024, 1e4f, 1e-5f, true),
       "TinyStories 110M (llama2.c)", V::kSpm, {}},
      {"qwen2.5-0.5b", family_config(qwen2, 24, 896, 14, 2, 64, 4864, 151936, 32768, 1e6f, 1e-6f, true),
       "Qwen2.5-0.5B: qwen2, Q/K/V biases, NeoX RoPE", V::kQwen, {}},
      {"qwen3-0.6b", family_config(qwen3, 28, 1024, 16, 8, 128, 3072, 151936, 40960, 1e6f, 1e-6f, true),
       "Qwen3-0.6B: qwen3, Q/K norms, head_dim 128 != n_embd/n_head", V::kQwen, {}},
      {"llama3.2-1b", family_config(llama, 16, 2048, 32, 8, 64, 8192, 128256, 131072, 5e5f, 1e-5f, true),
       "Llama 3.2 1B: llama3 RoPE scaling (factor 32)", V::kLlama3, Llama3RopeScaling{32.0f, 1.0f, 4.0f, 8192}},
      {"llama3-8b", family_config(llama, 32, 4096, 32, 8, 128, 14336, 128256, 8192, 5e5f, 1e-5f, false),
       "Llama 3 8B dims, untied output", V::kLlama3, {}},
  };
}

Result<int32_t> parse_positive(std::string_view key, std::string_view value) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  if (ec != std::errc() || end != value.data() + value.size() || v <= 0 || v > (int64_t(1) << 30)) {
    return invalid_argument(fmt::format("synth shape: override {}={} is not a positive integer", key, value));
  }
  return int32_t(v);
}

// Derived fields of a shape: RoPE dims and the llama3 frequency table.
Status finish_shape(SynthShape& s) {
  ModelConfig& c = s.config;
  c.rope.n_rot = c.head_dim;
  c.rope_freq_factors.clear();
  if (s.rope_scaling.factor > 0.0f) {
    KVB_ASSIGN_OR_RETURN(c.rope_freq_factors,
                         llama3_rope_freq_factors(c.rope.n_rot, c.rope.theta_base, s.rope_scaling));
  }
  return Status::Ok();
}

// ---- the generator ----

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char ch : s) {
    h ^= uint8_t(ch);
    h *= 0x100000001b3ull;
  }
  return h;
}

// xoshiro256** over one tensor, yielding uniform floats of std 0.02.
class WeightStream {
 public:
  WeightStream(uint64_t seed, std::string_view tensor_name) {
    uint64_t sm = seed ^ fnv1a(tensor_name);
    for (uint64_t& w : s_) w = splitmix64(sm);
  }

  void fill(float* dst, int64_t n) {
    // 24 random bits as a signed integer in [-2^23, 2^23), times one constant: a single exactly
    // rounded float multiply, so the values are identical on every IEEE platform.
    constexpr float kScale = 0.034641016f / float(1 << 23);  // 0.02 * sqrt(3) / 2^23
    for (int64_t i = 0; i < n; ++i) dst[i] = float(int32_t(next() >> 40) - (1 << 23)) * kScale;
  }

 private:
  uint64_t next() {
    const uint64_t result = std::rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = std::rotl(s_[3], 45);
    return result;
  }

  uint64_t s_[4];
};

// How a slot's values are drawn (engine/synth.h, "Weights").
enum class Fill { kRandom, kOnes, kOnePlusRandom, kRopeFactors };

Fill fill_of(const LlamaTensorSlot& s) {
  if (s.is_norm()) return Fill::kOnes;
  if (s.is_qk_norm()) return Fill::kOnePlusRandom;
  if (s.weight == LlamaWeight::kRopeFreqs) return Fill::kRopeFactors;
  return Fill::kRandom;  // matrices and biases
}

DType stored_dtype(const LlamaTensorSlot& s, DType dtype) {
  return s.is_vector() ? DType::kF32 : gguf_matrix_dtype(dtype, s.cols);
}

// The head size by which a slot's rows are permuted in the GGUF form, or 0: llama attn_q/attn_k
// (the generator draws Hugging Face's row order).
int64_t gguf_permutation(const ModelConfig& c, const LlamaTensorSlot& s) {
  const bool qk = s.weight == LlamaWeight::kAttnQ || s.weight == LlamaWeight::kAttnK;
  return c.arch == Arch::kLlama && qk ? c.head_dim : 0;
}

// Generates one tensor in row blocks and hands each block's bytes (in `dst`) to `emit`: the one
// code path behind synth_model, write_synth_gguf and write_synth_hf, so all give the same values.
// permute_hd > 0: rows are emitted in GGUF order (gguf_row_source within heads of permute_hd rows).
Status generate_tensor(const LlamaTensorSlot& s, DType dst, uint64_t seed, int64_t permute_hd,
                       const ModelConfig& c, const GgufWriter::ByteSink& emit) {
  int64_t block = std::max<int64_t>(1, kChunkElems / s.cols);
  if (permute_hd > 0) block = (block + permute_hd - 1) / permute_hd * permute_hd;  // whole heads
  const int64_t first = std::min(block, s.rows);
  std::vector<float> f32(static_cast<size_t>(first * s.cols));
  std::vector<float> permuted(permute_hd > 0 ? f32.size() : 0);
  std::vector<uint8_t> out(dst == DType::kF32 ? 0 : static_cast<size_t>(first) * row_bytes(dst, s.cols));
  WeightStream rng(seed, s.name);
  const Fill fill = fill_of(s);
  for (int64_t r = 0; r < s.rows; r += block) {
    const int64_t n = std::min(block, s.rows - r);
    switch (fill) {
      case Fill::kOnes: std::fill_n(f32.data(), n * s.cols, 1.0f); break;
      case Fill::kRopeFactors:
        KVB_ASSERT(c.rope_freq_factors.size() == size_t(s.cols), "rope_freqs slot without factors");
        std::copy(c.rope_freq_factors.begin(), c.rope_freq_factors.end(), f32.begin());
        break;
      case Fill::kRandom: rng.fill(f32.data(), n * s.cols); break;
      case Fill::kOnePlusRandom:
        rng.fill(f32.data(), n * s.cols);
        for (int64_t i = 0; i < n * s.cols; ++i) f32[size_t(i)] += 1.0f;
        break;
    }
    const float* values = f32.data();
    if (permute_hd > 0) {  // r and n are whole heads
      for (int64_t i = 0; i < n; ++i) {
        std::copy_n(f32.data() + gguf_row_source(i, permute_hd) * s.cols, s.cols, permuted.data() + i * s.cols);
      }
      values = permuted.data();
    }
    if (dst == DType::kF32) {
      KVB_RETURN_IF_ERROR(emit(values, size_t(n * s.cols) * sizeof(float)));
    } else {
      from_f32(dst, values, out.data(), n * s.cols);
      KVB_RETURN_IF_ERROR(emit(out.data(), size_t(n) * row_bytes(dst, s.cols)));
    }
  }
  return Status::Ok();
}

Status check_dtype(DType dtype) {
  if (dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 || can_quantize(dtype)) {
    return Status::Ok();
  }
  return invalid_argument(
      fmt::format("synth: dtype {} is not supported (f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1)", dtype_name(dtype)));
}

// ---- Hugging Face files ----

std::string hf_tensor_name(const LlamaTensorSlot& s) {
  const std::string p = fmt::format("model.layers.{}.", s.layer);
  switch (s.weight) {
    case LlamaWeight::kTokEmbd: return "model.embed_tokens.weight";
    case LlamaWeight::kOutputNorm: return "model.norm.weight";
    case LlamaWeight::kOutput: return "lm_head.weight";
    case LlamaWeight::kAttnQ: return p + "self_attn.q_proj.weight";
    case LlamaWeight::kAttnK: return p + "self_attn.k_proj.weight";
    case LlamaWeight::kAttnV: return p + "self_attn.v_proj.weight";
    case LlamaWeight::kAttnOutput: return p + "self_attn.o_proj.weight";
    case LlamaWeight::kAttnQBias: return p + "self_attn.q_proj.bias";
    case LlamaWeight::kAttnKBias: return p + "self_attn.k_proj.bias";
    case LlamaWeight::kAttnVBias: return p + "self_attn.v_proj.bias";
    case LlamaWeight::kAttnQNorm: return p + "self_attn.q_norm.weight";
    case LlamaWeight::kAttnKNorm: return p + "self_attn.k_norm.weight";
    case LlamaWeight::kAttnNorm: return p + "input_layernorm.weight";
    case LlamaWeight::kFfnNorm: return p + "post_attention_layernorm.weight";
    case LlamaWeight::kFfnGate: return p + "mlp.gate_proj.weight";
    case LlamaWeight::kFfnUp: return p + "mlp.up_proj.weight";
    case LlamaWeight::kFfnDown: return p + "mlp.down_proj.weight";
    case LlamaWeight::kRopeFreqs: break;
  }
  KVB_ASSERT(false, "no Hugging Face name for this slot");
  return {};
}

// A float as JSON in its shortest round-trip form (1e-06, not 9.99999997e-07).
double json_float(float f) { return std::stod(fmt::format("{}", f)); }

const char* hf_architecture(Arch a) {
  switch (a) {
    case Arch::kLlama: return "LlamaForCausalLM";
    case Arch::kQwen2: return "Qwen2ForCausalLM";
    case Arch::kQwen3: return "Qwen3ForCausalLM";
  }
  return "";
}

const char* torch_dtype_name(DType t) {
  return t == DType::kF16 ? "float16" : t == DType::kBF16 ? "bfloat16" : "float32";
}

// The ids that end a generation: eos first, then the family's other end tokens.
std::vector<int32_t> generation_eos_ids(const Vocab& v) {
  std::vector<int32_t> ids;
  if (v.eos >= 0) ids.push_back(v.eos);
  for (int32_t id = 0; id < v.n_vocab(); ++id) {
    const std::string& p = v.pieces[size_t(id)];
    if (v.types[size_t(id)] == TokenType::kControl && id != v.eos &&
        (p == "<|endoftext|>" || p == "<|end_of_text|>" || p == "<|eot_id|>" || p == "<|im_end|>")) {
      ids.push_back(id);
    }
  }
  return ids;
}

Status write_text(const std::filesystem::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return unavailable(fmt::format("cannot write {}: {}", p.string(), std::strerror(errno)));
  return Status::Ok();
}

nlohmann::ordered_json hf_config(const SynthShape& shape, const Vocab& v, DType dtype) {
  const ModelConfig& c = shape.config;
  nlohmann::ordered_json j;
  j["architectures"] = {hf_architecture(c.arch)};
  j["model_type"] = std::string(arch_name(c.arch));
  j["hidden_size"] = c.n_embd;
  j["intermediate_size"] = c.n_ff;
  j["num_hidden_layers"] = c.n_layer;
  j["num_attention_heads"] = c.n_head;
  j["num_key_value_heads"] = c.n_head_kv;
  j["head_dim"] = c.head_dim;
  j["vocab_size"] = c.n_vocab;
  j["max_position_embeddings"] = c.n_ctx_train;
  j["rms_norm_eps"] = json_float(c.norm_eps);
  j["rope_theta"] = json_float(c.rope.theta_base);
  if (shape.rope_scaling.factor > 0.0f) {
    const Llama3RopeScaling& s = shape.rope_scaling;
    j["rope_scaling"] = {{"factor", json_float(s.factor)},
                         {"high_freq_factor", json_float(s.high_freq_factor)},
                         {"low_freq_factor", json_float(s.low_freq_factor)},
                         {"original_max_position_embeddings", s.original_max_position},
                         {"rope_type", "llama3"}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["tie_word_embeddings"] = c.tied_output;
  j["hidden_act"] = "silu";
  j["initializer_range"] = 0.02;
  j["attention_dropout"] = 0.0;
  if (c.arch != Arch::kQwen2) j["attention_bias"] = false;
  if (c.arch == Arch::kLlama) j["mlp_bias"] = false;
  if (c.arch != Arch::kLlama) j["use_sliding_window"] = false;
  j["use_cache"] = true;
  j["torch_dtype"] = torch_dtype_name(dtype);
  j["bos_token_id"] = v.bos >= 0 ? nlohmann::ordered_json(v.bos) : nlohmann::ordered_json(nullptr);
  j["eos_token_id"] = v.eos >= 0 ? nlohmann::ordered_json(v.eos) : nlohmann::ordered_json(nullptr);
  return j;
}

}  // namespace

const std::vector<SynthShape>& synth_shapes() {
  static const std::vector<SynthShape> kPresets = [] {
    std::vector<SynthShape> p = make_presets();
    for (SynthShape& s : p) KVB_ASSERT(finish_shape(s).ok(), "bad synth preset");
    return p;
  }();
  return kPresets;
}

std::vector<std::string> synth_shape_names() {
  std::vector<std::string> names;
  for (const SynthShape& s : synth_shapes()) names.push_back(s.name);
  return names;
}

Result<SynthShape> find_synth_shape(std::string_view spec) {
  const size_t colon = spec.find(':');
  const std::string_view name = spec.substr(0, colon);
  const auto& presets = synth_shapes();
  const auto it = std::find_if(presets.begin(), presets.end(), [&](const SynthShape& s) { return s.name == name; });
  if (it == presets.end()) {
    return invalid_argument(
        fmt::format("unknown synth shape '{}' (presets: {})", name, fmt::join(synth_shape_names(), ", ")));
  }
  SynthShape shape = *it;
  ModelConfig& c = shape.config;
  if (colon != std::string_view::npos) {
    shape.name = std::string(spec);
    const bool standard_head = c.head_dim * c.n_head == c.n_embd;
    bool head_dim_set = false;
    std::string_view rest = spec.substr(colon + 1);
    while (!rest.empty()) {
      const size_t comma = rest.find(',');
      const std::string_view kv = rest.substr(0, comma);
      rest = comma == std::string_view::npos ? std::string_view() : rest.substr(comma + 1);
      const size_t eq = kv.find('=');
      if (eq == std::string_view::npos) {
        return invalid_argument(fmt::format("synth shape '{}': override '{}' is not key=value", spec, kv));
      }
      const std::string_view key = kv.substr(0, eq);
      KVB_ASSIGN_OR_RETURN(const int32_t v, parse_positive(key, kv.substr(eq + 1)));
      const std::pair<std::string_view, int32_t*> fields[] = {
          {"n_layer", &c.n_layer}, {"n_vocab", &c.n_vocab}, {"n_ctx", &c.n_ctx_train},
          {"n_embd", &c.n_embd},   {"n_ff", &c.n_ff},       {"n_head", &c.n_head},
          {"n_head_kv", &c.n_head_kv}, {"head_dim", &c.head_dim},
      };
      const auto f = std::find_if(std::begin(fields), std::end(fields), [&](const auto& p) { return p.first == key; });
      if (f == std::end(fields)) {
        return invalid_argument(fmt::format(
            "synth shape '{}': unknown override '{}' (n_layer, n_vocab, n_ctx, n_embd, n_ff, n_head, n_head_kv, "
            "head_dim)", spec, key));
      }
      *f->second = v;
      head_dim_set |= key == "head_dim";
    }
    if (standard_head && !head_dim_set && c.n_head > 0 && c.n_embd % c.n_head == 0) c.head_dim = c.n_embd / c.n_head;
  }
  if (c.n_vocab < synth_min_vocab(shape.vocab)) {
    return invalid_argument(
        fmt::format("synth shape '{}': n_vocab must be at least {}", spec, synth_min_vocab(shape.vocab)));
  }
  const std::string context = fmt::format("synth shape '{}'", spec);
  c.rope.n_rot = c.head_dim;
  c.rope_freq_factors.clear();  // the preset's table is for its own head_dim: finish_shape recomputes it
  KVB_RETURN_IF_ERROR(c.validate().with_context(context));
  KVB_RETURN_IF_ERROR(finish_shape(shape).with_context(context));
  return shape;
}

Result<std::unique_ptr<Model>> synth_model(std::string_view spec, DType dtype, uint64_t seed) {
  KVB_RETURN_IF_ERROR(check_dtype(dtype));
  KVB_ASSIGN_OR_RETURN(SynthShape shape, find_synth_shape(spec));
  auto m = std::make_unique<Model>();
  m->config = shape.config;
  m->format = ModelFormat::kGguf;
  m->path = "synth-" + shape.name;
  m->storage = std::make_shared<Model::Storage>();
  KVB_RETURN_IF_ERROR(attach_tokenizer(*m, synth_shape_vocab(shape)));

  m->weights.layers.resize(size_t(shape.config.n_layer));
  for (const LlamaTensorSlot& s : llama_tensor_slots(shape.config)) {
    if (s.weight == LlamaWeight::kRopeFreqs) continue;  // ModelConfig::rope_freq_factors
    const DType dst = stored_dtype(s, dtype);
    auto& buf = m->storage->owned_bytes.emplace_back(size_t(s.rows) * row_bytes(dst, s.cols));
    size_t filled = 0;
    KVB_RETURN_IF_ERROR(generate_tensor(s, dst, seed, gguf_permutation(m->config, s), m->config,
                                        [&](const void* data, size_t n) {
                                          std::memcpy(buf.data() + filled, data, n);
                                          filled += n;
                                          return Status::Ok();
                                        }));
    llama_weight(m->weights, s) = s.is_vector() ? Tensor::make(dst, buf.data(), {s.cols})
                                                : Tensor::make(dst, buf.data(), {s.rows, s.cols});
  }
  if (shape.config.tied_output) m->weights.output = m->weights.tok_embd;
  return m;
}

Status write_synth_gguf(std::string_view spec, DType dtype, uint64_t seed, const std::string& path,
                        const ExportProgress& progress) {
  KVB_RETURN_IF_ERROR(check_dtype(dtype));
  KVB_ASSIGN_OR_RETURN(SynthShape shape, find_synth_shape(spec));
  const Vocab vocab = synth_shape_vocab(shape);
  const ModelConfig& c = shape.config;
  const std::vector<LlamaTensorSlot> slots = llama_tensor_slots(c);
  std::vector<DType> stored;
  uint64_t total_bytes = 0;
  for (const LlamaTensorSlot& s : slots) {
    stored.push_back(stored_dtype(s, dtype));
    total_bytes += uint64_t(s.rows) * row_bytes(stored.back(), s.cols);
  }
  GgufWriter w;
  set_model_gguf_metadata(w, c, &vocab, gguf_model_name("synth-" + shape.name), gguf_file_dtype(slots, stored));
  uint64_t done_bytes = 0;
  size_t done = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    const LlamaTensorSlot& s = slots[i];
    const DType dst = stored[i];
    const uint64_t nbytes = uint64_t(s.rows) * row_bytes(dst, s.cols);
    // `s`, `c`, `progress` and the counters outlive w.write() below.
    auto produce = [&, dst, nbytes](const GgufWriter::ByteSink& emit) {
      KVB_RETURN_IF_ERROR(generate_tensor(s, dst, seed, gguf_permutation(c, s), c, emit));
      done_bytes += nbytes;
      if (progress) progress(++done, slots.size(), done_bytes, total_bytes);
      return Status::Ok();
    };
    KVB_RETURN_IF_ERROR(w.add_tensor_stream(s.name, dst, s.ne(), std::move(produce)));
  }
  return w.write(path).with_context(fmt::format("writing synthetic {}", shape.name));
}

Status write_synth_hf(std::string_view spec, DType dtype, uint64_t seed, const std::string& dir,
                      const SynthHfOptions& opt, const ExportProgress& progress) {
  namespace fs = std::filesystem;
  if (dtype != DType::kF32 && dtype != DType::kF16 && dtype != DType::kBF16) {
    return invalid_argument(
        fmt::format("synth: dtype {} cannot be written as safetensors (f32, f16, bf16)", dtype_name(dtype)));
  }
  if (opt.shard_bytes == 0) return invalid_argument("synth: the shard size must be > 0");
  KVB_ASSIGN_OR_RETURN(SynthShape shape, find_synth_shape(spec));
  const ModelConfig& c = shape.config;
  const Vocab vocab = synth_shape_vocab(shape);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return unavailable(fmt::format("cannot create {}: {}", dir, ec.message()));

  // Tensors in slot order, split greedily into shards of at most opt.shard_bytes.
  struct Item {
    LlamaTensorSlot slot;
    DType dtype;
    uint64_t bytes;
  };
  std::vector<std::vector<Item>> shards(1);
  uint64_t shard_total = 0, total_bytes = 0;
  size_t n_tensors = 0;
  for (const LlamaTensorSlot& s : llama_tensor_slots(c)) {
    if (s.weight == LlamaWeight::kRopeFreqs) continue;  // config.json's rope_scaling
    const DType t = s.is_vector() ? DType::kF32 : dtype;
    const uint64_t bytes = uint64_t(s.rows) * row_bytes(t, s.cols);
    if (!shards.back().empty() && shard_total + bytes > opt.shard_bytes) {
      shards.emplace_back();
      shard_total = 0;
    }
    shards.back().push_back({s, t, bytes});
    shard_total += bytes;
    total_bytes += bytes;
    ++n_tensors;
  }
  const bool sharded = shards.size() > 1;
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  uint64_t done_bytes = 0;
  size_t done = 0;
  for (size_t k = 0; k < shards.size(); ++k) {
    const std::string file =
        sharded ? fmt::format("model-{:05d}-of-{:05d}.safetensors", k + 1, shards.size()) : "model.safetensors";
    SafetensorsWriter w;
    w.set_metadata("format", "pt");
    for (const Item& it : shards[k]) {
      const std::string name = hf_tensor_name(it.slot);
      std::vector<int64_t> shape_dims = it.slot.is_vector() ? std::vector<int64_t>{it.slot.cols}
                                                            : std::vector<int64_t>{it.slot.rows, it.slot.cols};
      KVB_RETURN_IF_ERROR(w.declare(name, it.dtype, std::move(shape_dims)));
      weight_map[name] = file;
    }
    KVB_RETURN_IF_ERROR(w.open((fs::path(dir) / file).string()));
    for (const Item& it : shards[k]) {
      KVB_RETURN_IF_ERROR(generate_tensor(it.slot, it.dtype, seed, 0, c,
                                          [&w](const void* data, size_t n) { return w.write(data, n); }));
      done_bytes += it.bytes;
      if (progress) progress(++done, n_tensors, done_bytes, total_bytes);
    }
    KVB_RETURN_IF_ERROR(w.finish());
  }
  // A directory written before in the other layout must not keep a stale entry point.
  fs::remove(fs::path(dir) / (sharded ? "model.safetensors" : "model.safetensors.index.json"), ec);
  if (sharded) {
    const nlohmann::ordered_json index = {{"metadata", {{"total_size", total_bytes}}}, {"weight_map", weight_map}};
    KVB_RETURN_IF_ERROR(write_text(fs::path(dir) / "model.safetensors.index.json", index.dump(2)));
  }
  KVB_RETURN_IF_ERROR(write_text(fs::path(dir) / "config.json", hf_config(shape, vocab, dtype).dump(2)));
  const std::vector<int32_t> eos = generation_eos_ids(vocab);
  nlohmann::ordered_json gen;
  if (vocab.bos >= 0) gen["bos_token_id"] = vocab.bos;
  if (!eos.empty()) gen["eos_token_id"] = eos;
  KVB_RETURN_IF_ERROR(write_text(fs::path(dir) / "generation_config.json", gen.dump(2)));
  if (vocab.model == Vocab::Model::kBpe) KVB_RETURN_IF_ERROR(write_hf_tokenizer_files(vocab, dir));
  return Status::Ok();
}

}  // namespace kvb
