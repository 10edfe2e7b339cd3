// config.json of a fuser directory: parse (every key checked, errors name the key), validate, write.
#include "fuser/fuser_config.h"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

namespace kvb::fuser {
namespace {

using json = nlohmann::json;

constexpr int32_t kMaxDim = 1 << 20;  // any layer count, head count, head dim or hidden size

Status bad_key(std::string_view key, std::string_view why) {
  return invalid_argument(fmt::format("fuser config: \"{}\" {}", key, why));
}

// obj[key] as an int in [lo, hi]; `required` false leaves `out` unchanged when the key is absent.
Status get_int(const json& obj, std::string_view prefix, const char* key, int32_t lo, int32_t hi, bool required,
               int32_t& out) {
  const std::string full = fmt::format("{}{}", prefix, key);
  const auto it = obj.find(key);
  if (it == obj.end()) return required ? bad_key(full, "is missing") : Status::Ok();
  if (!it->is_number_integer() || it->get<int64_t>() < lo || it->get<int64_t>() > hi) {
    return bad_key(full, fmt::format("must be an integer in [{}, {}], got {}", lo, hi, it->dump()));
  }
  out = int32_t(it->get<int64_t>());
  return Status::Ok();
}

Status get_string(const json& obj, std::string_view prefix, const char* key, bool required, std::string& out) {
  const std::string full = fmt::format("{}{}", prefix, key);
  const auto it = obj.find(key);
  if (it == obj.end()) return required ? bad_key(full, "is missing") : Status::Ok();
  if (!it->is_string()) return bad_key(full, fmt::format("must be a string, got {}", it->dump()));
  out = it->get<std::string>();
  return Status::Ok();
}

Result<uint64_t> parse_fingerprint(std::string_view key, const std::string& s) {
  uint64_t v = 0;
  if (s.size() != 18 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X')) {
    return bad_key(key, fmt::format("must be \"0x\" and 16 hex digits, got \"{}\"", s));
  }
  const auto [end, ec] = std::from_chars(s.data() + 2, s.data() + s.size(), v, 16);
  if (ec != std::errc() || end != s.data() + s.size()) {
    return bad_key(key, fmt::format("must be \"0x\" and 16 hex digits, got \"{}\"", s));
  }
  return v;
}

Status parse_side(const json& root, const char* key, ModelSide& side) {
  const auto it = root.find(key);
  if (it == root.end()) return bad_key(key, "is missing");
  if (!it->is_object()) return bad_key(key, "must be an object");
  const std::string prefix = std::string(key) + ".";
  KVB_RETURN_IF_ERROR(get_string(*it, prefix, "name", false, side.name));
  KVB_RETURN_IF_ERROR(get_int(*it, prefix, "n_layer", 1, kMaxDim, true, side.n_layer));
  KVB_RETURN_IF_ERROR(get_int(*it, prefix, "n_head_kv", 1, kMaxDim, true, side.n_head_kv));
  KVB_RETURN_IF_ERROR(get_int(*it, prefix, "head_dim", 1, kMaxDim, true, side.head_dim));
  std::string fp;
  KVB_RETURN_IF_ERROR(get_string(*it, prefix, "fingerprint", false, fp));
  if (it->contains("fingerprint")) {
    KVB_ASSIGN_OR_RETURN(side.fingerprint, parse_fingerprint(prefix + "fingerprint", fp));
    if (side.fingerprint == 0) return bad_key(prefix + "fingerprint", "must not be zero (omit it instead)");
  }
  return Status::Ok();
}

nlohmann::ordered_json side_to_json(const ModelSide& s) {
  nlohmann::ordered_json j = {
      {"name", s.name}, {"n_layer", s.n_layer}, {"n_head_kv", s.n_head_kv}, {"head_dim", s.head_dim}};
  if (s.fingerprint != 0) j["fingerprint"] = fmt::format("0x{:016x}", s.fingerprint);
  return j;
}

Result<FuserConfig> parse(std::string_view text) {
  const json root = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (root.is_discarded()) return invalid_argument("fuser config: not valid JSON");
  if (!root.is_object()) return invalid_argument("fuser config: not a JSON object");
  FuserConfig c;
  std::string format;
  KVB_RETURN_IF_ERROR(get_string(root, "", "format", true, format));
  if (format != "kvbridge-fuser")
    return bad_key("format", fmt::format("must be \"kvbridge-fuser\", got \"{}\"", format));
  int32_t version = 0;
  KVB_RETURN_IF_ERROR(get_int(root, "", "version", 0, kMaxDim, true, version));
  if (version != 1) return bad_key("version", fmt::format("{} is not supported (this build reads version 1)", version));
  KVB_RETURN_IF_ERROR(parse_side(root, "sharer", c.sharer));
  KVB_RETURN_IF_ERROR(parse_side(root, "receiver", c.receiver));

  const auto proj = root.find("projector");
  if (proj == root.end()) return bad_key("projector", "is missing");
  if (!proj->is_object()) return bad_key("projector", "must be an object");
  std::string type;
  KVB_RETURN_IF_ERROR(get_string(*proj, "projector.", "type", true, type));
  if (type != "C2CProjector")
    return bad_key("projector.type", fmt::format("must be \"C2CProjector\", got \"{}\"", type));
  KVB_RETURN_IF_ERROR(get_int(*proj, "projector.", "hidden_dim", 1, kMaxDim, true, c.hidden_dim));
  KVB_RETURN_IF_ERROR(get_int(*proj, "projector.", "intermediate_dim", 1, kMaxDim, true, c.intermediate_dim));
  KVB_RETURN_IF_ERROR(get_int(*proj, "projector.", "num_layers", 2, 1024, true, c.num_layers));

  KVB_RETURN_IF_ERROR(get_string(root, "", "mapping", false, c.mapping));
  if (const auto lm = root.find("layer_map"); lm != root.end()) {
    if (!lm->is_array()) return bad_key("layer_map", "must be an array of integers");
    for (const json& v : *lm) {
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() > kMaxDim) {
        return bad_key("layer_map", fmt::format("has a bad entry {}", v.dump()));
      }
      c.layer_map.push_back(int32_t(v.get<int64_t>()));
    }
  } else if (c.mapping == "explicit") {
    return bad_key("layer_map", "is required when mapping is \"explicit\"");
  } else if (c.mapping == "last_aligned") {
    c.layer_map = last_aligned_map(c.sharer.n_layer, c.receiver.n_layer);
  }

