// The native types of a cache pull, protobuf-free: what the receiver asks for (PullOptions), what it
// sees while the cache lands (PullProgress) and what it gets (PulledCache, with how it travelled).
// Used by the agent's request conversion, the context fuser and the cache puller alike.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>

#include "engine/kv_cache.h"
#include "engine/kv_wire.h"
#include "kernels/status.h"
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

}  // namespace kvb::agent
