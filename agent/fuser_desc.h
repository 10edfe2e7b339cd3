// FuserDesc: what receiver mode needs to know of a fuser, embedded (described from the loaded
// Fuser) or remote (from its FuserService GetInfo, remote_fuser.h), and the check that a fuser was
// built for a given model on one side. Protobuf-free.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/kv_wire.h"
#include "fuser/align.h"
#include "fuser/fuse_session.h"
#include "fuser/fuser.h"
#include "kernels/status.h"

namespace kvb::agent {

struct FuserDesc {
  std::string name;  // "sharer -> receiver"
  fuser::ModelSide sharer, receiver;
  std::vector<int32_t> layer_map;
  fuser::FusePlan plan;
  fuser::AlignStrategy strategy = fuser::AlignStrategy::kFirst;
};

// The embedded fuser's description.
FuserDesc describe(const fuser::Fuser& f);

// The fuser must have been built for `id` on that side (`who`: "sharer" or "receiver"):
// fingerprint when bound, shapes always. FAILED_PRECONDITION naming the mismatch.
Status check_side(const FuserDesc& f, const fuser::ModelSide& side, const ModelIdentity& id, std::string_view who);

}  // namespace kvb::agent
