// ModelIdentity: everything that must match for one model's KV cache to be reused as is by
// another process — architecture, shapes, RoPE, and xxh3-64 hashes of the tokenizer and of every
// weight tensor — with a fingerprint over all of it. Caches carry it on the wire (kv_wire.h), and
// fusers name the models they were built for by it.
//
// Threading: pure functions; model_identity reads the weights (read-only).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "engine/model.h"

namespace kvb {

// Everything that must match for a cache to be reused as is. Hashes are xxh3-64, seed 0.
struct ModelIdentity {
  std::string arch;
  uint32_t n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0, n_vocab = 0;
  std::string rope_type;  // "normal" | "neox"
  uint32_t rope_n_rot = 0;
  float rope_theta = 0, rope_freq_scale = 0, norm_eps = 0;
  uint64_t tokenizer_hash = 0;  // over pieces, scores, types, special ids and flags (0: no tokenizer)
  uint64_t weights_hash = 0;    // over every weight tensor: name, dtype, shape, bytes
  uint64_t fingerprint = 0;     // over all fields above

  bool operator==(const ModelIdentity&) const = default;
};

// Computes the identity of a loaded model. Hashes all weight bytes once (about 10 GB/s);
// call it at startup, not per request.
ModelIdentity model_identity(const Model& m);
// Recomputes `fingerprint` from the other fields.
uint64_t identity_fingerprint(const ModelIdentity& id);
// Name of the first field that differs ("n_layer", "weights_hash", ...), empty when equal.
std::string first_difference(const ModelIdentity& expected, const ModelIdentity& got);
// The first field that differs with both values printed (floats in their shortest round-trip
// form, hashes as 16 hex digits); nullopt when equal.
struct IdentityDifference {
  std::string field, expected, got;
};
std::optional<IdentityDifference> find_difference(const ModelIdentity& expected, const ModelIdentity& got);

}  // namespace kvb
