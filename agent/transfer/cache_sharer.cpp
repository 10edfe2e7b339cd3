#include "agent/transfer/cache_sharer.h"

#include <fmt/format.h>

#include <algorithm>

#include "agent/transfer/transport_choice.h"
#include "rpc/logging.h"

namespace kvb::agent {

namespace {

// The longest per-transfer deadline a receiver may ask for.
constexpr auto kMaxTransferTimeout = std::chrono::minutes(10);

}  // namespace

CacheSharer::CacheSharer(runtime::CacheStore& store, runtime::CacheStager& stager, const ModelIdentity& identity,
                         transport::EndpointInfo self, TransferSessions* sessions, uint64_t max_message_bytes)
    : store_(store),
      stager_(stager),
      identity_(identity),
      self_(std::move(self)),
      sessions_(sessions),
      max_message_bytes_(max_message_bytes) {}

Result<ExportSource> CacheSharer::open_export(const ExportSpec& spec) {
  KVB_ASSIGN_OR_RETURN(runtime::CacheEntry entry, store_.get(spec.cache_id));
  ExportSource out;
  // A GPU agent's caches are encoded from a host copy (pinned memory), so the bytes on the wire
  // are the same whatever the device; on the CPU this is the stored cache itself.
  KVB_ASSIGN_OR_RETURN(out.cache, stager_.to_host(std::move(entry.cache)));

  // Chunks must fit the message limit with room for zstd's worst-case growth and framing.
  const KvLayout& lay = out.cache->layout();
  const uint64_t limit = max_message_bytes_;
  const uint64_t budget = limit - limit / 32 - 4096;
  const uint64_t per_token =
      wire_payload_bytes(spec.dtype, uint32_t(lay.n_head_kv), uint32_t(lay.head_dim), /*count=*/1);
  const uint64_t max_chunk = std::max<uint64_t>(1, budget / per_token);
  const uint64_t auto_chunk = std::max<uint64_t>(1, (uint64_t(1) << 20) / per_token);
  const uint64_t chunk = std::min<uint64_t>(spec.chunk_tokens ? spec.chunk_tokens : auto_chunk, max_chunk);
  if (uint64_t(out.cache->n_tokens()) * 5 + 4096 > budget) {
    return resource_exhausted(fmt::format("cache {} ({} tokens): its header would exceed --max-message-bytes {}",
                                          spec.cache_id, out.cache->n_tokens(), limit));
  }
  KVB_ASSIGN_OR_RETURN(out.encoder, KvWireEncoder::create(*out.cache, identity_, spec.dtype, spec.compression,
                                                          static_cast<uint32_t>(chunk), spec.layers));
  return out;
}

Status CacheSharer::no_transfers() { return unimplemented("this agent serves no raw cache transfers"); }

Result<OpenedTransfer> CacheSharer::open_transfer(const OpenTransferSpec& spec) {
  if (!serves_transfers()) return no_transfers();
  KVB_RETURN_IF_ERROR(runtime::check_cache_id(spec.cache_id, "cache_id"));
  KVB_ASSIGN_OR_RETURN(const transport::TransportKind kind, sharer_transport(spec.transport, self_, spec.receiver));
  KVB_ASSIGN_OR_RETURN(runtime::CacheEntry entry, store_.get(spec.cache_id));

  std::chrono::milliseconds timeout = kDefaultTransferTimeout;
  if (spec.timeout.count() > 0) timeout = std::min<std::chrono::milliseconds>(spec.timeout, kMaxTransferTimeout);
  SharerSessionSpec session;
  session.cache_id = spec.cache_id;
  session.cache = entry.cache;
  session.kind = kind;
  session.layers = spec.layers;
  session.chunk_tokens = spec.chunk_tokens;
  session.timeout = timeout;
  session.receiver_metadata = spec.receiver_metadata;
  session.peer = spec.peer;
  KVB_ASSIGN_OR_RETURN(OpenedSession opened, sessions_->open(std::move(session)));

  OpenedTransfer out;
  out.id = opened.id;
  out.kind = kind;
  out.metadata = std::move(opened.metadata);
  // The header a raw pull announces: the cache as it is (its dtype, no compression), one chunk
  // per posted slice.
  const WireDType dtype = entry.cache->layout().dtype == DType::kF16 ? WireDType::kF16 : WireDType::kF32;
  out.header = cache_header(*entry.cache, identity_, dtype, WireCompression::kNone, spec.layers,
                            uint32_t(opened.plan.size()));
  out.chunk_tokens = spec.chunk_tokens;
  out.timeout = timeout;
  rpc::log_event(spdlog::level::info, "cache transfer opened",
                 {{"transfer", out.id.to_string()},
                  {"cache", spec.cache_id},
                  {"transport", transport::transport_name(kind)},
                  {"peer", spec.peer},
                  {"slices", int64_t(opened.plan.size())}});
  return out;
}

Result<std::unique_ptr<transport::BytePipe>> CacheSharer::take_stream(const transport::TransferId& id) {
  if (!serves_transfers()) return no_transfers();
  return sessions_->take_stream(id);
}

Status CacheSharer::close(const transport::TransferId& id, const Status& receiver_outcome) {
  if (!serves_transfers()) return Status::Ok();  // without sessions there is nothing to close
  return sessions_->close(id, receiver_outcome);
}

}  // namespace kvb::agent
