// Model → GGUF v3: metadata from ModelConfig and Vocab, tensors streamed row block by block.
#include "engine/gguf_export.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "kernels/quants.h"

namespace kvb {

namespace {

// Elements converted per step when a tensor changes dtype: bounds the scratch to ~8 MiB.
constexpr int64_t kChunkElems = int64_t(1) << 20;

// Weight types GGUF can hold; any of them can be copied as is, only can_quantize() ones converted to.
bool storable(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || dtype_is_quantized(t);
}

// Streams `src` ([rows][cols], host memory) as `dst`, converting through f32 when they differ.
// permute_head_dim > 0: row r of the output is source row gguf_row_source(r, permute_head_dim).
GgufWriter::TensorProducer convert_rows(const Tensor& src, DType dst, int64_t permute_head_dim) {
  return [src, dst, permute_head_dim](const GgufWriter::ByteSink& emit) -> Status {
    if (src.dtype == dst && permute_head_dim == 0) return emit(src.data, src.nbytes());
    const int64_t rows = src.rows(), cols = src.cols();
    const int64_t block = std::max<int64_t>(1, kChunkElems / cols);
    const size_t src_row = src.row_nbytes(), dst_row = row_bytes(dst, cols);
    std::vector<uint8_t> gathered(static_cast<size_t>(std::min(block, rows)) * src_row);
    std::vector<float> f32(static_cast<size_t>(std::min(block, rows) * cols));
    std::vector<uint8_t> out(static_cast<size_t>(std::min(block, rows)) * dst_row);
    const auto* in = static_cast<const uint8_t*>(src.data);
    for (int64_t r = 0; r < rows; r += block) {
      const int64_t n = std::min(block, rows - r);
      const uint8_t* rows_in = in + size_t(r) * src_row;
      if (permute_head_dim > 0) {
        for (int64_t i = 0; i < n; ++i) {
          std::memcpy(gathered.data() + size_t(i) * src_row,
                      in + size_t(gguf_row_source(r + i, permute_head_dim)) * src_row, src_row);
        }
        rows_in = gathered.data();
      }
      if (src.dtype == dst) {
        KVB_RETURN_IF_ERROR(emit(rows_in, size_t(n) * src_row));
        continue;
      }
      to_f32(src.dtype, rows_in, f32.data(), n * cols);
      from_f32(dst, f32.data(), out.data(), n * cols);
      KVB_RETURN_IF_ERROR(emit(out.data(), size_t(n) * dst_row));
    }
    return Status::Ok();
  };
}

}  // namespace

std::vector<LlamaTensorSlot> llama_tensor_slots(const ModelConfig& c) {
  const int64_t d = c.n_embd, q = c.n_embd_q(), kv = c.n_embd_kv(), ff = c.n_ff;
  std::vector<LlamaTensorSlot> s;
  s.reserve(4 + 14 * size_t(c.n_layer));
  s.push_back({"token_embd.weight", LlamaWeight::kTokEmbd, -1, c.n_vocab, d});
  s.push_back({"output_norm.weight", LlamaWeight::kOutputNorm, -1, 1, d});
  if (!c.tied_output) s.push_back({"output.weight", LlamaWeight::kOutput, -1, c.n_vocab, d});
  if (!c.rope_freq_factors.empty()) {
    s.push_back({"rope_freqs.weight", LlamaWeight::kRopeFreqs, -1, 1, int64_t(c.rope_freq_factors.size())});
  }
  for (int32_t i = 0; i < c.n_layer; ++i) {
    auto add = [&](const char* what, LlamaWeight w, int64_t rows, int64_t cols, const char* kind = "weight") {
      s.push_back({fmt::format("blk.{}.{}.{}", i, what, kind), w, i, rows, cols});
    };
    add("attn_q", LlamaWeight::kAttnQ, q, d);
    add("attn_k", LlamaWeight::kAttnK, kv, d);
    add("attn_v", LlamaWeight::kAttnV, kv, d);
    if (c.has_qkv_bias()) {
      add("attn_q", LlamaWeight::kAttnQBias, 1, q, "bias");
      add("attn_k", LlamaWeight::kAttnKBias, 1, kv, "bias");
      add("attn_v", LlamaWeight::kAttnVBias, 1, kv, "bias");
    }
    if (c.has_qk_norm()) {
      add("attn_q_norm", LlamaWeight::kAttnQNorm, 1, c.head_dim);
      add("attn_k_norm", LlamaWeight::kAttnKNorm, 1, c.head_dim);
    }
    add("attn_output", LlamaWeight::kAttnOutput, d, q);
    add("attn_norm", LlamaWeight::kAttnNorm, 1, d);
    add("ffn_gate", LlamaWeight::kFfnGate, ff, d);
    add("ffn_down", LlamaWeight::kFfnDown, d, ff);
    add("ffn_up", LlamaWeight::kFfnUp, ff, d);
    add("ffn_norm", LlamaWeight::kFfnNorm, 1, d);
  }
  return s;
}

const Tensor& llama_weight(const ModelWeights& w, const LlamaTensorSlot& slot) {
  switch (slot.weight) {
    case LlamaWeight::kTokEmbd: return w.tok_embd;
    case LlamaWeight::kOutputNorm: return w.output_norm;
    case LlamaWeight::kOutput: return w.output;
    case LlamaWeight::kRopeFreqs: KVB_ASSERT(false, "rope_freqs is in ModelConfig, not ModelWeights"); break;
    default: break;
  }
  KVB_ASSERT(slot.layer >= 0 && size_t(slot.layer) < w.layers.size(), "slot layer out of range");
  const LlamaLayerWeights& l = w.layers[size_t(slot.layer)];
  switch (slot.weight) {
    case LlamaWeight::kAttnQ: return l.wq;
    case LlamaWeight::kAttnK: return l.wk;
    case LlamaWeight::kAttnV: return l.wv;
    case LlamaWeight::kAttnOutput: return l.wo;
    case LlamaWeight::kAttnNorm: return l.attn_norm;
    case LlamaWeight::kFfnGate: return l.w_gate;
    case LlamaWeight::kFfnDown: return l.w_down;
    case LlamaWeight::kFfnUp: return l.w_up;
    case LlamaWeight::kFfnNorm: return l.ffn_norm;
    case LlamaWeight::kAttnQBias: return l.bias.q;
    case LlamaWeight::kAttnKBias: return l.bias.k;
    case LlamaWeight::kAttnVBias: return l.bias.v;
    case LlamaWeight::kAttnQNorm: return l.qk_norm.q;
    case LlamaWeight::kAttnKNorm: return l.qk_norm.k;
    default: break;
  }
  KVB_ASSERT(false, "unhandled LlamaWeight");
  return w.tok_embd;
}

Tensor& llama_weight(ModelWeights& w, const LlamaTensorSlot& slot) {
  return const_cast<Tensor&>(llama_weight(static_cast<const ModelWeights&>(w), slot));
}

Tensor slot_tensor(const Model& m, const LlamaTensorSlot& slot) {
  if (slot.weight != LlamaWeight::kRopeFreqs) return llama_weight(m.weights, slot);
  const std::vector<float>& f = m.config.rope_freq_factors;
  return Tensor::make(DType::kF32, const_cast<float*>(f.data()), {int64_t(f.size())});
}

bool gguf_permutes_rows(const ModelConfig& c, const LlamaTensorSlot& slot) {
  return c.arch == Arch::kLlama && c.rope.type == RopeType::kNeox &&
         (slot.weight == LlamaWeight::kAttnQ || slot.weight == LlamaWeight::kAttnK);
}

DType gguf_matrix_dtype(DType want, int64_t cols) {
  if (cols % dtype_block_size(want) != 0) return DType::kF16;
  return want;
}

uint32_t gguf_file_type(DType t) {
  switch (t) {
    // llama.cpp's llama_ftype; a K-quant names its "_M" mix, the file type its own quantizer writes.
    case DType::kF16: return 1;
    case DType::kQ4_0: return 2;
    case DType::kQ4_1: return 3;
    case DType::kQ8_0: return 7;
    case DType::kQ5_0: return 8;
    case DType::kQ5_1: return 9;
    case DType::kQ2_K: return 10;
    case DType::kQ3_K: return 12;
    case DType::kQ4_K: return 15;
    case DType::kQ5_K: return 17;
    case DType::kQ6_K: return 18;
    case DType::kBF16: return 32;
    default: return 0;
  }
}

DType gguf_file_dtype(const std::vector<LlamaTensorSlot>& slots, const std::vector<DType>& stored) {
  KVB_ASSERT(slots.size() == stored.size(), "one stored dtype per slot");
  std::vector<std::pair<DType, int64_t>> count;  // in first-seen order
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i].is_vector()) continue;
    auto it = std::find_if(count.begin(), count.end(), [&](const auto& c) { return c.first == stored[i]; });
    if (it == count.end()) it = count.insert(count.end(), {stored[i], 0});
    it->second += slots[i].rows * slots[i].cols;
  }
  DType best = DType::kF32;
  int64_t most = -1;
  for (const auto& [t, n] : count) {
    if (n > most) best = t, most = n;
  }
  return best;
}

