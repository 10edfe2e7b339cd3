#include "proto/fuser_convert.h"

#include <fmt/format.h>

#include <string>

#include "fuser/fuse_session.h"
#include "proto/wire_convert.h"

namespace kvb::fuser {

namespace pb = ::kvbridge::v1;

void to_proto(const ModelSide& s, pb::FuserModelSide* out) {
  out->set_name(s.name);
  out->set_n_layer(uint32_t(s.n_layer));
  out->set_n_head_kv(uint32_t(s.n_head_kv));
  out->set_head_dim(uint32_t(s.head_dim));
  out->set_fingerprint(s.fingerprint);
}

ModelSide side_from_proto(const pb::FuserModelSide& m) {
  ModelSide s;
  s.name = m.name();
  s.n_layer = int32_t(m.n_layer());
  s.n_head_kv = int32_t(m.n_head_kv());
  s.head_dim = int32_t(m.head_dim());
  s.fingerprint = m.fingerprint();
  return s;
}

void fuser_info(const Fuser& fuser, std::string_view name, std::string_view backend, pb::FuserInfo* out) {
  const FuserConfig& c = fuser.config();
  out->Clear();
  out->set_name(std::string(name));
  out->set_version(kFuserVersion);
  to_proto(c.sharer, out->mutable_sharer());
  to_proto(c.receiver, out->mutable_receiver());
  out->set_projector("C2CProjector");
  out->set_hidden_dim(uint32_t(c.hidden_dim));
  out->set_intermediate_dim(uint32_t(c.intermediate_dim));
  out->set_num_layers(uint32_t(c.num_layers));
  for (int32_t t = 0; t < c.receiver.n_layer; ++t) {
    pb::FuserLayer* l = out->add_layers();
    l->set_receiver_layer(uint32_t(t));
    l->set_sharer_layer(uint32_t(fuser.sharer_layer(t)));
    l->set_k_gate(fuser.gate(t, false));
    l->set_v_gate(fuser.gate(t, true));
  }
  const FusePlan plan = fuse_plan(fuser);
  wire::to_proto(plan.sharer, out->mutable_sharer_layers());
  wire::to_proto(plan.receiver, out->mutable_receiver_layers());
  out->set_alignment(c.align_enabled);
  out->set_alignment_strategy(std::string(align_strategy_name(c.align_strategy)));
  out->set_backend(std::string(backend));
  out->set_weight_bytes(fuser.weight_bytes());
}

Result<FuserDescription> description_from_proto(const pb::FuserInfo& info) {
  FuserDescription d;
  d.sharer = side_from_proto(info.sharer());
  d.receiver = side_from_proto(info.receiver());
  d.name = fmt::format("{} -> {}", d.sharer.name, d.receiver.name);
  if (info.layers_size() != d.receiver.n_layer) {
    return invalid_argument(fmt::format("the fuser describes {} layers for a {}-layer receiver", info.layers_size(),
                                        d.receiver.n_layer));
  }
  for (const pb::FuserLayer& l : info.layers()) {
    if (l.sharer_layer() >= uint32_t(d.sharer.n_layer)) {
      return invalid_argument(
          fmt::format("the fuser maps to sharer layer {} of {}", l.sharer_layer(), d.sharer.n_layer));
    }
    d.layer_map.push_back(int32_t(l.sharer_layer()));
  }
  d.plan.sharer = wire::from_proto(info.sharer_layers());
  d.plan.receiver = wire::from_proto(info.receiver_layers());
  auto strategy = parse_align_strategy(info.alignment_strategy().empty() ? "first" : info.alignment_strategy());
  if (!strategy.ok()) return strategy.status();
  d.strategy = *strategy;
  return d;
}

}  // namespace kvb::fuser
