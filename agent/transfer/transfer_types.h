// The native types of cache transfers, protobuf-free (the proto glue is transfer_convert.h).
// Receiver side: what a pull asks for (PullOptions), what it sees while the cache lands
// (PullProgress) and what it gets (PulledCache, with how it travelled). Sharer side: an
// ExportCache stream asked for (ExportSpec), a raw transfer asked for (OpenTransferSpec) and
// opened (OpenedTransfer).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "engine/kv_cache.h"
#include "engine/kv_wire.h"
#include "kernels/status.h"
#include "transport/kv_transport.h"
#include "transport/select.h"

namespace kvb::agent {

// What a pull has landed so far, as PullOptions::on_data sees it, whatever the transport: the
// cache being filled (null until the header is in; its tokens are set, but a slice's rows hold
// data only once complete() says so) and which (layer, K/V) slices are complete. On a GPU agent a
// raw pull's cache is in device memory (KvCache::is_host() says which). Valid during the call only.
class PullProgress {
 public:
  virtual const KvCache* partial() const = 0;
  virtual bool complete(uint32_t layer, bool is_v) const = 0;

 protected:
  ~PullProgress() = default;
};

struct PullOptions {
  WireDType dtype = WireDType::kF32;
  WireCompression compression = WireCompression::kNone;
  // The receiver's transport choice; PeerClient::pull resolves it against the sharer's
  // TransportInfo (transport/select.h).
  transport::TransportChoice transport = transport::TransportChoice::kAuto;
  // Free cells a pulled cache gets beyond its own (KvWireDecoder's n_ctx_extra): what the request
  // appends after it (input, + max_tokens for a Generate) when it is the request's only context,
  // so that the engine can run the session in the pulled cache (SessionInput::owned_context).
  int32_t reserve_cells = 0;
  // Only these layers' K/V (a sharer's cache pulled for a fuser); absent = the whole cache.
  std::optional<KvLayerSet> layers;
  // The model the pulled cache must come from (borrowed); null = this agent's.
  const ModelIdentity* identity = nullptr;
  // Called on the pulling thread as data lands: after every accepted message of the grpc stream,
  // after every completed slice of a raw pull. A slice may be read once complete; a non-OK Status
  // aborts the pull with it. The transport keeps landing later slices meanwhile.
  std::function<Status(const PullProgress&)> on_data;
  // The cache must be in host memory (it is read by the CPU, e.g. sent on to a remote fuser): raw
  // transports, which land caches in device memory on a GPU, are then not used.
  bool host_cache = false;
};

// How one pull travelled: the request's choice and what select_transport made of it.
struct PullTransport {
  transport::TransportChoice requested = transport::TransportChoice::kAuto;
  transport::Selection selection;
};

struct PulledCache {
  std::unique_ptr<KvCache> cache;  // never null on success; nobody else holds it
  uint64_t wire_bytes = 0;         // serialized CacheChunk bytes received
  PullTransport transport;
};

// The per-transfer deadline of a raw pull when neither side asks for another, on both sides.
inline constexpr std::chrono::milliseconds kDefaultTransferTimeout{std::chrono::seconds(30)};

// ---- sharer side ----

// One ExportCache stream of a held cache.
struct ExportSpec {
  std::string cache_id;
  WireDType dtype = WireDType::kF32;
  WireCompression compression = WireCompression::kNone;
  uint32_t chunk_tokens = 0;  // 0 = the encoder's choice (~1 MiB chunks)
  std::optional<KvLayerSet> layers;  // only these layers' K/V (a fuser's pull); checked by the encoder
};

// One raw transfer a receiver asks to open (OpenTransferRequest).
struct OpenTransferSpec {
  std::string cache_id;
  std::string transport;                   // as asked: must be "nccl" or "cuda-ipc"
  transport::EndpointInfo receiver;        // the receiver as an endpoint (its TransportInfo)
  std::string receiver_metadata;           // the receiver endpoint's metadata()
  std::optional<KvLayerSet> layers;        // absent: every layer
  uint32_t chunk_tokens = 0;               // 0: one slice per (layer, K/V)
  std::chrono::milliseconds timeout{0};    // 0: kDefaultTransferTimeout
  std::string peer;                        // the receiver's gRPC peer, for logs
};

// What the receiver needs to run its side of an opened transfer (OpenTransferResponse).
struct OpenedTransfer {
  transport::TransferId id;
  transport::TransportKind kind = transport::TransportKind::kNccl;
  std::string metadata;      // the sharer endpoint's metadata()
  KvWireHeader header;       // the cache as it is (its dtype, no compression), one chunk per slice
  uint32_t chunk_tokens = 0;
  std::chrono::milliseconds timeout{0};
};

}  // namespace kvb::agent
