#include "fuser/fuser_description.h"

#include <fmt/format.h>

namespace kvb::fuser {

FuserDescription describe(const Fuser& f) {
  const FuserConfig& c = f.config();
  FuserDescription d;
  d.name = fmt::format("{} -> {}", c.sharer.name, c.receiver.name);
  d.sharer = c.sharer;
  d.receiver = c.receiver;
  for (int32_t t = 0; t < c.receiver.n_layer; ++t) d.layer_map.push_back(f.sharer_layer(t));
  d.plan = fuse_plan(f);
  d.strategy = c.align_strategy;
  return d;
}

Status check_side(const FuserDescription& f, const ModelSide& side, const ModelIdentity& id, std::string_view who) {
  if (side.fingerprint != 0 && side.fingerprint != id.fingerprint) {
    return failed_precondition(fmt::format("the fuser ({}) is for a {} of fingerprint {:016x}; the {} runs {:016x}",
                                           f.name, who, side.fingerprint, who, id.fingerprint));
  }
  if (uint32_t(side.n_layer) != id.n_layer || uint32_t(side.n_head_kv) != id.n_head_kv ||
      uint32_t(side.head_dim) != id.head_dim) {
    return failed_precondition(fmt::format(
        "the fuser ({}) is for a {} with {} layers x {} kv heads x {}; the {} has {} x {} x {}", f.name, who,
        side.n_layer, side.n_head_kv, side.head_dim, who, id.n_layer, id.n_head_kv, id.head_dim));
  }
  return Status::Ok();
}

}  // namespace kvb::fuser