  if (const auto al = root.find("alignment"); al != root.end()) {
    if (!al->is_object()) return bad_key("alignment", "must be an object");
    if (const auto en = al->find("enabled"); en != al->end()) {
      if (!en->is_boolean()) return bad_key("alignment.enabled", "must be true or false");
      c.align_enabled = en->get<bool>();
    }
    std::string strategy = "first";
    KVB_RETURN_IF_ERROR(get_string(*al, "alignment.", "strategy", false, strategy));
    Result<AlignStrategy> s = parse_align_strategy(strategy);
    if (!s.ok())
      return bad_key("alignment.strategy", fmt::format("must be \"first\" or \"longest\", got \"{}\"", strategy));
    c.align_strategy = s.value();
  }

  KVB_RETURN_IF_ERROR(get_string(root, "", "weights", false, c.weights_file));
  std::string dtype = "f32";
  KVB_RETURN_IF_ERROR(get_string(root, "", "dtype", false, dtype));
  const std::optional<DType> dt = dtype_from_name(dtype);
  if (!dt || (*dt != DType::kF32 && *dt != DType::kBF16 && *dt != DType::kF16)) {
    return bad_key("dtype", fmt::format("must be \"f32\", \"bf16\" or \"f16\", got \"{}\"", dtype));
  }
  c.dtype = *dt;
  KVB_RETURN_IF_ERROR(validate_fuser_config(c));
  return c;
}

}  // namespace

ModelSide model_side(std::string name, const ModelIdentity& id) {
  ModelSide s;
  s.name = std::move(name);
  s.n_layer = int32_t(id.n_layer);
  s.n_head_kv = int32_t(id.n_head_kv);
  s.head_dim = int32_t(id.head_dim);
  s.fingerprint = id.fingerprint;
  return s;
}

std::vector<int32_t> last_aligned_map(int32_t sharer_layers, int32_t receiver_layers) {
  std::vector<int32_t> map;
  if (sharer_layers <= 0 || receiver_layers <= 0) return map;
  map.reserve(size_t(receiver_layers));
  const int64_t offset = int64_t(sharer_layers) - receiver_layers;
  for (int32_t t = 0; t < receiver_layers; ++t) {
    map.push_back(int32_t(std::clamp<int64_t>(t + offset, 0, sharer_layers - 1)));
  }
  return map;
}

