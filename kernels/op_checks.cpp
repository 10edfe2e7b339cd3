#include "kernels/op_checks.h"

#include <fmt/format.h>

#include <cmath>
#include <cstdint>

namespace kvb {

Status check_tensor(const Tensor& t, DType dtype, const char* op, const char* name) {
  if (t.dtype != dtype) {
    return invalid_argument(fmt::format("{}: {} must be {}, got {}", op, name, dtype_name(dtype), t.describe()));
  }
  if (t.n_dims < 1 || t.n_dims > 4) return invalid_argument(fmt::format("{}: {} has {} dims", op, name, t.n_dims));
  constexpr int64_t kMaxDim = int64_t(1) << 40;
  int64_t numel = 1;
  for (int i = 0; i < t.n_dims; ++i) {
    const int64_t d = t.shape[size_t(i)];
    if (d < 0 || d > kMaxDim || (d > 0 && numel > kMaxDim / d)) {
      return invalid_argument(fmt::format("{}: {} has a bad shape {}", op, name, t.describe()));
    }
    numel *= d;
  }
  if (t.cols() % dtype_block_size(dtype) != 0) {
    return invalid_argument(
        fmt::format("{}: {} rows of {} are not whole {} blocks", op, name, t.describe(), dtype_name(dtype)));
  }
  if (numel > 0 && t.data == nullptr) return invalid_argument(fmt::format("{}: {} has null data", op, name));
  return Status::Ok();
}

bool tensors_overlap(const Tensor& a, const Tensor& b) {
  const auto a0 = reinterpret_cast<uintptr_t>(a.data);
  const auto b0 = reinterpret_cast<uintptr_t>(b.data);
  const size_t an = a.nbytes(), bn = b.nbytes();
  if (an == 0 || bn == 0) return false;
  return a0 < b0 + bn && b0 < a0 + an;
}

Result<bool> check_add(const Tensor& a, const Tensor& b, const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_tensor(a, DType::kF32, "add", "a"));
  KVB_RETURN_IF_ERROR(check_tensor(b, DType::kF32, "add", "b"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "add", "out"));
  if (a.numel() != out.numel() || a.cols() != out.cols()) {
    return invalid_argument(fmt::format("add: a {} and out {} do not match", a.describe(), out.describe()));
  }
  const bool same = b.numel() == a.numel() && b.cols() == a.cols();
  const bool row = b.numel() == a.cols() && b.cols() == a.cols() && !same;
  if (!same && !row) {
    return invalid_argument(fmt::format("add: b {} is neither a's shape {} nor one row of it", b.describe(),
                                        a.describe()));
  }
  if (out.data != a.data && tensors_overlap(out, a)) return invalid_argument("add: out partially overlaps a");
  if ((row || out.data != b.data) && tensors_overlap(out, b)) {
    return invalid_argument(row ? "add: out overlaps the broadcast row b" : "add: out partially overlaps b");
  }
  return row;
}

bool op_supports_dtype(OpKind op, DType t) {
  switch (op) {
    case OpKind::kMatmul:
    case OpKind::kEmbedding:
      return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || dtype_is_quantized(t);
    case OpKind::kConvert:
      return t == DType::kF32 || t == DType::kF16 || t == DType::kBF16 || t == DType::kQ8_0;
    case OpKind::kAttention:
      return t == DType::kF32 || t == DType::kF16;
    case OpKind::kRmsNorm:
    case OpKind::kRope:
    case OpKind::kSoftmax:
    case OpKind::kSiluMul:
    case OpKind::kAdd:
    case OpKind::kGelu:
    case OpKind::kGateAdd:
      return t == DType::kF32;
  }
  return false;
}

Status check_rope_freq_factors(const Tensor& factors, int n_rot) {
  if (factors.data == nullptr) return Status::Ok();  // none
  KVB_RETURN_IF_ERROR(check_tensor(factors, DType::kF32, "rope", "freq_factors"));
  if (factors.numel() != n_rot / 2) {
    return invalid_argument(
        fmt::format("rope: freq_factors {} must hold n_rot / 2 = {} values", factors.describe(), n_rot / 2));
  }
  return Status::Ok();
}

