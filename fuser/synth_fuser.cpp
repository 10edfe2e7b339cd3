// Synthetic fuser writer: config.json + a streamed safetensors file of seeded, torch-scaled weights.
#include "fuser/synth_fuser.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string_view>
#include <vector>

#include "fuser/projector.h"
#include "engine/safetensors.h"

namespace kvb::fuser {
namespace {

constexpr int64_t kChunkElems = int64_t(1) << 20;

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t fnv1a(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (char c : s) h = (h ^ uint8_t(c)) * 0x100000001b3ull;
  return h;
}

bool ends_with(std::string_view s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.substr(s.size() - suffix.size()) == suffix;
}

// Values of one tensor: value(k) = offset + scale · u_k, u_k uniform in [-1, 1).
struct Init {
  float offset = 0.0f;
  float scale = 0.0f;
};

Init init_for(const TensorSpec& spec, const FuserConfig& cfg) {
  const std::string_view name = spec.name;
  if (ends_with(name, "norm.weight")) return {1.0f, 0.1f};
  if (spec.shape.size() == 2) return {0.0f, 1.0f / std::sqrt(float(spec.shape[1]))};  // Linear weight: fan_in
  // Biases take their Linear's fan_in: in.bias sees the concatenated K/V, the others the hidden size.
  if (ends_with(name, "in.bias")) return {0.0f, 1.0f / std::sqrt(float(cfg.sharer.kv_dim() + cfg.receiver.kv_dim()))};
  return {0.0f, 1.0f / std::sqrt(float(cfg.hidden_dim))};
}

Status write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return unavailable(fmt::format("synthetic fuser: cannot write {}", path));
  return Status::Ok();
}

}  // namespace

bool synthetic_gate_on(GatePattern gates, int32_t layer, bool is_v) {
  switch (gates) {
    case GatePattern::kAllOn:
      return true;
    case GatePattern::kAllOff:
      return false;
    case GatePattern::kAlternate:
      switch (layer % 4) {
        case 0:
          return true;
        case 1:
          return !is_v;
        case 2:
          return is_v;
        default:
          return false;
      }
  }
  return false;
}

namespace {

Status write_synthetic(const std::string& dir, const FuserConfig& cfg_in, uint64_t seed, GatePattern gates) {
  FuserConfig cfg = cfg_in;
  if (cfg.layer_map.empty() && cfg.mapping == "last_aligned") {
    cfg.layer_map = last_aligned_map(cfg.sharer.n_layer, cfg.receiver.n_layer);
  }
  KVB_RETURN_IF_ERROR(validate_fuser_config(cfg));
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return unavailable(fmt::format("synthetic fuser: cannot create {}: {}", dir, ec.message()));
  KVB_RETURN_IF_ERROR(write_text(dir + "/config.json", fuser_config_to_json(cfg)));

  std::vector<TensorSpec> specs;
  for (int32_t t = 0; t < cfg.receiver.n_layer; ++t) {
    for (bool is_v : {false, true}) {
      for (TensorSpec& s : branch_tensor_specs(cfg, t, is_v)) specs.push_back(std::move(s));
    }
  }
  SafetensorsWriter w;
  w.set_metadata("format", "kvbridge-fuser");
  w.set_metadata("generator", fmt::format("kvbridge synthetic fuser, seed {}", seed));
  for (const TensorSpec& s : specs) KVB_RETURN_IF_ERROR(w.declare(s.name, cfg.dtype, s.shape));
  KVB_RETURN_IF_ERROR(w.open(dir + "/" + cfg.weights_file));

  std::vector<float> values;
  std::vector<uint8_t> bytes;
  int32_t layer = 0;
  bool is_v = false;
  for (const TensorSpec& s : specs) {
    int64_t numel = 1;
    for (int64_t d : s.shape) numel *= d;
    if (ends_with(s.name, "gate_logit")) {
      // Specs come layer by layer, K then V; the gate logit closes a branch.
      values.assign(1, synthetic_gate_on(gates, layer, is_v) ? 1.0f : -1.0f);
      bytes.resize(row_bytes(cfg.dtype, 1));
      from_f32(cfg.dtype, values.data(), bytes.data(), 1);
      KVB_RETURN_IF_ERROR(w.write(bytes.data(), bytes.size()));
      if (is_v) ++layer;
      is_v = !is_v;
      continue;
    }
    const Init init = init_for(s, cfg);
    uint64_t state = seed ^ fnv1a(s.name);
    for (int64_t k0 = 0; k0 < numel; k0 += kChunkElems) {
      const int64_t m = std::min(kChunkElems, numel - k0);
      values.resize(size_t(m));
      for (float& v : values) {
        const double u = double(splitmix64(state) >> 11) * 0x1.0p-53 * 2.0 - 1.0;  // [-1, 1)
        v = init.offset + init.scale * float(u);
      }
      bytes.resize(row_bytes(cfg.dtype, m));
      from_f32(cfg.dtype, values.data(), bytes.data(), m);
      KVB_RETURN_IF_ERROR(w.write(bytes.data(), bytes.size()));
    }
  }
  return w.finish();
}

}  // namespace

Status write_synthetic_fuser(const std::string& dir, const FuserConfig& cfg, uint64_t seed, GatePattern gates) {
  try {
    return write_synthetic(dir, cfg, seed, gates);
  } catch (const std::exception& e) {
    return resource_exhausted(fmt::format("synthetic fuser {}: {}", dir, e.what()));
  }
}

}  // namespace kvb::fuser
