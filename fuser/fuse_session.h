// FuseSession: one fusion, natively — two kv_wire input streams in, one kv_wire stream out.
//
// Inputs are the sharer's and the receiver's caches over the same token positions, each a complete
// kv_wire stream (header, data chunks, trailer) that carries only the slices the fuser needs
// (fuse_plan: the receiver's (layer, K/V) slices whose gate is on, and the sharer slices the layer
// map sends them). The two streams may be interleaved in any order. As soon as a receiver slice
// and its sharer slice have both arrived, the slice is fused in place (Fuser::fuse) and becomes
// available as output chunks; the output is one kv_wire stream of the receiver's model carrying
// exactly the fused slices, in layer order (K before V), so a receiver can decode it over its own
// cache (KvWireDecoder::create_into).
//
// Checks, before anything is allocated: a header whose model does not fit the fuser's pair
// (fingerprint when the fuser is bound to one, else layers/heads/head size) is FAILED_PRECONDITION
// naming the side and the field; a header carrying other slices than the plan is
// FAILED_PRECONDITION; the two streams must have equal token counts and pos0 (INVALID_ARGUMENT).
// Everything else (order within a stream, sizes, checksums, limits) is KvWireDecoder's, with its
// codes. Errors are sticky: after the first one every call returns it.
//
// Threading: one thread at a time. The session borrows the Fuser (which must outlive it).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>

#include "engine/kv_wire.h"
#include "fuser/fuser.h"

namespace kvb::fuser {

// The slices a fusion carries, from the gates and the layer map.
struct FusePlan {
  KvLayerSet sharer;    // sharer slices to send: layer_map[t] for every gated-on receiver slice t
  KvLayerSet receiver;  // receiver slices to send, fused and sent back: those whose gate is on
};
FusePlan fuse_plan(const Fuser& fuser);

struct FuseSessionOptions {
  WireDType dtype = WireDType::kF32;                      // of the output stream
  WireCompression compression = WireCompression::kNone;  // of the output stream
  KvWireLimits limits;                                    // per input stream
};

struct FuseSessionStats {
  uint32_t n_tokens = 0;
  uint32_t slices_fused = 0;
  double fuse_ms = 0;           // inside Fuser::fuse
  uint64_t bytes_received = 0;  // input payload bytes, as sent
};

class FuseSession {
 public:
  enum class Side { kSharer, kReceiver };

  FuseSession(Fuser& fuser, FuseSessionOptions opt);
  ~FuseSession();
  FuseSession(const FuseSession&) = delete;
  FuseSession& operator=(const FuseSession&) = delete;

  // Each side: exactly one header, then its data chunks, then its trailer.
  Status add_header(Side side, const KvWireHeader& header);
  Status add_chunk(Side side, const KvWireChunkView& chunk);
  Status add_trailer(Side side, const KvWireTrailer& trailer);

  // Output, in order: the header (once both input headers were accepted), the data chunks (each
  // as soon as its slice is fused), the trailer (once both inputs ended and every chunk was taken).
  // Each returns false / nullopt when nothing is ready yet.
  std::optional<KvWireHeader> take_header();
  bool next_chunk(KvWireChunk& out);
  std::optional<KvWireTrailer> take_trailer();
  // The output trailer was taken: the session is over.
  bool done() const { return trailer_taken_; }

  const FuseSessionStats& stats() const { return stats_; }

 private:
  struct Input;
  Input& input(Side side) { return side == Side::kSharer ? *sharer_ : *receiver_; }
  Status check_header(Side side, const KvWireHeader& header) const;
  Status start_output();
  Status fuse_ready();  // fuses every receiver slice whose inputs are complete
  Status fail(Status s);

  Fuser& fuser_;
  const FuseSessionOptions opt_;
  const FusePlan plan_;
  Status error_;
  std::unique_ptr<Input> sharer_, receiver_;
  std::vector<uint8_t> fused_;  // [receiver n_layer][2]: 1 once fused
  std::unique_ptr<KvWireEncoder> out_;
  bool header_taken_ = false, trailer_taken_ = false;
  FuseSessionStats stats_;
};

}  // namespace kvb::fuser