Status check_rope(const Tensor& x, const Tensor& pos, const RopeParams& p) {
  KVB_RETURN_IF_ERROR(check_tensor(x, DType::kF32, "rope", "x"));
  KVB_RETURN_IF_ERROR(check_tensor(pos, DType::kI32, "rope", "pos"));
  if (x.n_dims != 3) return invalid_argument(fmt::format("rope: x must be [n][n_heads][head_dim], got {}", x.describe()));
  const int64_t n = x.shape[0], head_dim = x.shape[2];
  if (pos.numel() != n) {
    return invalid_argument(
        fmt::format("rope: pos {} must hold one position per row of x {}", pos.describe(), x.describe()));
  }
  if (p.n_rot <= 0 || p.n_rot % 2 != 0 || p.n_rot > head_dim) {
    return invalid_argument(fmt::format("rope: n_rot {} must be even and in (0, head_dim = {}]", p.n_rot, head_dim));
  }
  if (!(p.theta_base > 0.0f) || !std::isfinite(p.theta_base) || !std::isfinite(p.freq_scale)) {
    return invalid_argument(fmt::format("rope: bad theta_base {} or freq_scale {}", p.theta_base, p.freq_scale));
  }
  KVB_RETURN_IF_ERROR(check_rope_freq_factors(p.freq_factors, p.n_rot));
  if (tensors_overlap(x, pos)) return invalid_argument("rope: x overlaps pos");
  return Status::Ok();
}

Status check_rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) {
  KVB_RETURN_IF_ERROR(check_tensor(x, DType::kF32, "rms_norm", "x"));
  KVB_RETURN_IF_ERROR(check_tensor(w, DType::kF32, "rms_norm", "w"));
  KVB_RETURN_IF_ERROR(check_tensor(y, DType::kF32, "rms_norm", "y"));
  const int64_t d = x.cols();
  if (w.numel() != d || y.numel() != x.numel() || y.cols() != d) {
    return invalid_argument(
        fmt::format("rms_norm: x {}, w {}, y {} do not match", x.describe(), w.describe(), y.describe()));
  }
  if (!(eps >= 0.0f) || !std::isfinite(eps)) return invalid_argument(fmt::format("rms_norm: bad eps {}", eps));
  if (tensors_overlap(w, y)) return invalid_argument("rms_norm: y overlaps w");
  if (y.data != x.data && tensors_overlap(x, y)) return invalid_argument("rms_norm: y partially overlaps x");
  return Status::Ok();
}

Status check_embedding(const Tensor& table, const Tensor& tokens, const Tensor& out) {
  const DType t = table.dtype;
  if (t != DType::kF32 && t != DType::kF16 && t != DType::kBF16 && !dtype_is_quantized(t)) {
    return invalid_argument(fmt::format("embedding: table dtype {} is not a weight type", dtype_name(t)));
  }
  KVB_RETURN_IF_ERROR(check_tensor(table, t, "embedding", "table"));
  KVB_RETURN_IF_ERROR(check_tensor(tokens, DType::kI32, "embedding", "tokens"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "embedding", "out"));
  if (table.n_dims != 2) {
    return invalid_argument(fmt::format("embedding: table must be [vocab][d], got {}", table.describe()));
  }
  const int64_t n = tokens.numel(), d = table.shape[1];
  if (out.n_dims != 2 || out.shape[0] != n || out.shape[1] != d) {
    return invalid_argument(fmt::format("embedding: out {} must be f32[{}][{}]", out.describe(), n, d));
  }
  if (tensors_overlap(out, table) || tensors_overlap(out, tokens)) {
    return invalid_argument("embedding: out overlaps an input");
  }
  return Status::Ok();
}

