// ModelRunner::forward_batch: one forward over the tokens of several sequences (continuous
// batching). The layer is engine/forward.cpp's, with three differences:
//   - rows belong to different caches: K/V are projected into scratch, rotated there, then copied
//     (or converted to f16) into each sequence's cells;
//   - attention runs once per sequence, over that sequence's cells only;
//   - every projection is two matmuls per weight group: the prompt rows with RowMode::kPrefill, the
//     decode rows with RowMode::kDecode, so that a row's bits never depend on its neighbours (one
//     matmul for all rows when the weights are Weight::mode_invariant: the CPU's, Q8_0 excepted).
// Rows are laid out prompt sequences first, then decode sequences, each sequence's rows together.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "engine/forward.h"
#include "engine/forward_impl.h"

namespace kvb {

struct ModelRunner::BatchPlan {
  struct Seq {
    KvCache* cache = nullptr;
    std::span<const std::shared_ptr<const KvCache>> prefix;
    std::span<const int32_t> tokens;
    float* logits = nullptr;
    bool decode = false;
    KvPlan plan;
    int64_t row0 = 0;        // first row of the ubatch
    int64_t logit_row = -1;  // row of the logits scratch, or -1
  };
  std::vector<Seq> seqs;  // prompt sequences first, then decode ones
  int64_t n = 0;          // rows in all
  int64_t n_prompt = 0;   // rows [0, n_prompt) are prompt rows, the rest decode rows
  int64_t n_logits = 0;
};

Status ModelRunner::check_batch(std::span<const SeqStep> seqs, BatchPlan& bp) const {
  const ModelConfig& c = model_.config;
  if (seqs.empty()) return invalid_argument("forward_batch: no sequences");
  int64_t total = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    const SeqStep& s = seqs[i];
    if (s.cache == nullptr || s.tokens.empty()) {
      return invalid_argument(fmt::format("forward_batch: sequence {} has no cache or no tokens", i));
    }
    if (s.decode && s.tokens.size() != 1) {
      return invalid_argument(fmt::format("forward_batch: decode sequence {} has {} tokens", i, s.tokens.size()));
    }
    if (s.cache->layout() != kv_layout(s.cache->layout().dtype)) {
      return invalid_argument(fmt::format("forward_batch: sequence {}'s cache does not match this model", i));
    }
    int32_t pos = 0;
    for (const auto& block : s.prefix) {
      const bool fits = block != nullptr && block->layout() == s.cache->layout() && block->pos0() == pos;
      if (!fits) return invalid_argument(fmt::format("forward_batch: sequence {}'s prefix blocks do not fit", i));
      pos += block->n_tokens();
    }
    if (!s.prefix.empty() && s.cache->pos0() != pos) {
      return invalid_argument(fmt::format("forward_batch: sequence {}'s cache starts at position {}, its prefix ends "
                                          "at {}",
                                          i, s.cache->pos0(), pos));
    }
    for (size_t j = 0; j < i; ++j) {
      if (seqs[j].cache == s.cache) return invalid_argument(fmt::format("forward_batch: a cache twice ({}, {})", j, i));
    }
    for (int32_t t : s.tokens) {
      if (t < 0 || t >= c.n_vocab) return invalid_argument(fmt::format("token id {} outside [0, {})", t, c.n_vocab));
    }
    total += int64_t(s.tokens.size());
  }
  if (total > opt_.n_batch) {
    return invalid_argument(fmt::format("forward_batch: {} tokens exceed n_batch {}", total, opt_.n_batch));
  }
  for (int pass = 0; pass < 2; ++pass) {  // prompt sequences, then decode ones
    for (const SeqStep& s : seqs) {
      if (s.decode != (pass == 1)) continue;
      BatchPlan::Seq q{s.cache, s.prefix, s.tokens, s.logits, s.decode, {}, bp.n, -1};
      KVB_ASSIGN_OR_RETURN(q.plan, s.cache->plan_append(int32_t(s.tokens.size())));
      if (s.logits != nullptr) q.logit_row = bp.n_logits++;
      bp.n += int64_t(s.tokens.size());
      if (!s.decode) bp.n_prompt = bp.n;
      bp.seqs.push_back(q);
    }
  }
  return Status::Ok();
}

