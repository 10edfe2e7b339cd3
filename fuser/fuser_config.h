// FuserConfig: the immutable description of a C2C fuser directory (format in fuser/README.md).
//
// A fuser directory holds `config.json` (this struct, as JSON) and the weights file it names
// (`model.safetensors`). The fuser maps a sharer model's K/V into a receiver model's K/V space:
// one projector per receiver layer t, fed by sharer layer layer_map[t].
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "engine/model_identity.h"
#include "fuser/align.h"     // AlignStrategy
#include "kernels/dtype.h"
#include "kernels/status.h"

namespace kvb::fuser {

// One side of the pair: the KV shape the fuser was trained on.
struct ModelSide {
  std::string name;  // e.g. "Qwen/Qwen3-0.6B" (informational)
  int32_t n_layer = 0;
  int32_t n_head_kv = 0;
  int32_t head_dim = 0;
  uint64_t fingerprint = 0;  // model fingerprint the fuser is bound to; 0 = not bound (shapes only)

  int64_t kv_dim() const { return int64_t(n_head_kv) * head_dim; }  // elements per token per K or V
  bool operator==(const ModelSide&) const = default;
};

// The side of a pair bound to one model: its KV shape and fingerprint.
ModelSide model_side(std::string name, const ModelIdentity& id);

struct FuserConfig {
  ModelSide sharer, receiver;
  // C2CProjector hyper-parameters (per branch: hidden h, FFN intermediate i, num_layers L >= 2).
  int32_t hidden_dim = 1024, intermediate_dim = 1024, num_layers = 3;
  std::string mapping = "last_aligned";  // "last_aligned" | "explicit"
  std::vector<int32_t> layer_map;        // [receiver.n_layer] -> sharer layer
  bool align_enabled = false;            // token alignment (different tokenizers)
  AlignStrategy align_strategy = AlignStrategy::kFirst;
  std::string weights_file = "model.safetensors";  // a plain file name inside the fuser directory
  DType dtype = DType::kF32;                       // of every tensor in the weights file: F32, BF16 or F16

  bool operator==(const FuserConfig&) const = default;
};

// Parses and validates config.json text. INVALID_ARGUMENT naming the bad key ("sharer.n_layer ...").
// For mapping "last_aligned" a missing layer_map is computed; a present one must agree with it.
Result<FuserConfig> parse_fuser_config(std::string_view json);
// Reads <dir>/config.json. NOT_FOUND when it is missing.
Result<FuserConfig> load_fuser_config(const std::string& dir);
// The JSON text of config.json (always with layer_map). parse_fuser_config(fuser_config_to_json(c)) == c
// for a valid c.
std::string fuser_config_to_json(const FuserConfig& cfg);
// Checks a config built in code (the checks of parse_fuser_config). INVALID_ARGUMENT naming the field.
Status validate_fuser_config(const FuserConfig& cfg);

// C2C's "last_aligned" map: receiver layer t <- sharer layer clamp(t + S - T, 0, S - 1), so the last
// layers line up. [T] entries; empty when S or T is not positive.
std::vector<int32_t> last_aligned_map(int32_t sharer_layers, int32_t receiver_layers);

}  // namespace kvb::fuser