std::string gguf_model_name(std::string_view path) {
  while (path.size() > 1 && path.back() == '/') path.remove_suffix(1);  // a model directory "dir/"
  const size_t slash = path.find_last_of('/');
  std::string_view name = slash == std::string_view::npos ? path : path.substr(slash + 1);
  for (std::string_view ext : {".gguf", ".bin"}) {
    if (name.size() > ext.size() && name.substr(name.size() - ext.size()) == ext) {
      name.remove_suffix(ext.size());
      break;
    }
  }
  return std::string(name);
}

void set_model_gguf_metadata(GgufWriter& w, const ModelConfig& c, const Vocab* vocab, const std::string& name,
                             DType matrix_dtype) {
  const std::string arch(arch_name(c.arch));
  const auto key = [&arch](std::string_view k) { return fmt::format("{}.{}", arch, k); };
  w.set_string("general.architecture", arch);
  w.set_string("general.name", name);
  w.set_u32("general.file_type", gguf_file_type(matrix_dtype));
  w.set_u32(key("context_length"), uint32_t(c.n_ctx_train));
  w.set_u32(key("embedding_length"), uint32_t(c.n_embd));
  w.set_u32(key("block_count"), uint32_t(c.n_layer));
  w.set_u32(key("feed_forward_length"), uint32_t(c.n_ff));
  w.set_u32(key("attention.head_count"), uint32_t(c.n_head));
  w.set_u32(key("attention.head_count_kv"), uint32_t(c.n_head_kv));
  w.set_f32(key("attention.layer_norm_rms_epsilon"), c.norm_eps);
  w.set_f32(key("rope.freq_base"), c.rope.theta_base);
  w.set_u32(key("rope.dimension_count"), uint32_t(c.rope.n_rot));
  if (c.rope.freq_scale != 1.0f) {
    w.set_string(key("rope.scaling.type"), "linear");
    w.set_f32(key("rope.scaling.factor"), 1.0f / c.rope.freq_scale);
  }
  if (c.head_dim * c.n_head != c.n_embd) {
    w.set_u32(key("attention.key_length"), uint32_t(c.head_dim));
    w.set_u32(key("attention.value_length"), uint32_t(c.head_dim));
  }
  if (!vocab) return;
  const Vocab& v = *vocab;
  const bool bpe = v.model == Vocab::Model::kBpe;
  w.set_string("tokenizer.ggml.model", bpe ? "gpt2" : "llama");
  // Vocab::pre says "gpt2" where llama.cpp spells the GPT-2 pre-tokenizer "gpt-2"; the others agree.
  if (bpe) w.set_string("tokenizer.ggml.pre", v.pre.empty() || v.pre == "gpt2" ? "gpt-2" : v.pre);
  w.set_string_array("tokenizer.ggml.tokens", v.pieces);
  if (!bpe) w.set_f32_array("tokenizer.ggml.scores", v.scores);
  std::vector<int32_t> types(v.types.size());
  std::transform(v.types.begin(), v.types.end(), types.begin(), [](TokenType t) { return int32_t(t); });
  w.set_i32_array("tokenizer.ggml.token_type", std::move(types));
  if (bpe) w.set_string_array("tokenizer.ggml.merges", v.merges);
  if (v.bos >= 0) w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(v.bos));
  if (v.eos >= 0) w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(v.eos));
  if (v.unk >= 0) w.set_u32("tokenizer.ggml.unknown_token_id", uint32_t(v.unk));
  if (v.pad >= 0) w.set_u32("tokenizer.ggml.padding_token_id", uint32_t(v.pad));
  w.set_bool("tokenizer.ggml.add_bos_token", v.add_bos);
  w.set_bool("tokenizer.ggml.add_eos_token", v.add_eos);
  if (!bpe) w.set_bool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
  if (!v.chat_template.empty()) w.set_string("tokenizer.chat_template", v.chat_template);
}