Status validate_fuser_config(const FuserConfig& c) {
  for (const auto& [key, side] : {std::pair{"sharer", &c.sharer}, std::pair{"receiver", &c.receiver}}) {
    if (side->n_layer <= 0 || side->n_head_kv <= 0 || side->head_dim <= 0 || side->n_layer > kMaxDim ||
        side->n_head_kv > kMaxDim || side->head_dim > kMaxDim || side->kv_dim() > kMaxDim) {
      return bad_key(key, fmt::format("has a bad shape: n_layer {}, n_head_kv {}, head_dim {}", side->n_layer,
                                      side->n_head_kv, side->head_dim));
    }
  }
  if (c.hidden_dim <= 0 || c.hidden_dim > kMaxDim) return bad_key("projector.hidden_dim", "is out of range");
  if (c.intermediate_dim <= 0 || c.intermediate_dim > kMaxDim)
    return bad_key("projector.intermediate_dim", "is out of range");
  if (c.num_layers < 2 || c.num_layers > 1024) return bad_key("projector.num_layers", "must be in [2, 1024]");
  if (c.mapping != "last_aligned" && c.mapping != "explicit") {
    return bad_key("mapping", fmt::format("must be \"last_aligned\" or \"explicit\", got \"{}\"", c.mapping));
  }
  if (c.layer_map.size() != size_t(c.receiver.n_layer)) {
    return bad_key("layer_map",
                   fmt::format("has {} entries, receiver.n_layer is {}", c.layer_map.size(), c.receiver.n_layer));
  }
  for (size_t t = 0; t < c.layer_map.size(); ++t) {
    if (c.layer_map[t] < 0 || c.layer_map[t] >= c.sharer.n_layer) {
      return bad_key("layer_map", fmt::format("maps receiver layer {} to sharer layer {}, outside [0, {})", t,
                                              c.layer_map[t], c.sharer.n_layer));
    }
  }
  if (c.mapping == "last_aligned" && c.layer_map != last_aligned_map(c.sharer.n_layer, c.receiver.n_layer)) {
    return bad_key("layer_map", "disagrees with mapping \"last_aligned\" (use \"explicit\")");
  }
  const std::string& w = c.weights_file;
  if (w.empty() || w == "." || w == ".." || w.find('/') != std::string::npos || w.find('\0') != std::string::npos) {
    return bad_key("weights", fmt::format("must be a plain file name inside the fuser directory, got \"{}\"", w));
  }
  if (c.dtype != DType::kF32 && c.dtype != DType::kBF16 && c.dtype != DType::kF16) {
    return bad_key("dtype", fmt::format("{} is not a fuser weight type", dtype_name(c.dtype)));
  }
  return Status::Ok();
}

Result<FuserConfig> parse_fuser_config(std::string_view text) {
  try {
    return parse(text);
  } catch (const std::exception& e) {  // bad_alloc, or a json accessor this parser missed
    return invalid_argument(fmt::format("fuser config: {}", e.what()));
  }
}

Result<FuserConfig> load_fuser_config(const std::string& dir) {
  const std::string path = dir + "/config.json";
  std::ifstream in(path, std::ios::binary);
  if (!in) return not_found(fmt::format("fuser config {}: no such file", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (!in.good() && !in.eof()) return unavailable(fmt::format("fuser config {}: read error", path));
  Result<FuserConfig> c = parse_fuser_config(ss.str());
  if (!c.ok()) return c.status().with_context(path);
  return c;
}

std::string fuser_config_to_json(const FuserConfig& c) {
  nlohmann::ordered_json j;
  j["format"] = "kvbridge-fuser";
  j["version"] = 1;
  j["sharer"] = side_to_json(c.sharer);
  j["receiver"] = side_to_json(c.receiver);
  j["projector"] = {{"type", "C2CProjector"},
                    {"hidden_dim", c.hidden_dim},
                    {"intermediate_dim", c.intermediate_dim},
                    {"num_layers", c.num_layers}};
  j["mapping"] = c.mapping;
  j["layer_map"] = c.layer_map;
  j["alignment"] = {{"enabled", c.align_enabled}, {"strategy", std::string(align_strategy_name(c.align_strategy))}};
  j["weights"] = c.weights_file;
  j["dtype"] = std::string(dtype_name(c.dtype));
  return j.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
}

}  // namespace kvb::fuser
