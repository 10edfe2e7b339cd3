#include "engine/forward.h"

#include "engine/forward_impl.h"

#include <fmt/format.h>

#include <chrono>
#include <cmath>

namespace kvb {

namespace {

// A [rows][cols] table of any weight dtype as F16 in `storage` (which the result points into).
Tensor widen_to_f16(const Tensor& table, std::vector<uint16_t>& storage) {
  storage.resize(size_t(table.numel()));
  std::vector<float> row(size_t(table.cols()));
  for (int64_t i = 0; i < table.rows(); ++i) {
    to_f32(table.dtype, static_cast<const uint8_t*>(table.data) + size_t(i) * table.row_nbytes(), row.data(),
           table.cols());
    for (int64_t j = 0; j < table.cols(); ++j) storage[size_t(i * table.cols() + j)] = fp32_to_fp16(row[size_t(j)]);
  }
  return Tensor::make(DType::kF16, storage.data(), {table.rows(), table.cols()});
}

}  // namespace

ModelRunner::ModelRunner(const Model& model, Backend& backend, const RunnerOptions& opt)
    : model_(model), backend_(backend), opt_(opt), impl_(std::make_unique<Impl>()) {}

ModelRunner::~ModelRunner() = default;

Result<std::unique_ptr<ModelRunner>> ModelRunner::create(const Model& model, Backend& backend,
                                                         const RunnerOptions& opt) {
  if (opt.n_batch <= 0) return invalid_argument("n_batch must be > 0");
  std::unique_ptr<ModelRunner> r(new ModelRunner(model, backend, opt));
  Impl& im = *r->impl_;
  const ModelConfig& c = model.config;
  const BufferType& bt = backend.device().buffer_type();

  // Host tensors the device reads directly (norms, embedding table): zero-copy on a host backend.
  auto to_device = [&](const Tensor& host) -> Result<Tensor> {
    if (bt.is_host()) return host;
    KVB_ASSIGN_OR_RETURN(auto buf, bt.alloc(host.nbytes()));
    KVB_RETURN_IF_ERROR(buf->set(0, host.data, host.nbytes()));
    Tensor t = host;
    t.data = buf->data();
    im.buffers.push_back(std::move(buf));
    return t;
  };
  auto upload = [&](const Tensor& w, const char* what, int32_t layer) -> Result<std::unique_ptr<Weight>> {
    auto up = backend.upload_weight(w);
    if (!up.ok()) return up.status().with_context(fmt::format("uploading layer {} {}", layer, what));
    return up;
  };

  im.layers.resize(size_t(c.n_layer));
  for (int32_t i = 0; i < c.n_layer; ++i) {
    const LlamaLayerWeights& lw = model.weights.layers[size_t(i)];
    // The arch's extensions must be there (a loader's job; checked so a hand-built Model cannot crash).
    const bool has_bias = lw.bias.q.data && lw.bias.k.data && lw.bias.v.data;
    const bool has_norm = lw.qk_norm.q.data && lw.qk_norm.k.data;
    if ((c.has_qkv_bias() && !has_bias) || (c.has_qk_norm() && !has_norm)) {
      return invalid_argument(fmt::format("layer {}: the {} model lacks its {}", i, arch_name(c.arch),
                                          c.has_qkv_bias() ? "Q/K/V biases" : "Q/K norms"));
    }
    LayerOnDevice& l = im.layers[size_t(i)];
    KVB_ASSIGN_OR_RETURN(l.wq, upload(lw.wq, "wq", i));
    KVB_ASSIGN_OR_RETURN(l.wk, upload(lw.wk, "wk", i));
    KVB_ASSIGN_OR_RETURN(l.wv, upload(lw.wv, "wv", i));
    KVB_ASSIGN_OR_RETURN(l.wo, upload(lw.wo, "wo", i));
    KVB_ASSIGN_OR_RETURN(l.w_gate, upload(lw.w_gate, "ffn_gate", i));
    KVB_ASSIGN_OR_RETURN(l.w_up, upload(lw.w_up, "ffn_up", i));
    KVB_ASSIGN_OR_RETURN(l.w_down, upload(lw.w_down, "ffn_down", i));
    KVB_ASSIGN_OR_RETURN(l.attn_norm, to_device(lw.attn_norm));
    KVB_ASSIGN_OR_RETURN(l.ffn_norm, to_device(lw.ffn_norm));
    if (c.has_qkv_bias()) {
      KVB_ASSIGN_OR_RETURN(l.bq, to_device(lw.bias.q));
      KVB_ASSIGN_OR_RETURN(l.bk, to_device(lw.bias.k));
      KVB_ASSIGN_OR_RETURN(l.bv, to_device(lw.bias.v));
    }
    if (c.has_qk_norm()) {
      KVB_ASSIGN_OR_RETURN(l.q_norm, to_device(lw.qk_norm.q));
      KVB_ASSIGN_OR_RETURN(l.k_norm, to_device(lw.qk_norm.k));
    }
  }
  im.rope = c.rope;
  if (!c.rope_freq_factors.empty()) {
    const Tensor host = Tensor::make(DType::kF32, const_cast<float*>(c.rope_freq_factors.data()),
                                     {int64_t(c.rope_freq_factors.size())});
    KVB_ASSIGN_OR_RETURN(im.rope.freq_factors, to_device(host));
  }
  KVB_ASSIGN_OR_RETURN(im.output, upload(model.weights.output, "output", -1));
  // A device backend reads GGUF block tables (Q4_0 ... Q6_K) as F16, widened here once.
  std::vector<uint16_t> widened;
  Tensor table = model.weights.tok_embd;
  if (!bt.is_host() && !backend.device().supports_op(OpKind::kEmbedding, table.dtype)) {
    table = widen_to_f16(table, widened);
  }
  KVB_ASSIGN_OR_RETURN(im.tok_embd, to_device(table));
  KVB_ASSIGN_OR_RETURN(im.output_norm, to_device(model.weights.output_norm));

  // One scratch buffer carved into the per-ubatch activations.
  const int64_t nb = opt.n_batch;
  const int64_t widths[] = {c.n_embd, c.n_embd, c.n_embd_q(), c.n_embd_kv(), c.n_embd_kv(),
                            c.n_embd_q(), c.n_ff, c.n_ff};
  size_t total = 2 * size_t(nb) * 4;  // tokens and positions
  for (int64_t wdt : widths) total += size_t(nb * wdt) * 4 + 64;
  KVB_ASSIGN_OR_RETURN(auto scratch, bt.alloc(total));
  char* p = static_cast<char*>(scratch->data());
  auto carve = [&p](DType t, int64_t rows, int64_t cols) {
    Tensor x = Tensor::make(t, p, {rows, cols});
    p += (x.nbytes() + 63) / 64 * 64;
    return x;
  };
  im.x = carve(DType::kF32, nb, c.n_embd);
  im.xb = carve(DType::kF32, nb, c.n_embd);
  im.q = carve(DType::kF32, nb, c.n_embd_q());
  im.k_new = carve(DType::kF32, nb, c.n_embd_kv());
  im.v_new = carve(DType::kF32, nb, c.n_embd_kv());
  im.att = carve(DType::kF32, nb, c.n_embd_q());
  im.hb = carve(DType::kF32, nb, c.n_ff);
  im.hb2 = carve(DType::kF32, nb, c.n_ff);
  im.tokens = carve(DType::kI32, 1, nb);
  im.pos = carve(DType::kI32, 1, nb);
  im.tokens = Tensor::make(DType::kI32, im.tokens.data, {nb});
  im.pos = Tensor::make(DType::kI32, im.pos.data, {nb});
  im.buffers.push_back(std::move(scratch));
  return r;
}

KvLayout ModelRunner::kv_layout(DType dtype) const {
  const ModelConfig& c = model_.config;
  return KvLayout{c.n_layer, c.n_head_kv, c.head_dim, dtype};
}

Result<std::unique_ptr<KvCache>> ModelRunner::new_cache(int32_t n_ctx, DType dtype) const {
  return KvCache::create(backend_.device().buffer_type(), kv_layout(dtype),
                         n_ctx > 0 ? n_ctx : model_.config.n_ctx_train);
}

Status ModelRunner::forward(KvCache& cache, std::span<const int32_t> tokens, std::span<float> logits,
                            bool all_logits) {
  const ModelConfig& c = model_.config;
  if (tokens.empty()) return invalid_argument("forward: no tokens");
  if (cache.layout() != kv_layout(cache.layout().dtype)) {
    return invalid_argument("forward: the cache's layout does not match this model");
  }
  const size_t want = (all_logits ? tokens.size() : 1) * size_t(c.n_vocab);
  if (logits.size() != want) {
    return invalid_argument(fmt::format("forward: logits span has {} floats, expected {}", logits.size(), want));
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= c.n_vocab) return invalid_argument(fmt::format("token id {} outside [0, {})", t, c.n_vocab));
  }
  // Check capacity for the whole input up front, so a long prompt fails before any work.
  KVB_RETURN_IF_ERROR(cache.plan_append(int32_t(tokens.size())).status());