Status ModelRunner::forward_batch(std::span<const SeqStep> seqs) {
  const ModelConfig& c = model_.config;
  Impl& im = *impl_;
  Backend& b = backend_;
  BatchPlan bp;
  KVB_RETURN_IF_ERROR(check_batch(seqs, bp));
  KVB_RETURN_IF_ERROR(im.reserve_logits(b, std::max<int64_t>(bp.n_logits, 1), c.n_vocab));
  std::vector<int32_t> tokens(size_t(bp.n)), positions(size_t(bp.n));
  for (const BatchPlan::Seq& s : bp.seqs) {
    for (size_t i = 0; i < s.tokens.size(); ++i) {
      tokens[size_t(s.row0) + i] = s.tokens[i];
      positions[size_t(s.row0) + i] = s.plan.first_pos + int32_t(i);
    }
  }
  {
    OpTimer timer(b, opt_.profile ? &profile_.other_s : nullptr);
    KVB_RETURN_IF_ERROR(b.copy_from_host(im.tokens.data, tokens.data(), size_t(bp.n) * 4));
    KVB_RETURN_IF_ERROR(b.copy_from_host(im.pos.data, positions.data(), size_t(bp.n) * 4));
  }
  // A step of decode tokens only is what repeats every few milliseconds: one graph where the
  // backend records them (the logits downloads below stay outside it).
  const bool graphed = bp.n_prompt == 0 && run_as_graph([&] { return enqueue_batch(bp); });
  if (!graphed) KVB_RETURN_IF_ERROR(enqueue_batch(bp));
  for (const BatchPlan::Seq& s : bp.seqs) {
    if (s.logit_row < 0) continue;
    KVB_RETURN_IF_ERROR(b.copy_to_host(s.logits, im.logits.slice_rows(s.logit_row, 1).data, size_t(c.n_vocab) * 4));
  }
  KVB_RETURN_IF_ERROR(b.synchronize());
  for (const BatchPlan::Seq& s : bp.seqs) s.cache->commit_append(s.plan, s.tokens);
  return Status::Ok();
}

namespace {

// outs over rows [0, n_prompt) with the prefill kernels and rows [n_prompt, n) with the decode
// kernels (x and every y have the step's n rows); one call for all rows when the weights compute
// a row the same way in every mode (Weight::mode_invariant), so that they are read once.
Status split_matmul(Backend& b, const Tensor& x, std::span<const MatmulOut> outs, int64_t n_prompt) {
  if (std::all_of(outs.begin(), outs.end(), [](const MatmulOut& o) { return o.w->mode_invariant(); })) {
    return b.matmul(x, outs, RowMode::kAuto);  // the kernels for the row count; each row's bits alike
  }
  MatmulOut part[3];
  auto run = [&](int64_t r0, int64_t nr, RowMode mode) -> Status {
    if (nr == 0) return Status::Ok();
    for (size_t i = 0; i < outs.size(); ++i) part[i] = {outs[i].w, outs[i].y.slice_rows(r0, nr), outs[i].accumulate};
    return b.matmul(x.slice_rows(r0, nr), std::span<const MatmulOut>(part, outs.size()), mode);
  };
  KVB_RETURN_IF_ERROR(run(0, n_prompt, RowMode::kPrefill));
  return run(n_prompt, x.shape[0] - n_prompt, RowMode::kDecode);
}

}  // namespace

