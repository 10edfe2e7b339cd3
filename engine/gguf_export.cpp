// Model → llama GGUF v3: metadata from ModelConfig and Vocab, tensors streamed row block by block.
#include "engine/gguf_export.h"

#include <fmt/format.h>

#include <algorithm>
#include <memory>

namespace kvb {

namespace {

// Elements converted per step when a tensor changes dtype: bounds the scratch to ~8 MiB.
constexpr int64_t kChunkElems = int64_t(1) << 20;

bool storable(DType t) {
  return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kQ8_0;
}

// Streams `src` ([rows][cols], host memory) as `dst`, converting through f32 when they differ.
GgufWriter::TensorProducer convert_rows(const Tensor& src, DType dst) {
  return [src, dst](const GgufWriter::ByteSink& emit) -> Status {
    if (src.dtype == dst) return emit(src.data, src.nbytes());
    const int64_t rows = src.rows(), cols = src.cols();
    const int64_t block = std::max<int64_t>(1, kChunkElems / cols);
    std::vector<float> f32(static_cast<size_t>(std::min(block, rows) * cols));
    std::vector<uint8_t> out(static_cast<size_t>(std::min(block, rows)) * row_bytes(dst, cols));
    const auto* in = static_cast<const uint8_t*>(src.data);
    for (int64_t r = 0; r < rows; r += block) {
      const int64_t n = std::min(block, rows - r);
      to_f32(src.dtype, in + size_t(r) * src.row_nbytes(), f32.data(), n * cols);
      from_f32(dst, f32.data(), out.data(), n * cols);
      KVB_RETURN_IF_ERROR(emit(out.data(), size_t(n) * row_bytes(dst, cols)));
    }
    return Status::Ok();
  };
}

}  // namespace

std::vector<LlamaTensorSlot> llama_tensor_slots(const ModelConfig& c) {
  const int64_t d = c.n_embd, q = c.n_embd_q(), kv = c.n_embd_kv(), ff = c.n_ff;
  std::vector<LlamaTensorSlot> s;
  s.reserve(3 + 9 * size_t(c.n_layer));
  s.push_back({"token_embd.weight", LlamaWeight::kTokEmbd, -1, c.n_vocab, d});
  s.push_back({"output_norm.weight", LlamaWeight::kOutputNorm, -1, 1, d});
  if (!c.tied_output) s.push_back({"output.weight", LlamaWeight::kOutput, -1, c.n_vocab, d});
  for (int32_t i = 0; i < c.n_layer; ++i) {
    auto add = [&](const char* what, LlamaWeight w, int64_t rows, int64_t cols) {
      s.push_back({fmt::format("blk.{}.{}.weight", i, what), w, i, rows, cols});
    };
    add("attn_q", LlamaWeight::kAttnQ, q, d);
    add("attn_k", LlamaWeight::kAttnK, kv, d);
    add("attn_v", LlamaWeight::kAttnV, kv, d);
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
    default: break;
  }
  KVB_ASSERT(false, "unhandled LlamaWeight");
  return w.tok_embd;
}

Tensor& llama_weight(ModelWeights& w, const LlamaTensorSlot& slot) {
  return const_cast<Tensor&>(llama_weight(static_cast<const ModelWeights&>(w), slot));
}

DType gguf_matrix_dtype(DType want, int64_t cols) {
  if (want == DType::kQ8_0 && cols % kQ8BlockSize != 0) return DType::kF16;
  return want;
}

uint32_t gguf_file_type(DType t) {
  switch (t) {
    case DType::kF16: return 1;
    case DType::kQ8_0: return 7;
    case DType::kBF16: return 32;
    default: return 0;
  }
}

DType gguf_file_dtype(const std::vector<LlamaTensorSlot>& slots, const std::vector<DType>& stored) {
  KVB_ASSERT(slots.size() == stored.size(), "one stored dtype per slot");
  std::vector<std::pair<DType, int64_t>> count;  // in first-seen order
  for (size_t i = 0; i < slots.size(); ++i) {
    if (slots[i].is_norm()) continue;
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

void set_llama_gguf_metadata(GgufWriter& w, const ModelConfig& c, const Vocab* vocab, const std::string& name,
                             DType matrix_dtype) {
  w.set_string("general.architecture", "llama");
  w.set_string("general.name", name);
  w.set_u32("general.file_type", gguf_file_type(matrix_dtype));
  w.set_u32("llama.context_length", uint32_t(c.n_ctx_train));
  w.set_u32("llama.embedding_length", uint32_t(c.n_embd));
  w.set_u32("llama.block_count", uint32_t(c.n_layer));
  w.set_u32("llama.feed_forward_length", uint32_t(c.n_ff));
  w.set_u32("llama.attention.head_count", uint32_t(c.n_head));
  w.set_u32("llama.attention.head_count_kv", uint32_t(c.n_head_kv));
  w.set_f32("llama.attention.layer_norm_rms_epsilon", c.norm_eps);
  w.set_f32("llama.rope.freq_base", c.rope.theta_base);
  w.set_u32("llama.rope.dimension_count", uint32_t(c.rope.n_rot));
  if (c.head_dim * c.n_head != c.n_embd) {
    w.set_u32("llama.attention.key_length", uint32_t(c.head_dim));
    w.set_u32("llama.attention.value_length", uint32_t(c.head_dim));
  }
  if (!vocab) return;
  const Vocab& v = *vocab;
  w.set_string("tokenizer.ggml.model", "llama");
  w.set_string_array("tokenizer.ggml.tokens", v.pieces);
  w.set_f32_array("tokenizer.ggml.scores", v.scores);
  std::vector<int32_t> types(v.types.size());
  std::transform(v.types.begin(), v.types.end(), types.begin(), [](TokenType t) { return int32_t(t); });
  w.set_i32_array("tokenizer.ggml.token_type", std::move(types));
  if (v.bos >= 0) w.set_u32("tokenizer.ggml.bos_token_id", uint32_t(v.bos));
  if (v.eos >= 0) w.set_u32("tokenizer.ggml.eos_token_id", uint32_t(v.eos));
  if (v.unk >= 0) w.set_u32("tokenizer.ggml.unknown_token_id", uint32_t(v.unk));
  if (v.pad >= 0) w.set_u32("tokenizer.ggml.padding_token_id", uint32_t(v.pad));
  w.set_bool("tokenizer.ggml.add_bos_token", v.add_bos);
  w.set_bool("tokenizer.ggml.add_eos_token", v.add_eos);
  w.set_bool("tokenizer.ggml.add_space_prefix", v.add_space_prefix);
}

Status write_model_gguf(const Model& m, const std::string& path, std::optional<DType> matrix_dtype,
                        const ExportProgress& progress) {
  if (matrix_dtype && !storable(*matrix_dtype)) {
    return invalid_argument(fmt::format("cannot export matrices as {} (supported: f32, f16, bf16, q8_0)",
                                        dtype_name(*matrix_dtype)));
  }
  const ModelConfig& c = m.config;
  KVB_RETURN_IF_ERROR(c.validate().with_context("exporting " + m.path));
  if (m.weights.layers.size() != size_t(c.n_layer)) {
    return invalid_argument(fmt::format("exporting {}: {} layers of weights for n_layer {}", m.path,
                                        m.weights.layers.size(), c.n_layer));
  }
  const std::vector<LlamaTensorSlot> slots = llama_tensor_slots(c);
  uint64_t total_bytes = 0;
  std::vector<Tensor> sources;
  std::vector<DType> stored;
  for (const LlamaTensorSlot& s : slots) {
    const Tensor& t = llama_weight(m.weights, s);
    if (!t.data || t.numel() != s.rows * s.cols || t.cols() != s.cols || !storable(t.dtype)) {
      return invalid_argument(fmt::format("exporting {}: tensor '{}' is {}, expected [{}][{}]", m.path, s.name,
                                          t.describe(), s.rows, s.cols));
    }
    const DType dst = s.is_norm() ? DType::kF32 : gguf_matrix_dtype(matrix_dtype.value_or(t.dtype), s.cols);
    sources.push_back(t);
    stored.push_back(dst);
    total_bytes += uint64_t(s.rows) * row_bytes(dst, s.cols);
  }

  GgufWriter w;
  const Vocab* vocab = m.tokenizer ? &m.tokenizer->vocab() : nullptr;
  set_llama_gguf_metadata(w, c, vocab, gguf_model_name(m.path), gguf_file_dtype(slots, stored));

  // Progress is reported from inside write(), after each producer finishes.
  auto done = std::make_shared<std::pair<size_t, uint64_t>>(0, 0);
  for (size_t i = 0; i < slots.size(); ++i) {
    const DType dst = stored[i];
    const uint64_t nbytes = uint64_t(slots[i].rows) * row_bytes(dst, slots[i].cols);
    GgufWriter::TensorProducer produce = convert_rows(sources[i], dst);
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