Status write_model_gguf(const Model& m, const std::string& path, std::optional<DType> matrix_dtype,
                        const ExportProgress& progress) {
  if (matrix_dtype && !(storable(*matrix_dtype) && (!dtype_is_quantized(*matrix_dtype) || can_quantize(*matrix_dtype)))) {
    return invalid_argument(fmt::format(
        "cannot export matrices as {} (supported: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1)", dtype_name(*matrix_dtype)));
  }
  const ModelConfig& c = m.config;
  KVB_RETURN_IF_ERROR(c.validate().with_context("exporting " + m.path));
  if (c.arch != Arch::kLlama && c.rope.type != RopeType::kNeox) {
    return invalid_argument(fmt::format("exporting {}: a {} model must use NeoX RoPE", m.path, arch_name(c.arch)));
  }
  if (m.weights.layers.size() != size_t(c.n_layer)) {
    return invalid_argument(fmt::format("exporting {}: {} layers of weights for n_layer {}", m.path,
                                        m.weights.layers.size(), c.n_layer));
  }
  const std::vector<LlamaTensorSlot> slots = llama_tensor_slots(c);
  uint64_t total_bytes = 0;
  std::vector<Tensor> sources;
  std::vector<DType> stored;
  for (const LlamaTensorSlot& s : slots) {
    const Tensor t = slot_tensor(m, s);
    if (!t.data || t.numel() != s.rows * s.cols || t.cols() != s.cols || !storable(t.dtype)) {
      return invalid_argument(fmt::format("exporting {}: tensor '{}' is {}, expected [{}][{}]", m.path, s.name,
                                          t.describe(), s.rows, s.cols));
    }
    const DType dst = s.is_vector() ? DType::kF32 : gguf_matrix_dtype(matrix_dtype.value_or(t.dtype), s.cols);
    sources.push_back(t);
    stored.push_back(dst);
    total_bytes += uint64_t(s.rows) * row_bytes(dst, s.cols);
  }

  GgufWriter w;
  const Vocab* vocab = m.tokenizer ? &m.tokenizer->vocab() : nullptr;
  set_model_gguf_metadata(w, c, vocab, gguf_model_name(m.path), gguf_file_dtype(slots, stored));

  // Progress is reported from inside write(), after each producer finishes.
  auto done = std::make_shared<std::pair<size_t, uint64_t>>(0, 0);
  for (size_t i = 0; i < slots.size(); ++i) {
    const DType dst = stored[i];
    const uint64_t nbytes = uint64_t(slots[i].rows) * row_bytes(dst, slots[i].cols);
    GgufWriter::TensorProducer produce =
        convert_rows(sources[i], dst, gguf_permutes_rows(c, slots[i]) ? c.head_dim : 0);
    if (progress) {
      produce = [produce, done, nbytes, total_bytes, n = slots.size(), &progress](const GgufWriter::ByteSink& emit) {
        KVB_RETURN_IF_ERROR(produce(emit));
        done->first += 1;
        done->second += nbytes;
        progress(done->first, n, done->second, total_bytes);
        return Status::Ok();
      };
    }
    KVB_RETURN_IF_ERROR(w.add_tensor_stream(slots[i].name, dst, slots[i].ne(), std::move(produce)));
  }
  return w.write(path).with_context("exporting " + m.path);
}

}  // namespace kvb
