#include "engine/forward_reference.h"

#include <fmt/format.h>

#include <cmath>

namespace kvb {

namespace {

// out[o] = Σ_i w[o][i] · x[i] for a weight matrix w [n_out][n_in] of any stored dtype.
void matvec(const Tensor& w, const float* x, float* out) {
  const int64_t n_out = w.shape[0], n_in = w.shape[1];
  std::vector<float> row(static_cast<size_t>(n_in));
  for (int64_t o = 0; o < n_out; ++o) {
    to_f32(w.dtype, static_cast<const char*>(w.data) + size_t(o) * w.row_nbytes(), row.data(), n_in);
    float sum = 0.0f;
    for (int64_t i = 0; i < n_in; ++i) sum += row[size_t(i)] * x[i];
    out[o] = sum;
  }
}

void rms_norm(float* out, const float* x, const float* w, int64_t n, float eps) {
  float ss = 0.0f;
  for (int64_t i = 0; i < n; ++i) ss += x[i] * x[i];
  const float scale = 1.0f / std::sqrt(ss / float(n) + eps);
  for (int64_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * scale);
}

// Rotates the first n_rot dims of one head vector at position pos. `factors` ([n_rot/2] or empty)
// divides each pair's frequency (Llama 3 scaling).
void rope(float* v, int32_t pos, const RopeParams& p, const std::vector<float>& factors) {
  const int half = p.n_rot / 2;
  for (int i = 0; i < half; ++i) {
    float freq = std::pow(p.theta_base, -2.0f * float(i) / float(p.n_rot));
    if (!factors.empty()) freq /= factors[size_t(i)];
    const float angle = float(pos) * p.freq_scale * freq;
    const float c = std::cos(angle), s = std::sin(angle);
    // kNormal pairs (2i, 2i+1); kNeox pairs (i, i + n_rot/2).
    const int a = p.type == RopeType::kNormal ? 2 * i : i;
    const int b = p.type == RopeType::kNormal ? 2 * i + 1 : i + half;
    const float x0 = v[a], x1 = v[b];
    v[a] = x0 * c - x1 * s;
    v[b] = x0 * s + x1 * c;
  }
}

void softmax(float* x, int64_t n) {
  float max = x[0];
  for (int64_t i = 1; i < n; ++i) max = std::max(max, x[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - max);
    sum += x[i];
  }
  for (int64_t i = 0; i < n; ++i) x[i] /= sum;
}

}  // namespace

Result<std::vector<float>> forward_reference(const Model& model, KvCache& cache, std::span<const int32_t> tokens) {
  const ModelConfig& c = model.config;
  const ModelWeights& w = model.weights;
  const KvLayout want{c.n_layer, c.n_head_kv, c.head_dim, DType::kF32};
  if (cache.layout() != want || !cache.is_host()) {
    return invalid_argument("forward_reference: needs a host f32 cache of the model's layout");
  }
  for (int32_t t : tokens) {
    if (t < 0 || t >= c.n_vocab) return invalid_argument(fmt::format("token id {} outside [0, {})", t, c.n_vocab));
  }
  KVB_ASSIGN_OR_RETURN(const KvPlan plan, cache.plan_append(int32_t(tokens.size())));

  const int64_t dim = c.n_embd, hd = c.head_dim, kv_dim = c.n_embd_kv(), q_dim = c.n_embd_q();
  const int32_t group = c.n_head / c.n_head_kv;  // query heads per kv head
  std::vector<float> x(static_cast<size_t>(dim)), xb(static_cast<size_t>(dim));
  std::vector<float> q(static_cast<size_t>(q_dim)), att_out(static_cast<size_t>(q_dim));
  std::vector<float> hb(static_cast<size_t>(c.n_ff)), hb2(static_cast<size_t>(c.n_ff)), scores;
  std::vector<float> logits(tokens.size() * size_t(c.n_vocab));

  for (size_t t = 0; t < tokens.size(); ++t) {
    const int32_t cell = plan.first_cell + int32_t(t);
    const int32_t pos = plan.first_pos + int32_t(t);

    // Token embedding: x = tok_embd[token].
    to_f32(w.tok_embd.dtype, static_cast<const char*>(w.tok_embd.data) + size_t(tokens[t]) * w.tok_embd.row_nbytes(),
           x.data(), dim);

    for (int32_t l = 0; l < c.n_layer; ++l) {
      const LlamaLayerWeights& lw = w.layers[size_t(l)];
      float* k_cache = cache.k(l).as<float>();  // [n_ctx][n_head_kv][head_dim]
      float* v_cache = cache.v(l).as<float>();

      // Attention norm.
      rms_norm(xb.data(), x.data(), lw.attn_norm.as<float>(), dim, c.norm_eps);

      // Q, K, V projections; K and V go straight into this token's cache cell.
      float* k_cell = k_cache + int64_t(cell) * kv_dim;
      float* v_cell = v_cache + int64_t(cell) * kv_dim;
      matvec(lw.wq, xb.data(), q.data());
      matvec(lw.wk, xb.data(), k_cell);
      matvec(lw.wv, xb.data(), v_cell);

      // Qwen2: biases of the Q, K and V projections.
      if (c.has_qkv_bias()) {
        for (int64_t i = 0; i < q_dim; ++i) q[size_t(i)] += lw.bias.q.as<float>()[i];
        for (int64_t i = 0; i < kv_dim; ++i) k_cell[i] += lw.bias.k.as<float>()[i];
        for (int64_t i = 0; i < kv_dim; ++i) v_cell[i] += lw.bias.v.as<float>()[i];
      }

      // Qwen3: RMSNorm of every query head and every key head, one [head_dim] weight each.
      if (c.has_qk_norm()) {
        for (int32_t h = 0; h < c.n_head; ++h) {
          rms_norm(q.data() + h * hd, q.data() + h * hd, lw.qk_norm.q.as<float>(), hd, c.norm_eps);
        }
        for (int32_t h = 0; h < c.n_head_kv; ++h) {
          rms_norm(k_cell + h * hd, k_cell + h * hd, lw.qk_norm.k.as<float>(), hd, c.norm_eps);
        }
      }

      // RoPE on every query head and every key head (keys are cached post-RoPE).
      for (int32_t h = 0; h < c.n_head; ++h) rope(q.data() + h * hd, pos, c.rope, c.rope_freq_factors);
      for (int32_t h = 0; h < c.n_head_kv; ++h) rope(k_cell + h * hd, pos, c.rope, c.rope_freq_factors);

      // Causal attention over cells 0..cell; query head h reads kv head h / group.
      scores.resize(size_t(cell) + 1);
      for (int32_t h = 0; h < c.n_head; ++h) {
        const float* qh = q.data() + h * hd;
        const int64_t kv_off = int64_t(h / group) * hd;
        for (int32_t j = 0; j <= cell; ++j) {
          const float* kj = k_cache + int64_t(j) * kv_dim + kv_off;
          float dot = 0.0f;
          for (int64_t i = 0; i < hd; ++i) dot += qh[i] * kj[i];
          scores[size_t(j)] = dot / std::sqrt(float(hd));
        }
        softmax(scores.data(), cell + 1);
        float* out = att_out.data() + h * hd;
        std::fill(out, out + hd, 0.0f);
        for (int32_t j = 0; j <= cell; ++j) {
          const float* vj = v_cache + int64_t(j) * kv_dim + kv_off;
          for (int64_t i = 0; i < hd; ++i) out[i] += scores[size_t(j)] * vj[i];
        }
      }

      // Output projection and residual.
      matvec(lw.wo, att_out.data(), xb.data());
      for (int64_t i = 0; i < dim; ++i) x[size_t(i)] += xb[size_t(i)];

      // FFN norm, SwiGLU: down(silu(gate(x)) * up(x)), residual.
      rms_norm(xb.data(), x.data(), lw.ffn_norm.as<float>(), dim, c.norm_eps);
      matvec(lw.w_gate, xb.data(), hb.data());
      matvec(lw.w_up, xb.data(), hb2.data());
      for (int64_t i = 0; i < c.n_ff; ++i) {
        const float g = hb[size_t(i)];
        hb[size_t(i)] = g / (1.0f + std::exp(-g)) * hb2[size_t(i)];
      }
      matvec(lw.w_down, hb.data(), xb.data());
      for (int64_t i = 0; i < dim; ++i) x[size_t(i)] += xb[size_t(i)];
    }

    // Final norm and classifier.
    rms_norm(x.data(), x.data(), w.output_norm.as<float>(), dim, c.norm_eps);
    matvec(w.output, x.data(), logits.data() + t * size_t(c.n_vocab));
  }
  cache.commit_append(plan, tokens);
  return logits;
}

}  // namespace kvb
