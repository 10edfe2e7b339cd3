// The synthetic fuser shape the end-to-end tests share for the stories260K → aidreams260K pair:
// hidden 64, intermediate 96, 3 layers, token alignment on (the two tokenizers differ). Written
// with fuser::write_synthetic_fuser; binaries that include this link kvbridge::fuser.
#pragma once

#include "engine/kv_wire.h"
#include "fuser/fuser_config.h"

namespace kvb::test {

inline fuser::FuserConfig pair_fuser_config(const ModelIdentity& sharer, const ModelIdentity& receiver,
                                            const char* sharer_name = "stories260K",
                                            const char* receiver_name = "aidreams260K") {
  fuser::FuserConfig cfg;
  cfg.sharer = fuser::model_side(sharer_name, sharer);
  cfg.receiver = fuser::model_side(receiver_name, receiver);
  cfg.hidden_dim = 64;
  cfg.intermediate_dim = 96;
  cfg.num_layers = 3;
  cfg.align_enabled = true;
  return cfg;
}

}  // namespace kvb::test