Result<AttentionShapes> check_attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                                        float scale) {
  KVB_RETURN_IF_ERROR(check_tensor(q, DType::kF32, "attention", "q"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "attention", "out"));
  for (const Tensor* t : {&k, &v}) {
    if (t->dtype != DType::kF32 && t->dtype != DType::kF16) {
      return invalid_argument(fmt::format("attention: k and v must be f32 or f16, got {}", t->describe()));
    }
  }
  KVB_RETURN_IF_ERROR(check_tensor(k, k.dtype, "attention", "k"));
  KVB_RETURN_IF_ERROR(check_tensor(v, v.dtype, "attention", "v"));
  if (q.n_dims != 3 || k.n_dims != 3 || v.n_dims != 3 || out.n_dims != 3) {
    return invalid_argument("attention: q, k, v and out must have 3 dims");
  }
  AttentionShapes s;
  s.n = q.shape[0];
  s.n_head = q.shape[1];
  s.hd = q.shape[2];
  s.n_kv = k.shape[0];
  s.n_head_kv = k.shape[1];
  if (out.shape != q.shape) {
    return invalid_argument(fmt::format("attention: out {} must match q {}", out.describe(), q.describe()));
  }
  if (v.shape != k.shape || k.shape[2] != s.hd) {
    return invalid_argument(
        fmt::format("attention: k {} and v {} must be [n_kv][n_head_kv][{}]", k.describe(), v.describe(), s.hd));
  }
  if (s.n_head_kv <= 0 || s.hd <= 0 || s.n_head % s.n_head_kv != 0) {
    return invalid_argument(fmt::format("attention: n_head {} must be a multiple of n_head_kv {} (and hd {} > 0)",
                                        s.n_head, s.n_head_kv, s.hd));
  }
  if (s.n_kv < s.n) {
    return invalid_argument(fmt::format("attention: n_kv {} is smaller than the {} queries", s.n_kv, s.n));
  }
  if (!std::isfinite(scale)) return invalid_argument(fmt::format("attention: bad scale {}", scale));
  if (tensors_overlap(out, q) || tensors_overlap(out, k) || tensors_overlap(out, v)) {
    return invalid_argument("attention: out overlaps an input");
  }
  s.group = s.n_head / s.n_head_kv;
  return s;
}

Result<AttentionShapes> check_attention_seq(const AttentionSeq& a, float scale) {
  KVB_ASSIGN_OR_RETURN(AttentionShapes s, check_attention(a.q, a.k, a.v, a.out, scale));
  for (size_t i = 0; i < a.prefix.size(); ++i) {
    const KvSegment& seg = a.prefix[i];
    KVB_RETURN_IF_ERROR(check_tensor(seg.k, a.k.dtype, "attention", "prefix k"));
    KVB_RETURN_IF_ERROR(check_tensor(seg.v, a.v.dtype, "attention", "prefix v"));
    const bool heads_match = seg.k.n_dims == 3 && seg.k.shape[1] == s.n_head_kv && seg.k.shape[2] == s.hd;
    if (!heads_match || seg.v.shape != seg.k.shape || seg.v.n_dims != 3) {
      return invalid_argument(fmt::format("attention: prefix segment {} (k {}, v {}) must be [cells][{}][{}] in {}", i,
                                          seg.k.describe(), seg.v.describe(), s.n_head_kv, s.hd,
                                          dtype_name(a.k.dtype)));
    }
    if (tensors_overlap(a.out, seg.k) || tensors_overlap(a.out, seg.v)) {
      return invalid_argument("attention: out overlaps a prefix segment");
    }
    s.n_kv += seg.k.shape[0];
  }
  return s;
}

Result<GateAddShapes> check_gate_add(const Tensor& receiver, const Tensor& logits, const Tensor& projected,
                                     const Tensor& out) {
  KVB_RETURN_IF_ERROR(check_tensor(receiver, DType::kF32, "gate_add", "receiver"));
  KVB_RETURN_IF_ERROR(check_tensor(logits, DType::kF32, "gate_add", "logits"));
  KVB_RETURN_IF_ERROR(check_tensor(projected, DType::kF32, "gate_add", "projected"));
  KVB_RETURN_IF_ERROR(check_tensor(out, DType::kF32, "gate_add", "out"));
  // Rows are the outermost dimension; the rest of a row is H·D values (2-D [n][H·D] or 3-D [n][H][D]).
  GateAddShapes s;
  s.n = receiver.shape[0];
  s.h = logits.cols();
  s.row = s.n > 0 ? receiver.numel() / s.n : 0;
  const auto same_rows = [&](const Tensor& t) { return t.shape[0] == s.n && t.numel() == receiver.numel(); };
  if (logits.n_dims != 2 || logits.shape[0] != s.n || !same_rows(projected) || !same_rows(out) || s.h <= 0 ||
      (s.n > 0 && s.row % s.h != 0)) {
    return invalid_argument(fmt::format("gate_add: receiver {}, logits {}, projected {}, out {} do not match",
                                        receiver.describe(), logits.describe(), projected.describe(), out.describe()));
  }
  if ((out.data != receiver.data && tensors_overlap(out, receiver)) ||
      (out.data != projected.data && tensors_overlap(out, projected)) || tensors_overlap(out, logits)) {
    return invalid_argument("gate_add: out partially overlaps an input");
  }
  return s;
}

}  // namespace kvb
