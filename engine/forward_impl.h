// The private state of ModelRunner, shared by its translation units (forward.cpp: weights, the
// single-sequence pass; forward_batch.cpp: the multi-sequence step). Not part of the engine's API.
#pragma once

#include <chrono>
#include <memory>
#include <vector>

#include "engine/forward.h"

namespace kvb {

struct LayerOnDevice {
  std::unique_ptr<Weight> wq, wk, wv, wo, w_gate, w_up, w_down;
  Tensor attn_norm, ffn_norm;  // f32 [n_embd], device memory
  Tensor bq, bk, bv;           // qwen2: f32 [n_embd_q], [n_embd_kv], [n_embd_kv]
  Tensor q_norm, k_norm;       // qwen3: f32 [head_dim]
};

struct ModelRunner::Impl {
  std::vector<LayerOnDevice> layers;
  std::unique_ptr<Weight> output;
  Tensor tok_embd, output_norm;  // device memory
  RopeParams rope;               // the model's, with freq_factors in device memory when it has some
  std::vector<std::unique_ptr<Buffer>> buffers;

  // Scratch, sized for n_batch tokens: activations are f32, rows are tokens.
  Tensor x, xb, q, k_new, v_new, att, hb, hb2, tokens, pos;  // [n_batch][...]
  Tensor logits;                                             // [n_logit_rows][n_vocab]
  int32_t n_logit_rows = 0;

  // Grows `logits` to at least `rows` rows (device memory; the old buffer is kept until the runner
  // goes, so a recorded graph never reads freed memory).
  Status reserve_logits(Backend& b, int64_t rows, int64_t n_vocab) {
    if (n_logit_rows >= rows) return Status::Ok();
    KVB_ASSIGN_OR_RETURN(auto buf, b.device().buffer_type().alloc(size_t(rows * n_vocab) * 4));
    logits = Tensor::make(DType::kF32, buf->data(), {rows, n_vocab});
    n_logit_rows = int32_t(rows);
    buffers.push_back(std::move(buf));
    return Status::Ok();
  }
};

// Views of activation rows [n][n_heads * hd]: per head ([n][n_heads][hd], what rope and attention
// take), and one row per (token, head) ([n * n_heads][hd], what a per-head RMSNorm takes).
inline Tensor head_view(const Tensor& t, int32_t n_heads, int32_t hd) {
  return Tensor::make(t.dtype, t.data, {t.shape[0], n_heads, hd});
}
inline Tensor head_rows_view(const Tensor& t, int32_t n_heads, int32_t hd) {
  return Tensor::make(t.dtype, t.data, {t.shape[0] * n_heads, hd});
}

// Times a region into one OpProfile bucket when profiling is on.
class OpTimer {
 public:
  OpTimer(Backend& b, double* bucket) : backend_(b), bucket_(bucket) {
    if (bucket_) start_ = std::chrono::steady_clock::now();
  }
  ~OpTimer() {
    if (!bucket_) return;
    (void)backend_.synchronize();
    *bucket_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  Backend& backend_;
  double* bucket_;
  std::chrono::steady_clock::time_point start_;
};

template <class F>
bool ModelRunner::run_as_graph(F&& enqueue) {
  if (!opt_.graphs || opt_.profile || graphs_.disabled) return false;
  Backend& b = backend_;
  if (Status st = b.begin_graph(); !st.ok()) {
    graphs_.disabled = true;  // UNIMPLEMENTED: this backend has none
    if (st.code() != StatusCode::kUnimplemented) graphs_.last_error = st.to_string();
    return false;
  }
  const Status body = enqueue();
  const Status end = b.end_graph(/*run=*/body.ok());
  if (body.ok() && end.ok()) {
    ++graphs_.graph_steps;
    graph_failures_in_row_ = 0;
    return true;
  }
  ++graphs_.fallbacks;
  graphs_.last_error = (body.ok() ? end : body).to_string();
  if (++graph_failures_in_row_ >= kMaxGraphFailuresInRow) graphs_.disabled = true;
  return false;
}

}  // namespace kvb
