// FuserDescription: what a receiver needs to know of a fuser — its pair, layer map, the slices a
// fusion carries and the token alignment — whether the fuser is loaded in this process
// (describe) or served by a FuserService (fuser.proto FuserInfo, proto/fuser_convert.h); and the
// check that a fuser was built for a given model on one side. Threading: pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model_identity.h"
#include "fuser/align.h"
#include "fuser/fuse_session.h"
#include "fuser/fuser.h"
#include "kernels/status.h"

namespace kvb::fuser {

struct FuserDescription {
  std::string name;  // "sharer -> receiver"
  ModelSide sharer, receiver;
  std::vector<int32_t> layer_map;  // [receiver layer] → its sharer layer
  FusePlan plan;
  AlignStrategy strategy = AlignStrategy::kFirst;
};

// A loaded fuser's description.
FuserDescription describe(const Fuser& f);

// `side` of fuser `f` must have been built for `id` (`who`: "sharer" or "receiver"): fingerprint
// when bound, shapes always. FAILED_PRECONDITION naming the mismatch.
Status check_side(const FuserDescription& f, const ModelSide& side, const ModelIdentity& id, std::string_view who);

}  // namespace kvb::fuser
