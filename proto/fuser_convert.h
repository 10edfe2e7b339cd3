// fuser.proto's FuserInfo ↔ the fuser library: what GetInfo (and `kvbridge fuser info DIR`)
// says of a loaded fuser, and what a receiver makes of a remote fuser's answer. The KV slices of a
// Fuse stream use the wire conversions (proto/wire_convert.h). Threading: pure functions.
#pragma once

#include <string_view>

#include "fuser/fuser.h"
#include "fuser/fuser_description.h"
#include "kernels/status.h"
#include "kvbridge/v1/fuser.pb.h"

namespace kvb::fuser {

inline constexpr const char* kFuserVersion = "0.1.0";

// FuserInfo of a loaded fuser: pair (names, shapes, fingerprints), projector hyper-parameters, the
// layer map with each branch's hard gate, the slices of fuse_plan(), alignment, `backend` (a
// description of where it runs), weight bytes and kFuserVersion. `name` is FuserInfo.name. Used by
// GetInfo and by `kvbridge fuser info DIR` (the same summary without a server).
void fuser_info(const Fuser& fuser, std::string_view name, std::string_view backend, ::kvbridge::v1::FuserInfo* out);

// A remote fuser's FuserInfo as a description, checked for internal consistency (it is input from
// the network): INVALID_ARGUMENT for a layer map that does not fit the sides, or an unknown
// alignment strategy.
Result<FuserDescription> description_from_proto(const ::kvbridge::v1::FuserInfo& info);

void to_proto(const ModelSide& s, ::kvbridge::v1::FuserModelSide* out);
ModelSide side_from_proto(const ::kvbridge::v1::FuserModelSide& m);

}  // namespace kvb::fuser