  const int32_t n_before = cache.n_tokens();
  for (size_t begin = 0; begin < tokens.size(); begin += size_t(opt_.n_batch)) {
    const size_t n = std::min(tokens.size() - begin, size_t(opt_.n_batch));
    const bool last = begin + n == tokens.size();
    float* out = all_logits ? logits.data() + begin * size_t(c.n_vocab) : (last ? logits.data() : nullptr);
    Status s = forward_ubatch(cache, tokens.subspan(begin, n), out, all_logits);
    if (!s.ok()) {
      (void)cache.truncate(n_before);  // earlier ubatches were committed: roll them back
      return s;
    }
  }
  return Status::Ok();
}

// One ubatch: the token and position uploads, the ops (enqueue_ubatch), then the logits.
//
// A decode step (one token) runs as one op graph where the backend records them (CUDA graphs):
// a small model's step is ~10 short kernels per layer, and launching them one by one, not memory
// bandwidth, bounds it. The uploads and the logits download stay outside the recording (host
// copies cannot be recorded). Each step is recorded anew, with its own n_kv, cells and scratch,
// and the backend updates its one graph instance in place, so nothing in the ops has to read its
// shape from device memory and sessions may interleave freely. A recording that fails (scratch
// that has to grow) runs the step op by op instead; after kMaxGraphFailuresInRow failures in a row
// the runner stops trying.
Status ModelRunner::forward_ubatch(KvCache& cache, std::span<const int32_t> tokens, float* logits_out,
                                   bool all_logits) {
  const ModelConfig& c = model_.config;
  Impl& im = *impl_;
  Backend& b = backend_;
  const int64_t n = int64_t(tokens.size());
  KVB_ASSIGN_OR_RETURN(const KvPlan plan, cache.plan_append(int32_t(n)));
  // Logit rows returned: every row, the last one, or none (an inner ubatch).
  const int64_t logit_rows = logits_out == nullptr ? 0 : all_logits ? n : 1;
  KVB_RETURN_IF_ERROR(im.reserve_logits(b, logit_rows, c.n_vocab));
  std::vector<int32_t> positions(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) positions[size_t(i)] = plan.first_pos + int32_t(i);
  {
    OpTimer timer(b, opt_.profile ? &profile_.other_s : nullptr);
    KVB_RETURN_IF_ERROR(b.copy_from_host(im.tokens.data, tokens.data(), size_t(n) * 4));
    KVB_RETURN_IF_ERROR(b.copy_from_host(im.pos.data, positions.data(), size_t(n) * 4));
  }
  if (!graph_step(cache, plan, n, logit_rows)) KVB_RETURN_IF_ERROR(enqueue_ubatch(cache, plan, n, logit_rows));
  cache.commit_append(plan, tokens);
  if (logit_rows == 0) return Status::Ok();
  KVB_RETURN_IF_ERROR(b.copy_to_host(logits_out, im.logits.data, size_t(logit_rows * c.n_vocab) * 4));
  return b.synchronize();
}

