// One receiver layer's C2C projector (C2CProjector, notes §1a): weights and the forward pass on a
// kvb::Backend.
//
// A projector has two independent, identically shaped branches, K and V. With the sharer's
// per-token K (or V) xs [in_s = Hs·Ds] and the receiver's xt [out = Ht·Dt], one branch computes
//   x  = W_in · [xs ; xt] + b_in                                   [h]        (sharer columns first)
//   x  = block(x, mlp1)                                            [h]        (1 block, intermediate i)
//   p  = x;  for b in proj: p = block(p, b);  P = W_out · p + b_out  [out]    (L-2 blocks, intermediate i)
//   s  = block(x, scalar);  w = W_head · s + b_head                 [Ht]       (1 block, intermediate h)
//   xt = xt + sigmoid(w[head]) · P                                  [out]      (only when the gate is on)
// where block(x, b) = x + W2 · gelu(W1 · rms_norm(x, eps 1e-6) ⊙ norm) (bias-free), gelu is the exact
// erf GELU, and the hard gate of the branch is gate_logit > 0 (a gated-off branch is not run).
// projector_reference.h has the same computation as one scalar function.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuser/fuser_config.h"
#include "engine/safetensors.h"
#include "kernels/backend.h"

namespace kvb::fuser {

inline constexpr float kRmsNormEps = 1e-6f;
// Tokens per forward chunk: bounds the scratch activations (and matches the CPU GEMM's row block).
inline constexpr int64_t kFuseChunkRows = 256;

// ---- names and shapes in the weights file ----

// "projector.3.key_in.weight" for (3, K, "in.weight"); "value_" for V.
std::string branch_tensor_name(int32_t layer, bool is_v, std::string_view suffix);

struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;  // empty: a 0-dim scalar (the gate logit)
};
// Every tensor of one branch of receiver layer `layer`, with its shape under `cfg`, in the order the
// writers (synth_fuser, tools/convert_c2c.py) store them.
std::vector<TensorSpec> branch_tensor_specs(const FuserConfig& cfg, int32_t layer, bool is_v);

// ---- host weights: views into a safetensors file ----

// One residual FFN block: y = x + w2 · gelu(w1 · (rms_norm(x) ⊙ norm)).
struct FfnBlockTensors {
  Tensor norm;  // [h]
  Tensor w1;    // [i][h]
  Tensor w2;    // [h][i]
};

// One branch (K or V) of one receiver layer's projector. Tensors are in cfg.dtype (F32, BF16 or F16)
// and borrow the file's memory; in_s = sharer.kv_dim(), out = receiver.kv_dim(), Ht = receiver.n_head_kv.
struct BranchTensors {
  Tensor in_w;                        // [h][in_s + out]: sharer columns first, then receiver
  Tensor in_b;                        // [h]
  FfnBlockTensors mlp1;               // i = intermediate_dim
  std::vector<FfnBlockTensors> proj;  // num_layers - 2 blocks, i = intermediate_dim
  Tensor proj_out_w;                  // [out][h]
  Tensor proj_out_b;                  // [out]
  FfnBlockTensors scalar;             // i = h
  Tensor scalar_head_w;               // [Ht][h]
  Tensor scalar_head_b;               // [Ht]
  float gate_logit = 0.0f;            // hard gate: on iff > 0
};

// Finds and checks every tensor of a branch in `file`: presence (NOT_FOUND is reported as
// INVALID_ARGUMENT naming the tensor), dtype == cfg.dtype, and shape. The views live as long as `file`.
Result<BranchTensors> find_branch_tensors(const SafetensorsFile& file, const FuserConfig& cfg, int32_t layer,
                                          bool is_v);

// Multiply-adds of one branch per token, times 2 (the FLOPs).
double branch_flops_per_token(const FuserConfig& cfg);

// ---- device weights and the forward pass ----

// Activations for chunks of up to kFuseChunkRows tokens, in the backend's memory. Owned by one
// caller at a time (not thread-safe).
class ProjectorScratch {
 public:
  // RESOURCE_EXHAUSTED when the backend is out of memory.
  static Result<std::unique_ptr<ProjectorScratch>> create(Backend& backend, const FuserConfig& cfg);
  size_t nbytes() const { return buffer_->size(); }

 private:
  friend class ProjectorBranch;
  ProjectorScratch() = default;
  std::unique_ptr<Buffer> buffer_;
  float* x_ = nullptr;       // [R][h]   residual stream: projection path
  float* s_ = nullptr;       // [R][h]   residual stream: scalar (weight) path
  float* norm_ = nullptr;    // [R][h]   rms_norm output
  float* u_ = nullptr;       // [R][max(i, h)] FFN intermediate
  float* proj_ = nullptr;    // [R][out] projected K/V
  float* logits_ = nullptr;  // [R][Ht]  per-head fusion weight logits
  float* xs_ = nullptr;      // [R][in_s] device copy of the sharer rows (non-host backends only)
  float* xt_ = nullptr;      // [R][out]  device copy of the receiver rows (non-host backends only)
};

// One branch uploaded to a backend: matrices as packed kvb::Weight (W_in split into its sharer and
// receiver column blocks, so the concatenation is two accumulating matmuls), vectors as f32.
// Immutable after upload; the host tensors may be released afterwards.
class ProjectorBranch {
 public:
  // INVALID_ARGUMENT for tensors that do not match cfg; the backend's errors otherwise.
  static Result<std::unique_ptr<ProjectorBranch>> upload(Backend& backend, const BranchTensors& w,
                                                         const FuserConfig& cfg);

  float gate_logit() const { return gate_logit_; }
  bool gate_on() const { return gate_logit_ > 0.0f; }
  size_t weight_bytes() const;

  // Runs the branch on n tokens and adds the gated projection into `receiver` in place, whatever
  // the gate (the caller checks gate_on()). sharer: f32 [n][in_s] in host memory, or in the
  // backend's device memory when sharer_on_device; receiver: f32 host [n][out] (both 2-D,
  // contiguous; callers validate). Tokens go through in chunks of kFuseChunkRows. Synchronous:
  // the receiver holds the result on return. `backend` must be the one the branch was uploaded to.
  Status fuse(Backend& backend, ProjectorScratch& scratch, const Tensor& sharer, const Tensor& receiver,
              bool sharer_on_device) const;

 private:
  struct Block {
    Tensor norm;  // f32 [h], device
    std::unique_ptr<Weight> w1, w2;
  };
  ProjectorBranch() = default;
  Status block(Backend& be, const Block& b, const Tensor& x, const Tensor& norm, const Tensor& u) const;
  Status forward(Backend& be, ProjectorScratch& s, const Tensor& xs, const Tensor& xt) const;

  int64_t in_s_ = 0, out_ = 0, hidden_ = 0, inter_ = 0, n_head_ = 0;
  std::unique_ptr<Buffer> vectors_;          // every f32 vector below, in one device allocation
  std::unique_ptr<Weight> in_s_w_, in_t_w_;  // [h][in_s], [h][out]
  Tensor in_b_;
  Block mlp1_;
  std::vector<Block> proj_;
  std::unique_ptr<Weight> proj_out_w_;  // [out][h]
  Tensor proj_out_b_;
  Block scalar_;
  std::unique_ptr<Weight> head_w_;  // [Ht][h]
  Tensor head_b_;
  float gate_logit_ = 0.0f;
};

}  // namespace kvb::fuser
