// Fuser: a loaded C2C fuser on a kvb::Backend — the runtime API of kvbridge::fuser.
//
// Loading reads <dir>/config.json (fuser_config.h) and the safetensors weights it names, checks
// every tensor, and uploads the branches whose hard gate is on (a gated-off branch never runs, so
// its weights are checked but not kept). fuse() then rewrites a receiver layer's K or V in place:
//   receiver[t] += sigmoid(w_head(t)) ⊙ P(t)   with (w, P) = projector(sharer[t], receiver[t]),
// for the receiver layer's projector fed by sharer layer sharer_layer(t) (projector.h has the math).
// Tokens are independent, so callers may fuse any subset of positions, chunk by chunk.
//
// Ownership: the Fuser borrows the Backend given to load(), which must outlive it. Threading: fuse()
// is thread-safe (calls are serialized inside); the backend must not be driven by another thread
// while a fuse() runs. The accessors are immutable and lock-free.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fuser/fuser_config.h"
#include "fuser/projector.h"
#include "kernels/backend.h"

namespace kvb::fuser {

// Where the sharer rows given to Fuser::fuse live.
enum class SharerMemory {
  kHost,    // host memory (staged to the device chunk by chunk on a GPU backend)
  kDevice,  // the memory of the Fuser's backend device
};

class Fuser {
 public:
  // Loads dir/config.json and the weights it names; validates every tensor's presence, shape and dtype
  // (INVALID_ARGUMENT naming the tensor), uploads matrices to `backend` (borrowed, must outlive the Fuser).
  // NOT_FOUND when config.json or the weights file is missing.
  static Result<std::unique_ptr<Fuser>> load(const std::string& dir, Backend& backend);
  ~Fuser();

  const FuserConfig& config() const { return cfg_; }
  // layer_map[t]: the sharer layer feeding receiver layer t; -1 for t outside [0, receiver.n_layer).
  int32_t sharer_layer(int32_t receiver_layer) const;
  // Hard gate of a branch: its logit > 0. False for a layer out of range.
  bool gate(int32_t receiver_layer, bool is_v) const;

  // Fuses one branch in place. receiver: [n_tokens][receiver.n_head_kv * receiver.head_dim] f32 host
  // (or [n_tokens][n_head_kv][head_dim]), sharer: [n_tokens][sharer kv_dim] f32 (or 3-D likewise), in
  // host memory or, with SharerMemory::kDevice, in the memory of the backend's device (read in place,
  // never copied: a cache that landed on the agent's GPU over NCCL or CUDA IPC). On a host backend
  // both are the same memory. When gate(t, is_v) is off, returns OK without touching anything.
  // INVALID_ARGUMENT for a layer out of range, wrong shapes/dtypes, or overlapping tensors.
  // Synchronous; thread-safe (serialized).
  Status fuse(int32_t receiver_layer, bool is_v, const Tensor& sharer, const Tensor& receiver,
              SharerMemory sharer_memory = SharerMemory::kHost);

  // Device bytes of the uploaded weights (gated-on branches only; the scratch activations, a few MiB,
  // are not counted).
  uint64_t weight_bytes() const;
  // FLOPs of one branch for one token (for benchmarks); the same for K and V.
  double flops_per_token(bool is_v) const;

 private:
  Fuser(FuserConfig cfg, Backend& backend) : cfg_(std::move(cfg)), backend_(backend) {}
  static Result<std::unique_ptr<Fuser>> load_impl(const std::string& dir, Backend& backend);

  FuserConfig cfg_;
  Backend& backend_;
  std::vector<float> gate_logits_;                          // [n_layer][K, V]
  std::vector<std::unique_ptr<ProjectorBranch>> branches_;  // [n_layer][K, V]; null when gated off
  std::unique_ptr<ProjectorScratch> scratch_;               // null when every gate is off
  std::mutex mu_;                                           // serializes fuse()
};

}  // namespace kvb::fuser