bool ModelRunner::graph_step(KvCache& cache, const KvPlan& plan, int64_t n, int64_t logit_rows) {
  // One token with its logits: the step ends with a synchronize, so the graph instance the next
  // step updates is never still running.
  if (n != 1 || logit_rows != 1) return false;
  return run_as_graph([&] { return enqueue_ubatch(cache, plan, n, logit_rows); });
}

// The ops of one ubatch whose tokens and positions are uploaded (rows [0, n) of im.tokens and
// im.pos): embedding, the layers (writing the plan's cells), and for the last logit_rows rows the
// final norm and classifier into im.logits. Enqueues only: no host copy, no synchronize (so that
// graph_step can record it).
Status ModelRunner::enqueue_ubatch(KvCache& cache, const KvPlan& plan, int64_t n, int64_t logit_rows) {
  const ModelConfig& c = model_.config;
  Impl& im = *impl_;
  Backend& b = backend_;
  const bool f32_cache = cache.layout().dtype == DType::kF32;
  double* t_mm = opt_.profile ? &profile_.matmul_s : nullptr;
  double* t_att = opt_.profile ? &profile_.attention_s : nullptr;
  double* t_other = opt_.profile ? &profile_.other_s : nullptr;

  // Rows of this ubatch, as [n][...] views of the scratch.
  const Tensor x = im.x.slice_rows(0, n), xb = im.xb.slice_rows(0, n), q = im.q.slice_rows(0, n);
  const Tensor att = im.att.slice_rows(0, n), hb = im.hb.slice_rows(0, n), hb2 = im.hb2.slice_rows(0, n);
  const Tensor tok = im.tokens.slice_rows(0, n), pos = im.pos.slice_rows(0, n);
  {
    OpTimer timer(b, t_other);
    // Token embedding: x = tok_embd[tokens].
    KVB_RETURN_IF_ERROR(b.embedding(im.tok_embd, tok, x));
  }

  const float scale = 1.0f / std::sqrt(float(c.head_dim));
  for (int32_t l = 0; l < c.n_layer; ++l) {
    const LayerOnDevice& lw = im.layers[size_t(l)];
    // Rows [r0, n) are carried through the whole layer; the others only produce their K/V. Every
    // layer but the last needs all rows. In the last one, a row's output feeds nothing but its own
    // logits, so only the rows whose logits are returned go on (none for an inner ubatch).
    const bool last_layer = l + 1 == c.n_layer;
    const int64_t r0 = last_layer ? n - logit_rows : 0;
    const int64_t nr = n - r0;
    auto rows = [r0, nr](const Tensor& t) { return t.slice_rows(r0, nr); };
    // This ubatch's cells of the layer cache; an f32 cache is written in place by the projections.
    const Tensor k_cells = cache.k(l).slice_rows(plan.first_cell, n);
    const Tensor v_cells = cache.v(l).slice_rows(plan.first_cell, n);
    const Tensor k_new = f32_cache ? Tensor::make(DType::kF32, k_cells.data, {n, c.n_embd_kv()})
                                   : im.k_new.slice_rows(0, n);
    const Tensor v_new = f32_cache ? Tensor::make(DType::kF32, v_cells.data, {n, c.n_embd_kv()})
                                   : im.v_new.slice_rows(0, n);

    // Attention norm, then Q/K/V in one dispatch (Q only for the carried rows).
    {
      OpTimer timer(b, t_other);
      KVB_RETURN_IF_ERROR(b.rms_norm(x, lw.attn_norm, c.norm_eps, xb));
    }
    {
      OpTimer timer(b, t_mm);
      if (r0 == 0) {
        const MatmulOut qkv[] = {{lw.wq.get(), q, false}, {lw.wk.get(), k_new, false}, {lw.wv.get(), v_new, false}};
        KVB_RETURN_IF_ERROR(b.matmul(xb, qkv));
      } else {
        const MatmulOut kv[] = {{lw.wk.get(), k_new, false}, {lw.wv.get(), v_new, false}};
        KVB_RETURN_IF_ERROR(b.matmul(xb, kv));
        if (nr > 0) KVB_RETURN_IF_ERROR(b.matmul(rows(xb), *lw.wq, rows(q)));
      }
    }
    // Qwen2: Q/K/V biases (one row broadcast over the tokens). Qwen3: RMSNorm of each query and
    // key head. Both come before RoPE.
    if (c.has_qkv_bias()) {
      OpTimer timer(b, t_other);
      if (nr > 0) KVB_RETURN_IF_ERROR(b.add(rows(q), lw.bq, rows(q)));
      KVB_RETURN_IF_ERROR(b.add(k_new, lw.bk, k_new));
      KVB_RETURN_IF_ERROR(b.add(v_new, lw.bv, v_new));
    }
    if (c.has_qk_norm()) {
      OpTimer timer(b, t_other);
      if (nr > 0) {
        const Tensor qh = head_rows_view(rows(q), c.n_head, c.head_dim);
        KVB_RETURN_IF_ERROR(b.rms_norm(qh, lw.q_norm, c.norm_eps, qh));
      }
      const Tensor kh = head_rows_view(k_new, c.n_head_kv, c.head_dim);
      KVB_RETURN_IF_ERROR(b.rms_norm(kh, lw.k_norm, c.norm_eps, kh));
    }
    // RoPE on queries and keys; keys are cached post-RoPE.
    {
      OpTimer timer(b, t_other);
      if (nr > 0) KVB_RETURN_IF_ERROR(b.rope(head_view(rows(q), c.n_head, c.head_dim), rows(pos), im.rope));
      KVB_RETURN_IF_ERROR(b.rope(head_view(k_new, c.n_head_kv, c.head_dim), pos, im.rope));
      if (!f32_cache) {
        KVB_RETURN_IF_ERROR(b.convert(k_new, k_cells));
        KVB_RETURN_IF_ERROR(b.convert(v_new, v_cells));
      }
    }
    if (nr == 0) break;  // the last layer of an inner ubatch: its K/V are all that is needed
    // Causal attention of the carried rows over cells [0, first_cell + n): the last query row sees
    // them all.
    {
      OpTimer timer(b, t_att);
      const int64_t n_kv = plan.first_cell + n;
      KVB_RETURN_IF_ERROR(b.attention(head_view(rows(q), c.n_head, c.head_dim), cache.k(l).slice_rows(0, n_kv),
                                      cache.v(l).slice_rows(0, n_kv), head_view(rows(att), c.n_head, c.head_dim),
                                      scale));
    }
    // Output projection, accumulated into the residual stream.
    {
      OpTimer timer(b, t_mm);
      KVB_RETURN_IF_ERROR(b.matmul(rows(att), *lw.wo, rows(x), /*accumulate=*/true));
    }
    // FFN: x += down(silu(gate(xb)) * up(xb)), xb = rms_norm(x).
    {
      OpTimer timer(b, t_other);
      KVB_RETURN_IF_ERROR(b.rms_norm(rows(x), lw.ffn_norm, c.norm_eps, rows(xb)));
    }
    {
      OpTimer timer(b, t_mm);
      const MatmulOut gate_up[] = {{lw.w_gate.get(), rows(hb), false}, {lw.w_up.get(), rows(hb2), false}};
      KVB_RETURN_IF_ERROR(b.matmul(rows(xb), gate_up));
    }
    {
      OpTimer timer(b, t_other);
      KVB_RETURN_IF_ERROR(b.silu_mul(rows(hb), rows(hb2), rows(hb)));
    }
    {
      OpTimer timer(b, t_mm);
      KVB_RETURN_IF_ERROR(b.matmul(rows(hb), *lw.w_down, rows(x), /*accumulate=*/true));
    }
  }
  if (logit_rows == 0) return Status::Ok();

  // Final norm and classifier, for the returned rows.
  const int64_t first = n - logit_rows;
  const Tensor logits = im.logits.slice_rows(0, logit_rows);
  {
    OpTimer timer(b, t_other);
    KVB_RETURN_IF_ERROR(
        b.rms_norm(x.slice_rows(first, logit_rows), im.output_norm, c.norm_eps, xb.slice_rows(0, logit_rows)));
  }
  OpTimer timer(b, t_mm);
  return b.matmul(xb.slice_rows(0, logit_rows), *im.output, logits);
}

}  // namespace kvb
