// The scalar reference of the C2C fuser: one readable function per branch, in double precision,
// straight from the host tensors of the weights file. Tests check the backend path (projector.h,
// fuser.h) against it; it is far too slow for serving.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuser/fuser_config.h"
#include "fuser/projector.h"
#include "engine/safetensors.h"

namespace kvb::fuser {

// Fuses one branch in place, as Fuser::fuse: when w.gate_logit > 0,
//   receiver[t] += sigmoid(scalar path) ⊙ projection path   for every token t,
// otherwise nothing. sharer: f32 host [n][cfg.sharer.kv_dim()] (or [n][Hs][Ds]); receiver: f32 host
// [n][cfg.receiver.kv_dim()] (or [n][Ht][Dt]). INVALID_ARGUMENT for other shapes. Thread-safe.
Status fuse_reference(const BranchTensors& w, const FuserConfig& cfg, const Tensor& sharer, const Tensor& receiver);

// A whole fuser directory for the reference: config, mapped weights, every branch's tensors.
// Immutable after load; thread-safe.
class ReferenceFuser {
 public:
  // As Fuser::load, without a backend.
  static Result<std::unique_ptr<ReferenceFuser>> load(const std::string& dir);

  const FuserConfig& config() const { return cfg_; }
  const BranchTensors& branch(int32_t receiver_layer, bool is_v) const {
    return branches_[size_t(receiver_layer) * 2 + (is_v ? 1 : 0)];
  }
  // fuse_reference on branch (receiver_layer, is_v). INVALID_ARGUMENT for a layer out of range.
  Status fuse(int32_t receiver_layer, bool is_v, const Tensor& sharer, const Tensor& receiver) const;

 private:
  static Result<std::unique_ptr<ReferenceFuser>> load_impl(const std::string& dir);
  ReferenceFuser(FuserConfig cfg, SafetensorsFile file) : cfg_(std::move(cfg)), file_(std::move(file)) {}
  FuserConfig cfg_;
  SafetensorsFile file_;
  std::vector<BranchTensors> branches_;  // [n_layer][K, V]
};

}  // namespace kvb::fuser
