// Fuser: load (config → weights → per-branch checks → upload) and the validated fuse() entry point.
#include "fuser/fuser.h"

#include <fmt/format.h>

#include <exception>

#include "engine/safetensors.h"

namespace kvb::fuser {
namespace {

// OK iff t is f32 host data of n rows of `cols` values: [n][cols], or [n][a][b] with a·b == cols.
Status check_rows(const Tensor& t, const char* what, int64_t n, int64_t cols) {
  const bool shape_ok = (t.n_dims == 2 && t.shape[1] == cols) ||
                        (t.n_dims == 3 && t.shape[1] >= 0 && t.shape[2] >= 0 && t.shape[1] * t.shape[2] == cols);
  if (t.dtype != DType::kF32 || !shape_ok || t.shape[0] != n || n < 0) {
    return invalid_argument(fmt::format("fuser: {} must be f32 [{}][{}], got {}", what, n, cols, t.describe()));
  }
  if (n > 0 && t.data == nullptr) return invalid_argument(fmt::format("fuser: {} has null data", what));
  return Status::Ok();
}

}  // namespace

Fuser::~Fuser() = default;

Result<std::unique_ptr<Fuser>> Fuser::load(const std::string& dir, Backend& backend) {
  try {
    return load_impl(dir, backend);
  } catch (const std::exception& e) {  // bad_alloc of a host staging copy
    return resource_exhausted(fmt::format("fuser {}: {}", dir, e.what()));
  }
}

Result<std::unique_ptr<Fuser>> Fuser::load_impl(const std::string& dir, Backend& backend) {
  KVB_ASSIGN_OR_RETURN(FuserConfig cfg, load_fuser_config(dir));
  const std::string weights_path = dir + "/" + cfg.weights_file;
  KVB_ASSIGN_OR_RETURN(SafetensorsFile file, SafetensorsFile::open(weights_path));
  std::unique_ptr<Fuser> f(new Fuser(std::move(cfg), backend));
  const FuserConfig& c = f->cfg_;
  bool any_on = false;
  for (int32_t t = 0; t < c.receiver.n_layer; ++t) {
    for (bool is_v : {false, true}) {
      KVB_ASSIGN_OR_RETURN(BranchTensors w, find_branch_tensors(file, c, t, is_v));
      f->gate_logits_.push_back(w.gate_logit);
      std::unique_ptr<ProjectorBranch> branch;
      if (w.gate_logit > 0.0f) {
        Result<std::unique_ptr<ProjectorBranch>> b = ProjectorBranch::upload(backend, w, c);
        if (!b.ok())
          return b.status().with_context(fmt::format("fuser {}: uploading layer {} {}", dir, t, is_v ? "V" : "K"));
        branch = std::move(b).value();
        any_on = true;
      }
      f->branches_.push_back(std::move(branch));
    }
  }
  if (any_on) {
    KVB_ASSIGN_OR_RETURN(f->scratch_, ProjectorScratch::create(backend, c));
  }
  return f;  // the mapping is released here: the backend holds its own copies
}

int32_t Fuser::sharer_layer(int32_t receiver_layer) const {
  if (receiver_layer < 0 || receiver_layer >= cfg_.receiver.n_layer) return -1;
  return cfg_.layer_map[size_t(receiver_layer)];
}

bool Fuser::gate(int32_t receiver_layer, bool is_v) const {
  if (receiver_layer < 0 || receiver_layer >= cfg_.receiver.n_layer) return false;
  return gate_logits_[size_t(receiver_layer) * 2 + (is_v ? 1 : 0)] > 0.0f;
}

Status Fuser::fuse(int32_t receiver_layer, bool is_v, const Tensor& sharer, const Tensor& receiver,
                   SharerMemory sharer_memory) {
  if (receiver_layer < 0 || receiver_layer >= cfg_.receiver.n_layer) {
    return invalid_argument(
        fmt::format("fuser: receiver layer {} is outside [0, {})", receiver_layer, cfg_.receiver.n_layer));
  }
  const int64_t n = receiver.n_dims >= 1 ? receiver.shape[0] : -1;
  KVB_RETURN_IF_ERROR(check_rows(receiver, "receiver", n, cfg_.receiver.kv_dim()));
  KVB_RETURN_IF_ERROR(check_rows(sharer, "sharer", n, cfg_.sharer.kv_dim()));
  const auto lo = [](const Tensor& t) { return static_cast<const char*>(t.data); };
  if (n > 0 && lo(sharer) < lo(receiver) + receiver.nbytes() && lo(receiver) < lo(sharer) + sharer.nbytes()) {
    return invalid_argument("fuser: sharer and receiver overlap");
  }
  const ProjectorBranch* branch = branches_[size_t(receiver_layer) * 2 + (is_v ? 1 : 0)].get();
  if (branch == nullptr || n == 0) return Status::Ok();  // gate off: nothing to do
  const std::lock_guard<std::mutex> lock(mu_);
  return branch->fuse(backend_, *scratch_, sharer, receiver, sharer_memory == SharerMemory::kDevice);
}

uint64_t Fuser::weight_bytes() const {
  uint64_t n = 0;
  for (const auto& b : branches_) n += b != nullptr ? b->weight_bytes() : 0;
  return n;
}

double Fuser::flops_per_token(bool /*is_v*/) const { return branch_flops_per_token(cfg_); }

}  // namespace kvb::fuser
