// Scalar reference of one C2C projector branch (see projector.h for the math): double accumulation,
// one token at a time, weights read element by element in their stored dtype.
#include "fuser/projector_reference.h"

#include <fmt/format.h>

#include <cmath>
#include <exception>

namespace kvb::fuser {
namespace {

using Vec = std::vector<double>;

double at(const Tensor& t, int64_t i) {
  switch (t.dtype) {
    case DType::kF32:
      return t.as<const float>()[i];
    case DType::kF16:
      return fp16_to_fp32(t.as<const uint16_t>()[i]);
    case DType::kBF16:
      return bf16_to_fp32(t.as<const uint16_t>()[i]);
    default:
      KVB_ASSERT(false, "fuser reference: unsupported weight dtype");
  }
  return 0;
}

// y[o] = sum_k w[o][k] · x[k] (+ b[o]), w: [n_out][n_in].
Vec linear(const Tensor& w, const Vec& x, const Tensor* b = nullptr) {
  const int64_t n_out = w.shape[0], n_in = w.shape[1];
  Vec y(size_t(n_out), 0.0);
  for (int64_t o = 0; o < n_out; ++o) {
    double acc = b != nullptr ? at(*b, o) : 0.0;
    for (int64_t k = 0; k < n_in; ++k) acc += at(w, o * n_in + k) * x[size_t(k)];
    y[size_t(o)] = acc;
  }
  return y;
}

// x + w2 · gelu(w1 · rms_norm(x) ⊙ norm)
Vec ffn_block(const FfnBlockTensors& b, const Vec& x) {
  // RMSNorm, eps 1e-6, with weight
  double ss = 0;
  for (double v : x) ss += v * v;
  const double r = 1.0 / std::sqrt(ss / double(x.size()) + double(kRmsNormEps));
  Vec n(x.size());
  for (size_t k = 0; k < x.size(); ++k) n[k] = x[k] * r * at(b.norm, int64_t(k));
  // W1, exact GELU, W2 (bias-free), residual
  Vec u = linear(b.w1, n);
  for (double& v : u) v = 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0)));
  Vec y = linear(b.w2, u);
  for (size_t k = 0; k < x.size(); ++k) y[k] += x[k];
  return y;
}

bool rows_match(const Tensor& t, int64_t n, int64_t cols) {
  return t.dtype == DType::kF32 && t.n_dims >= 2 && t.n_dims <= 3 && t.shape[0] == n && t.numel() == n * cols &&
         (n == 0 || t.data != nullptr);
}

}  // namespace

Status fuse_reference(const BranchTensors& w, const FuserConfig& cfg, const Tensor& sharer, const Tensor& receiver) {
  const int64_t in_s = cfg.sharer.kv_dim(), out = cfg.receiver.kv_dim(), heads = cfg.receiver.n_head_kv;
  const int64_t n = receiver.shape[0];
  if (!rows_match(receiver, n, out) || !rows_match(sharer, n, in_s)) {
    return invalid_argument(fmt::format("fuser reference: sharer {} / receiver {} do not match [n][{}] / [n][{}]",
                                        sharer.describe(), receiver.describe(), in_s, out));
  }
  // Hard gate: a branch whose logit is <= 0 leaves the receiver untouched.
  if (!(w.gate_logit > 0.0f)) return Status::Ok();
  const int64_t head_dim = out / heads;
  const float* xs = sharer.as<const float>();
  float* xt = receiver.as<float>();
  for (int64_t t = 0; t < n; ++t) {
    // 1. concat [sharer ; receiver] and the input projection
    Vec cat(size_t(in_s + out));
    for (int64_t k = 0; k < in_s; ++k) cat[size_t(k)] = xs[t * in_s + k];
    for (int64_t k = 0; k < out; ++k) cat[size_t(in_s + k)] = xt[t * out + k];
    Vec x = linear(w.in_w, cat, &w.in_b);
    // 2. common embedding (mlp1)
    x = ffn_block(w.mlp1, x);
    // 3. projection path: L-2 blocks, then to [Ht·Dt]
    Vec p = x;
    for (const FfnBlockTensors& b : w.proj) p = ffn_block(b, p);
    const Vec projected = linear(w.proj_out_w, p, &w.proj_out_b);
    // 4. weighting path: one block, then one logit per receiver head
    const Vec logits = linear(w.scalar_head_w, ffn_block(w.scalar, x), &w.scalar_head_b);
    // 5. fusion: receiver + sigmoid(logit[head]) · projected
    for (int64_t k = 0; k < out; ++k) {
      const double weight = 1.0 / (1.0 + std::exp(-logits[size_t(k / head_dim)]));
      xt[t * out + k] = float(double(xt[t * out + k]) + weight * projected[size_t(k)]);
    }
  }
  return Status::Ok();
}

Result<std::unique_ptr<ReferenceFuser>> ReferenceFuser::load(const std::string& dir) {
  try {
    return load_impl(dir);
  } catch (const std::exception& e) {
    return resource_exhausted(fmt::format("fuser reference {}: {}", dir, e.what()));
  }
}

Result<std::unique_ptr<ReferenceFuser>> ReferenceFuser::load_impl(const std::string& dir) {
  KVB_ASSIGN_OR_RETURN(FuserConfig cfg, load_fuser_config(dir));
  KVB_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(dir + "/" + cfg.weights_file));
  std::unique_ptr<ReferenceFuser> f(new ReferenceFuser(std::move(cfg), std::move(file)));
  for (int32_t t = 0; t < f->cfg_.receiver.n_layer; ++t) {
    for (bool is_v : {false, true}) {
      KVB_ASSIGN_OR_RETURN(BranchTensors b, find_branch_tensors(f->file_, f->cfg_, t, is_v));
      f->branches_.push_back(std::move(b));
    }
  }
  return f;
}

Status ReferenceFuser::fuse(int32_t receiver_layer, bool is_v, const Tensor& sharer, const Tensor& receiver) const {
  if (receiver_layer < 0 || receiver_layer >= cfg_.receiver.n_layer) {
    return invalid_argument(
        fmt::format("fuser reference: receiver layer {} is outside [0, {})", receiver_layer, cfg_.receiver.n_layer));
  }
  return fuse_reference(branch(receiver_layer, is_v), cfg_, sharer, receiver);
}

}  // namespace kvb::fuser