// The ops of a batched step whose tokens and positions are uploaded. Enqueues only (no host copy,
// no synchronize), so that a decode-only step can be recorded as a graph.
Status ModelRunner::enqueue_batch(const BatchPlan& bp) {
  const ModelConfig& c = model_.config;
  Impl& im = *impl_;
  Backend& b = backend_;
  const int64_t n = bp.n, np = bp.n_prompt;
  double* t_mm = opt_.profile ? &profile_.matmul_s : nullptr;
  double* t_att = opt_.profile ? &profile_.attention_s : nullptr;
  double* t_other = opt_.profile ? &profile_.other_s : nullptr;
  const Tensor x = im.x.slice_rows(0, n), xb = im.xb.slice_rows(0, n), q = im.q.slice_rows(0, n);
  const Tensor att = im.att.slice_rows(0, n), hb = im.hb.slice_rows(0, n), hb2 = im.hb2.slice_rows(0, n);
  const Tensor k_new = im.k_new.slice_rows(0, n), v_new = im.v_new.slice_rows(0, n);
  const Tensor pos = im.pos.slice_rows(0, n);
  {
    OpTimer timer(b, t_other);
    KVB_RETURN_IF_ERROR(b.embedding(im.tok_embd, im.tokens.slice_rows(0, n), x));
  }
  const float scale = 1.0f / std::sqrt(float(c.head_dim));
  std::vector<std::vector<KvSegment>> segments;  // per sequence: its prefix blocks' cells in layer l
  for (int32_t l = 0; l < c.n_layer; ++l) {
    const LayerOnDevice& lw = im.layers[size_t(l)];
    {
      OpTimer timer(b, t_other);
      KVB_RETURN_IF_ERROR(b.rms_norm(x, lw.attn_norm, c.norm_eps, xb));
    }
    {
      OpTimer timer(b, t_mm);
      const MatmulOut qkv[] = {{lw.wq.get(), q, false}, {lw.wk.get(), k_new, false}, {lw.wv.get(), v_new, false}};
      KVB_RETURN_IF_ERROR(split_matmul(b, xb, qkv, np));
    }
    {
      OpTimer timer(b, t_other);
      if (c.has_qkv_bias()) {
        KVB_RETURN_IF_ERROR(b.add(q, lw.bq, q));
        KVB_RETURN_IF_ERROR(b.add(k_new, lw.bk, k_new));
        KVB_RETURN_IF_ERROR(b.add(v_new, lw.bv, v_new));
      }
      if (c.has_qk_norm()) {
        const Tensor qh = head_rows_view(q, c.n_head, c.head_dim), kh = head_rows_view(k_new, c.n_head_kv, c.head_dim);
        KVB_RETURN_IF_ERROR(b.rms_norm(qh, lw.q_norm, c.norm_eps, qh));
        KVB_RETURN_IF_ERROR(b.rms_norm(kh, lw.k_norm, c.norm_eps, kh));
      }
      KVB_RETURN_IF_ERROR(b.rope(head_view(q, c.n_head, c.head_dim), pos, im.rope));
      KVB_RETURN_IF_ERROR(b.rope(head_view(k_new, c.n_head_kv, c.head_dim), pos, im.rope));
      // Each sequence's new keys and values into its own cells.
      for (const BatchPlan::Seq& s : bp.seqs) {
        const int64_t ns = int64_t(s.tokens.size());
        const KvCache& cache = *s.cache;
        const Tensor kc = cache.k(l).slice_rows(s.plan.first_cell, ns);
        const Tensor vc = cache.v(l).slice_rows(s.plan.first_cell, ns);
        const Tensor ks = k_new.slice_rows(s.row0, ns), vs = v_new.slice_rows(s.row0, ns);
        if (cache.layout().dtype == DType::kF32) {
          KVB_RETURN_IF_ERROR(b.copy(kc.data, ks.data, ks.nbytes()));
          KVB_RETURN_IF_ERROR(b.copy(vc.data, vs.data, vs.nbytes()));
        } else {
          KVB_RETURN_IF_ERROR(b.convert(ks, Tensor::make(kc.dtype, kc.data, {ns, c.n_embd_kv()})));
          KVB_RETURN_IF_ERROR(b.convert(vs, Tensor::make(vc.dtype, vc.data, {ns, c.n_embd_kv()})));
        }
      }
    }
    {
      // Prompt sequences one call each (each spreads over the threads), decode sequences as one
      // batch (each alone is too small to).
      OpTimer timer(b, t_att);
      std::vector<AttentionSeq> prompt, decode;
      segments.resize(bp.seqs.size());
      for (size_t i = 0; i < bp.seqs.size(); ++i) {
        const BatchPlan::Seq& s = bp.seqs[i];
        const int64_t ns = int64_t(s.tokens.size());
        const int64_t n_kv = s.plan.first_cell + ns;
        segments[i].clear();
        for (const auto& block : s.prefix) segments[i].push_back({block->k_used(l), block->v_used(l)});
        (s.decode ? decode : prompt)
            .push_back({head_view(q.slice_rows(s.row0, ns), c.n_head, c.head_dim),
                        s.cache->k(l).slice_rows(0, n_kv), s.cache->v(l).slice_rows(0, n_kv),
                        head_view(att.slice_rows(s.row0, ns), c.n_head, c.head_dim), segments[i]});
      }
      KVB_RETURN_IF_ERROR(b.attention_batch(prompt, scale, RowMode::kPrefill));
      KVB_RETURN_IF_ERROR(b.attention_batch(decode, scale, RowMode::kDecode));
    }
    {
      OpTimer timer(b, t_mm);
      const MatmulOut wo[] = {{lw.wo.get(), x, true}};
      KVB_RETURN_IF_ERROR(split_matmul(b, att, wo, np));
    }
    {
      OpTimer timer(b, t_other);
      KVB_RETURN_IF_ERROR(b.rms_norm(x, lw.ffn_norm, c.norm_eps, xb));
    }
    {
      OpTimer timer(b, t_mm);
      const MatmulOut gate_up[] = {{lw.w_gate.get(), hb, false}, {lw.w_up.get(), hb2, false}};
      KVB_RETURN_IF_ERROR(split_matmul(b, xb, gate_up, np));
    }
    {
      OpTimer timer(b, t_other);
      KVB_RETURN_IF_ERROR(b.silu_mul(hb, hb2, hb));
    }
    {
      OpTimer timer(b, t_mm);
      const MatmulOut down[] = {{lw.w_down.get(), x, true}};
      KVB_RETURN_IF_ERROR(split_matmul(b, hb, down, np));
    }
  }
  if (bp.n_logits == 0) return Status::Ok();
  // Final norm of each returned row into its logits row, then one classifier over those rows with
  // the decode kernels (what a last prompt row or a decode token computes alone).
  {
    OpTimer timer(b, t_other);
    for (const BatchPlan::Seq& s : bp.seqs) {
      if (s.logit_row < 0) continue;
      const int64_t last = s.row0 + int64_t(s.tokens.size()) - 1;
      KVB_RETURN_IF_ERROR(
          b.rms_norm(x.slice_rows(last, 1), im.output_norm, c.norm_eps, xb.slice_rows(s.logit_row, 1)));
    }
  }
  OpTimer timer(b, t_mm);
  return b.matmul(xb.slice_rows(0, bp.n_logits), *im.output, im.logits.slice_rows(0, bp.n_logits), false,
                  RowMode::kDecode);
}

}  // namespace kvb
