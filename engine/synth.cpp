// Synthetic llama models: presets, shape specs, the seeded weight generator, the synthetic vocab.
#include "engine/synth.h"

#include <fmt/format.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <charconv>
#include <cstring>
#include <unordered_set>

#include "engine/model_loaders.h"

namespace kvb {

namespace {

constexpr int32_t kMinSynthVocab = 3 + 256 + 1;  // specials, bytes, at least one normal piece
constexpr int64_t kChunkElems = int64_t(1) << 20;  // weights generated per step (4 MiB of f32)

// ---- presets ----

ModelConfig llama_config(int32_t n_layer, int32_t n_embd, int32_t n_head, int32_t n_head_kv, int32_t head_dim,
                         int32_t n_ff, int32_t n_vocab, int32_t n_ctx, float theta, float eps, bool tied) {
  ModelConfig c;
  c.arch = Arch::kLlama;
  c.n_layer = n_layer;
  c.n_embd = n_embd;
  c.n_head = n_head;
  c.n_head_kv = n_head_kv;
  c.head_dim = head_dim;
  c.n_ff = n_ff;
  c.n_vocab = n_vocab;
  c.n_ctx_train = n_ctx;
  c.norm_eps = eps;
  c.rope = RopeParams{RopeType::kNormal, head_dim, theta, 1.0f};
  c.tied_output = tied;
  return c;
}

std::vector<SynthShape> make_presets() {
  return {
      {"stories260K", llama_config(5, 64, 8, 4, 8, 172, 512, 512, 1e4f, 1e-5f, true),
       "TinyStories 260K (llama2.c): GQA 8/4, head_dim 8"},
      {"stories15M", llama_config(6, 288, 6, 6, 48, 768, 32000, 256, 1e4f, 1e-5f, true),
       "TinyStories 15M (llama2.c)"},
      {"stories42M", llama_config(8, 512, 8, 8, 64, 1376, 32000, 1024, 1e4f, 1e-5f, true),
       "TinyStories 42M (llama2.c)"},
      {"stories110M", llama_config(12, 768, 12, 12, 64, 2048, 32000, 1024, 1e4f, 1e-5f, true),
       "TinyStories 110M (llama2.c)"},
      {"qwen3-0.6b", llama_config(28, 1024, 16, 8, 128, 3072, 151936, 40960, 1e6f, 1e-6f, true),
       "Qwen3-0.6B dims as a llama model (qwen3 arch comes later): head_dim 128 != n_embd/n_head"},
      {"llama3.2-1b", llama_config(16, 2048, 32, 8, 64, 8192, 128256, 131072, 5e5f, 1e-5f, true),
       "Llama 3.2 1B dims (no llama3 rope scaling)"},
      {"llama3-8b", llama_config(32, 4096, 32, 8, 128, 14336, 128256, 8192, 5e5f, 1e-5f, false),
       "Llama 3 8B dims, untied output"},
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

DType stored_dtype(const LlamaTensorSlot& s, DType dtype) {
  return s.is_norm() ? DType::kF32 : gguf_matrix_dtype(dtype, s.cols);
}

// Generates one tensor in row blocks and hands each block's bytes (in `dst`) to `emit`. The one
// code path behind both synth_model and write_synth_gguf, so both give the same bytes.
Status generate_tensor(const LlamaTensorSlot& s, DType dst, uint64_t seed, const GgufWriter::ByteSink& emit) {
  const int64_t block = std::max<int64_t>(1, kChunkElems / s.cols);
  const int64_t first = std::min(block, s.rows);
  std::vector<float> f32(static_cast<size_t>(first * s.cols));
  std::vector<uint8_t> out(dst == DType::kF32 ? 0 : static_cast<size_t>(first) * row_bytes(dst, s.cols));
  WeightStream rng(seed, s.name);
  for (int64_t r = 0; r < s.rows; r += block) {
    const int64_t n = std::min(block, s.rows - r);
    if (s.is_norm()) {
      std::fill_n(f32.data(), n * s.cols, 1.0f);
    } else {
      rng.fill(f32.data(), n * s.cols);
    }
    if (dst == DType::kF32) {
      KVB_RETURN_IF_ERROR(emit(f32.data(), size_t(n * s.cols) * sizeof(float)));
    } else {
      from_f32(dst, f32.data(), out.data(), n * s.cols);
      KVB_RETURN_IF_ERROR(emit(out.data(), size_t(n) * row_bytes(dst, s.cols)));
    }
  }
  return Status::Ok();
}

Status check_dtype(DType dtype) {
  if (dtype == DType::kF32 || dtype == DType::kF16 || dtype == DType::kBF16 || dtype == DType::kQ8_0) {
    return Status::Ok();
  }
  return invalid_argument(fmt::format("synth: dtype {} is not supported (f32, f16, bf16, q8_0)", dtype_name(dtype)));
}

}  // namespace

const std::vector<SynthShape>& synth_shapes() {
  static const std::vector<SynthShape> kPresets = make_presets();
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
  if (colon != std::string_view::npos) {
    shape.name = std::string(spec);
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
      if (key == "n_layer") {
        shape.config.n_layer = v;
      } else if (key == "n_vocab") {
        shape.config.n_vocab = v;
      } else if (key == "n_ctx") {
        shape.config.n_ctx_train = v;
      } else {
        return invalid_argument(
            fmt::format("synth shape '{}': unknown override '{}' (n_layer, n_vocab, n_ctx)", spec, key));
      }
    }
  }
  if (shape.config.n_vocab < kMinSynthVocab) {
    return invalid_argument(fmt::format("synth shape '{}': n_vocab must be at least {}", spec, kMinSynthVocab));
  }
  KVB_RETURN_IF_ERROR(shape.config.validate().with_context(fmt::format("synth shape '{}'", spec)));
  return shape;
}

Vocab synth_vocab(int32_t n_vocab) {
  KVB_ASSERT(n_vocab >= kMinSynthVocab, "synth vocab too small");
  Vocab v;
  v.model = Vocab::Model::kSpm;
  v.spm_flavor = Vocab::SpmFlavor::kLlamaCpp;
  v.pieces.reserve(size_t(n_vocab));
  auto add = [&v](std::string piece, float score, TokenType type) {
    v.pieces.push_back(std::move(piece));
    v.scores.push_back(score);
    v.types.push_back(type);
  };
  add("<unk>", 0.0f, TokenType::kUnknown);
  add("<s>", 0.0f, TokenType::kControl);
  add("</s>", 0.0f, TokenType::kControl);
  for (int b = 0; b < 256; ++b) add(fmt::format("<0x{:02X}>", b), 0.0f, TokenType::kByte);
  v.unk = 0;
  v.bos = 1;
  v.eos = 2;
  const std::unordered_set<std::string> taken(v.pieces.begin(), v.pieces.end());

  // Alphabet: "▁", letters, digits, then the other printable ASCII characters.
  std::vector<std::string> alphabet{"\xE2\x96\x81"};
  for (char ch = 'a'; ch <= 'z'; ++ch) alphabet.emplace_back(1, ch);
  for (char ch = 'A'; ch <= 'Z'; ++ch) alphabet.emplace_back(1, ch);
  for (char ch = '0'; ch <= '9'; ++ch) alphabet.emplace_back(1, ch);
  for (char ch = '!'; ch <= '~'; ++ch) {
    if (!std::isalnum(static_cast<unsigned char>(ch))) alphabet.emplace_back(1, ch);
  }
  // Every string of length 1, then 2, ...: an odometer over alphabet indices.
  float score = -1.0f;
  for (size_t len = 1; v.n_vocab() < n_vocab; ++len) {
    std::vector<size_t> idx(len, 0);
    while (v.n_vocab() < n_vocab) {
      std::string piece;
      for (size_t i : idx) piece += alphabet[i];
      if (!taken.count(piece)) {
        add(std::move(piece), score, TokenType::kNormal);
        score -= 1.0f;
      }
      size_t pos = len;
      while (pos > 0 && ++idx[pos - 1] == alphabet.size()) idx[--pos] = 0;
      if (pos == 0) break;  // all strings of this length done
    }
  }
  return v;
}

Result<std::unique_ptr<Model>> synth_model(std::string_view spec, DType dtype, uint64_t seed) {
  KVB_RETURN_IF_ERROR(check_dtype(dtype));
  KVB_ASSIGN_OR_RETURN(SynthShape shape, find_synth_shape(spec));
  auto m = std::make_unique<Model>();
  m->config = shape.config;
  m->format = ModelFormat::kGguf;
  m->path = "synth-" + shape.name;
  m->storage = std::make_shared<Model::Storage>();
  KVB_ASSIGN_OR_RETURN(m->tokenizer, Tokenizer::create(synth_vocab(shape.config.n_vocab)));

  m->weights.layers.resize(size_t(shape.config.n_layer));
  for (const LlamaTensorSlot& s : llama_tensor_slots(shape.config)) {
    const DType dst = stored_dtype(s, dtype);
    auto& buf = m->storage->owned_bytes.emplace_back(size_t(s.rows) * row_bytes(dst, s.cols));
    size_t filled = 0;
    KVB_RETURN_IF_ERROR(generate_tensor(s, dst, seed, [&](const void* data, size_t n) {
      std::memcpy(buf.data() + filled, data, n);
      filled += n;
      return Status::Ok();
    }));
    llama_weight(m->weights, s) = s.is_norm() ? Tensor::make(dst, buf.data(), {s.cols})
                                              : Tensor::make(dst, buf.data(), {s.rows, s.cols});
  }
  if (shape.config.tied_output) m->weights.output = m->weights.tok_embd;
  return m;
}

Status write_synth_gguf(std::string_view spec, DType dtype, uint64_t seed, const std::string& path,
                        const ExportProgress& progress) {
  KVB_RETURN_IF_ERROR(check_dtype(dtype));
  KVB_ASSIGN_OR_RETURN(SynthShape shape, find_synth_shape(spec));
  const Vocab vocab = synth_vocab(shape.config.n_vocab);
  const std::vector<LlamaTensorSlot> slots = llama_tensor_slots(shape.config);
  std::vector<DType> stored;
  uint64_t total_bytes = 0;
  for (const LlamaTensorSlot& s : slots) {
    stored.push_back(stored_dtype(s, dtype));
    total_bytes += uint64_t(s.rows) * row_bytes(stored.back(), s.cols);
  }
  GgufWriter w;
  set_llama_gguf_metadata(w, shape.config, &vocab, gguf_model_name("synth-" + shape.name),
                          gguf_file_dtype(slots, stored));
  uint64_t done_bytes = 0;
  size_t done = 0;
  for (size_t i = 0; i < slots.size(); ++i) {
    const LlamaTensorSlot& s = slots[i];
    const DType dst = stored[i];
    const uint64_t nbytes = uint64_t(s.rows) * row_bytes(dst, s.cols);
    // `s`, `progress` and the counters outlive w.write() below.
    auto produce = [&, dst, nbytes](const GgufWriter::ByteSink& emit) {
      KVB_RETURN_IF_ERROR(generate_tensor(s, dst, seed, emit));
      done_bytes += nbytes;
      if (progress) progress(++done, slots.size(), done_bytes, total_bytes);
      return Status::Ok();
    };
    KVB_RETURN_IF_ERROR(w.add_tensor_stream(s.name, dst, s.ne(), std::move(produce)));
  }
  return w.write(path).with_context(fmt::format("writing synthetic {}", shape.name));
}

}  // namespace kvb
