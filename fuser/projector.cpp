// C2C projector branch: tensor lookup and checks, upload to a backend, and the chunked forward pass
// (the computation is spelled out in projector.h; projector_reference.cpp is the scalar twin).
#include "fuser/projector.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <map>

namespace kvb::fuser {
namespace {

std::string shape_str(const std::vector<int64_t>& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

// y[n][m] = row[m] for every n: one copy of the row, then doubling copies (log2 n of them), so it
// costs a handful of stream operations on any backend.
Status broadcast_rows(Backend& be, const Tensor& row, const Tensor& y) {
  const int64_t n = y.shape[0];
  const size_t rb = y.row_nbytes();
  if (n == 0 || rb == 0) return Status::Ok();
  char* dst = static_cast<char*>(y.data);
  KVB_RETURN_IF_ERROR(be.copy(dst, row.data, rb));
  for (int64_t filled = 1; filled < n; filled *= 2) {
    const int64_t count = std::min(filled, n - filled);
    KVB_RETURN_IF_ERROR(be.copy(dst + size_t(filled) * rb, dst, size_t(count) * rb));
  }
  return Status::Ok();
}

// A 2-D f32 [rows][cols] view of contiguous rows.
Tensor rows_f32(void* p, int64_t rows, int64_t cols) { return Tensor::make(DType::kF32, p, {rows, cols}); }

size_t round_up_floats(size_t n) { return (n + 15) / 16 * 16; }  // 64-byte sub-blocks

}  // namespace

// ---------------------------------------------------------------------------------------------
// Names, shapes, lookup

std::string branch_tensor_name(int32_t layer, bool is_v, std::string_view suffix) {
  return fmt::format("projector.{}.{}_{}", layer, is_v ? "value" : "key", suffix);
}

std::vector<TensorSpec> branch_tensor_specs(const FuserConfig& cfg, int32_t layer, bool is_v) {
  const int64_t h = cfg.hidden_dim, i = cfg.intermediate_dim;
  const int64_t in = cfg.sharer.kv_dim() + cfg.receiver.kv_dim(), out = cfg.receiver.kv_dim();
  const int64_t heads = cfg.receiver.n_head_kv;
  std::vector<TensorSpec> specs;
  auto add = [&](std::string suffix, std::vector<int64_t> shape) {
    specs.push_back({branch_tensor_name(layer, is_v, suffix), std::move(shape)});
  };
  auto block = [&](const std::string& prefix, int64_t inter) {
    add(prefix + ".norm.weight", {h});
    add(prefix + ".w1.weight", {inter, h});
    add(prefix + ".w2.weight", {h, inter});
  };
  add("in.weight", {h, in});
  add("in.bias", {h});
  block("mlp1.blocks.0", i);
  block("scalar_mlp2.blocks.0", h);
  add("scalar_head.weight", {heads, h});
  add("scalar_head.bias", {heads});
  for (int32_t b = 0; b < cfg.num_layers - 2; ++b) block(fmt::format("proj_mlp2.blocks.{}", b), i);
  add("proj_out.weight", {out, h});
  add("proj_out.bias", {out});
  add("gate_logit", {});
  return specs;
}

Result<BranchTensors> find_branch_tensors(const SafetensorsFile& file, const FuserConfig& cfg, int32_t layer,
                                          bool is_v) {
  std::map<std::string, Tensor, std::less<>> found;
  for (const TensorSpec& spec : branch_tensor_specs(cfg, layer, is_v)) {
    const SafetensorsEntry* e = file.find(spec.name);
    if (e == nullptr)
      return invalid_argument(fmt::format("fuser weights {}: missing tensor \"{}\"", file.path(), spec.name));
    if (e->dtype != cfg.dtype) {
      return invalid_argument(fmt::format("fuser weights {}: tensor \"{}\" is {}, the config says {}", file.path(),
                                          spec.name, dtype_name(e->dtype), dtype_name(cfg.dtype)));
    }
    // The gate logit is a 0-dim tensor in C2C's state dict; [1] is accepted too.
    const bool scalar_ok = spec.shape.empty() && e->numel() == 1 && e->shape.size() <= 1;
    if (e->shape != spec.shape && !scalar_ok) {
      return invalid_argument(fmt::format("fuser weights {}: tensor \"{}\" has shape {}, expected {}", file.path(),
                                          spec.name, shape_str(e->shape), shape_str(spec.shape)));
    }
    found.emplace(spec.name, file.view(*e));
  }
  auto get = [&](std::string_view suffix) { return found.at(branch_tensor_name(layer, is_v, suffix)); };
  auto block = [&](const std::string& prefix) {
    return FfnBlockTensors{get(prefix + ".norm.weight"), get(prefix + ".w1.weight"), get(prefix + ".w2.weight")};
  };
  BranchTensors w;
  w.in_w = get("in.weight");
  w.in_b = get("in.bias");
  w.mlp1 = block("mlp1.blocks.0");
  for (int32_t b = 0; b < cfg.num_layers - 2; ++b) w.proj.push_back(block(fmt::format("proj_mlp2.blocks.{}", b)));
  w.proj_out_w = get("proj_out.weight");
  w.proj_out_b = get("proj_out.bias");
  w.scalar = block("scalar_mlp2.blocks.0");
  w.scalar_head_w = get("scalar_head.weight");
  w.scalar_head_b = get("scalar_head.bias");
  to_f32(cfg.dtype, get("gate_logit").data, &w.gate_logit, 1);
  return w;
}

double branch_flops_per_token(const FuserConfig& cfg) {
  const double h = cfg.hidden_dim, i = cfg.intermediate_dim;
  const double in = double(cfg.sharer.kv_dim() + cfg.receiver.kv_dim()), out = double(cfg.receiver.kv_dim());
  const double macs = h * in                                    // in
                      + 2 * h * i                               // mlp1
                      + double(cfg.num_layers - 2) * 2 * h * i  // proj blocks
                      + h * out                                 // proj_out
                      + 2 * h * h                               // scalar block
                      + h * double(cfg.receiver.n_head_kv);     // scalar head
  return 2 * macs;
}

// ---------------------------------------------------------------------------------------------
// Scratch

Result<std::unique_ptr<ProjectorScratch>> ProjectorScratch::create(Backend& backend, const FuserConfig& cfg) {
  const size_t r = size_t(kFuseChunkRows);
  const size_t h = size_t(cfg.hidden_dim), u = size_t(std::max(cfg.hidden_dim, cfg.intermediate_dim));
  const size_t out = size_t(cfg.receiver.kv_dim()), heads = size_t(cfg.receiver.n_head_kv);
  const size_t in_s = size_t(cfg.sharer.kv_dim());
  const bool host = backend.device().buffer_type().is_host();
  const size_t sizes[] = {r * h, r * h, r * h, r * u, r * out, r * heads, host ? 0 : r * in_s, host ? 0 : r * out};
  size_t total = 0;
  for (size_t s : sizes) total += round_up_floats(s);
  std::unique_ptr<ProjectorScratch> sc(new ProjectorScratch());
  KVB_ASSIGN_OR_RETURN(sc->buffer_, backend.device().buffer_type().alloc(total * sizeof(float)));
  float* p = static_cast<float*>(sc->buffer_->data());
  float** slots[] = {&sc->x_, &sc->s_, &sc->norm_, &sc->u_, &sc->proj_, &sc->logits_, &sc->xs_, &sc->xt_};
  for (size_t k = 0; k < std::size(slots); ++k) {
    *slots[k] = sizes[k] > 0 ? p : nullptr;
    p += round_up_floats(sizes[k]);
  }
  return sc;
}

// ---------------------------------------------------------------------------------------------
// Upload

Result<std::unique_ptr<ProjectorBranch>> ProjectorBranch::upload(Backend& backend, const BranchTensors& w,
                                                                 const FuserConfig& cfg) {
  std::unique_ptr<ProjectorBranch> b(new ProjectorBranch());
  b->in_s_ = cfg.sharer.kv_dim();
  b->out_ = cfg.receiver.kv_dim();
  b->hidden_ = cfg.hidden_dim;
  b->inter_ = cfg.intermediate_dim;
  b->n_head_ = cfg.receiver.n_head_kv;
  b->gate_logit_ = w.gate_logit;
  const int64_t h = b->hidden_;
  if (w.in_w.n_dims != 2 || w.in_w.shape[0] != h || w.in_w.shape[1] != b->in_s_ + b->out_ ||
      w.proj.size() != size_t(cfg.num_layers - 2)) {
    return invalid_argument(
        fmt::format("fuser: branch tensors do not match the config (in.weight {})", w.in_w.describe()));
  }

  // ---- vectors: converted to f32 and copied into one device buffer ----
  std::vector<const Tensor*> vecs = {&w.in_b, &w.mlp1.norm, &w.proj_out_b, &w.scalar.norm, &w.scalar_head_b};
  for (const FfnBlockTensors& p : w.proj) vecs.push_back(&p.norm);
  size_t total = 0;
  for (const Tensor* v : vecs) total += round_up_floats(size_t(v->numel()));
  KVB_ASSIGN_OR_RETURN(b->vectors_, backend.device().buffer_type().alloc(total * sizeof(float)));
  std::vector<Tensor> dev;
  std::vector<float> tmp;
  size_t off = 0;
  for (const Tensor* v : vecs) {
    tmp.resize(size_t(v->numel()));
    to_f32(v->dtype, v->data, tmp.data(), v->numel());
    float* dst = static_cast<float*>(b->vectors_->data()) + off;
    KVB_RETURN_IF_ERROR(backend.copy_from_host(dst, tmp.data(), tmp.size() * sizeof(float)));
    dev.push_back(Tensor::make(DType::kF32, dst, {v->numel()}));
    off += round_up_floats(tmp.size());
  }
  b->in_b_ = dev[0];
  b->proj_out_b_ = dev[2];
  b->head_b_ = dev[4];

  // ---- matrices ----
  // W_in's sharer and receiver column blocks, as two host matrices (a temporary copy).
  const size_t eb = row_bytes(w.in_w.dtype, 1);
  std::vector<uint8_t> ws(size_t(h * b->in_s_) * eb), wt(size_t(h * b->out_) * eb);
  const auto* src = static_cast<const uint8_t*>(w.in_w.data);
  const size_t row = size_t(b->in_s_ + b->out_) * eb;
  for (int64_t r = 0; r < h; ++r) {
    std::memcpy(ws.data() + size_t(r * b->in_s_) * eb, src + size_t(r) * row, size_t(b->in_s_) * eb);
    std::memcpy(wt.data() + size_t(r * b->out_) * eb, src + size_t(r) * row + size_t(b->in_s_) * eb,
                size_t(b->out_) * eb);
  }
  KVB_ASSIGN_OR_RETURN(b->in_s_w_, backend.upload_weight(Tensor::make(w.in_w.dtype, ws.data(), {h, b->in_s_})));
  KVB_ASSIGN_OR_RETURN(b->in_t_w_, backend.upload_weight(Tensor::make(w.in_w.dtype, wt.data(), {h, b->out_})));
  auto upload_block = [&](const FfnBlockTensors& t, const Tensor& norm) -> Result<Block> {
    Block blk;
    blk.norm = norm;
    KVB_ASSIGN_OR_RETURN(blk.w1, backend.upload_weight(t.w1));
    KVB_ASSIGN_OR_RETURN(blk.w2, backend.upload_weight(t.w2));
    return blk;
  };
  KVB_ASSIGN_OR_RETURN(b->mlp1_, upload_block(w.mlp1, dev[1]));
  KVB_ASSIGN_OR_RETURN(b->scalar_, upload_block(w.scalar, dev[3]));
  for (size_t k = 0; k < w.proj.size(); ++k) {
    KVB_ASSIGN_OR_RETURN(Block blk, upload_block(w.proj[k], dev[5 + k]));
    b->proj_.push_back(std::move(blk));
  }
  KVB_ASSIGN_OR_RETURN(b->proj_out_w_, backend.upload_weight(w.proj_out_w));
  KVB_ASSIGN_OR_RETURN(b->head_w_, backend.upload_weight(w.scalar_head_w));
  return b;
}

size_t ProjectorBranch::weight_bytes() const {
  size_t n = vectors_->size() + in_s_w_->nbytes() + in_t_w_->nbytes() + proj_out_w_->nbytes() + head_w_->nbytes();
  for (const Block* blk : {&mlp1_, &scalar_}) n += blk->w1->nbytes() + blk->w2->nbytes();
  for (const Block& blk : proj_) n += blk.w1->nbytes() + blk.w2->nbytes();
  return n;
}

// ---------------------------------------------------------------------------------------------
// Forward

// x += w2 · gelu(w1 · rms_norm(x) ⊙ norm), in place on x [n][h]; norm [n][h] and u [n][i] are scratch.
Status ProjectorBranch::block(Backend& be, const Block& b, const Tensor& x, const Tensor& norm, const Tensor& u) const {
  KVB_RETURN_IF_ERROR(be.rms_norm(x, b.norm, kRmsNormEps, norm));
  KVB_RETURN_IF_ERROR(be.matmul(norm, *b.w1, u));
  KVB_RETURN_IF_ERROR(be.gelu(u, u));
  return be.matmul(u, *b.w2, x, /*accumulate=*/true);  // the residual comes free with accumulate
}

// One chunk: xs [n][in_s], xt [n][out] in device memory; xt is updated in place.
Status ProjectorBranch::forward(Backend& be, ProjectorScratch& s, const Tensor& xs, const Tensor& xt) const {
  const int64_t n = xs.shape[0];
  const Tensor x = rows_f32(s.x_, n, hidden_), sv = rows_f32(s.s_, n, hidden_), norm = rows_f32(s.norm_, n, hidden_);
  const Tensor u_inter = rows_f32(s.u_, n, inter_), u_hidden = rows_f32(s.u_, n, hidden_);
  const Tensor proj = rows_f32(s.proj_, n, out_), logits = rows_f32(s.logits_, n, n_head_);

  // in: x = b_in + W_in[:, sharer] · xs + W_in[:, receiver] · xt   (the concat, without a copy)
  KVB_RETURN_IF_ERROR(broadcast_rows(be, in_b_, x));
  KVB_RETURN_IF_ERROR(be.matmul(xs, *in_s_w_, x, true));
  KVB_RETURN_IF_ERROR(be.matmul(xt, *in_t_w_, x, true));
  // mlp1: the common embedding
  KVB_RETURN_IF_ERROR(block(be, mlp1_, x, norm, u_inter));
  // scalar path: one block (intermediate h), then one logit per receiver head
  KVB_RETURN_IF_ERROR(be.copy(sv.data, x.data, x.nbytes()));
  KVB_RETURN_IF_ERROR(block(be, scalar_, sv, norm, u_hidden));
  KVB_RETURN_IF_ERROR(broadcast_rows(be, head_b_, logits));
  KVB_RETURN_IF_ERROR(be.matmul(sv, *head_w_, logits, true));
  // projection path: L-2 blocks, then to the receiver's K/V width
  for (const Block& b : proj_) KVB_RETURN_IF_ERROR(block(be, b, x, norm, u_inter));
  KVB_RETURN_IF_ERROR(broadcast_rows(be, proj_out_b_, proj));
  KVB_RETURN_IF_ERROR(be.matmul(x, *proj_out_w_, proj, true));
  // fusion: xt += sigmoid(logits) ⊙ proj, per head
  return be.gate_add(xt, logits, proj, xt);
}

Status ProjectorBranch::fuse(Backend& be, ProjectorScratch& s, const Tensor& sharer, const Tensor& receiver,
                             bool sharer_on_device) const {
  const int64_t n = receiver.shape[0];
  const bool host = be.device().buffer_type().is_host();
  // The sharer is read where it is unless it must be staged (host rows, device backend): forward()
  // only reads xs.
  const bool stage_sharer = !host && !sharer_on_device;
  auto* xs_base = static_cast<char*>(sharer.data);
  auto* xt_host = static_cast<char*>(receiver.data);
  const size_t xs_row = size_t(in_s_) * sizeof(float), xt_row = size_t(out_) * sizeof(float);
  for (int64_t r0 = 0; r0 < n; r0 += kFuseChunkRows) {
    const int64_t m = std::min(kFuseChunkRows, n - r0);
    void* xs = xs_base + size_t(r0) * xs_row;
    void* xt = xt_host + size_t(r0) * xt_row;
    if (stage_sharer) KVB_RETURN_IF_ERROR(be.copy_from_host(s.xs_, xs, size_t(m) * xs_row));
    if (!host) KVB_RETURN_IF_ERROR(be.copy_from_host(s.xt_, xt, size_t(m) * xt_row));  // written back below
    KVB_RETURN_IF_ERROR(
        forward(be, s, rows_f32(stage_sharer ? s.xs_ : xs, m, in_s_), rows_f32(host ? xt : s.xt_, m, out_)));
    if (!host) KVB_RETURN_IF_ERROR(be.copy_to_host(xt, s.xt_, size_t(m) * xt_row));
  }
  return be.synchronize();
}

}  // namespace kvb::fuser
