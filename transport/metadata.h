// The envelope of every transport's metadata() blob, and the host/process identities in it.
//
// Layout (little-endian): magic "KVBX", u32 version (1), str transport name, u8 role, 16 bytes
// endpoint id, 16 bytes process nonce, str host id, str body (the implementation's own fields).
// str = u32 length + bytes. The blob is opaque to the agents: they carry it as `bytes` and never
// parse it; connect() validates it (INVALID_ARGUMENT for anything malformed, another transport's,
// or an unknown version; FAILED_PRECONDITION for the same role on both sides).
#pragma once

#include <string>
#include <string_view>

#include "kernels/status.h"
#include "transport/kv_transport.h"

namespace kvb::transport {

inline constexpr uint32_t kMetadataVersion = 1;

struct Envelope {
  std::string transport;  // TransportCaps::name
  Role role = Role::kSharer;
  TransferId endpoint;    // random per endpoint
  TransferId process;     // process_nonce() of the process that made it
  std::string host_id;    // local_host_id() there
  std::string body;       // implementation-specific
};

std::string encode_envelope(const Envelope& e);
// Parses a blob and checks it is `transport`'s and from the other role than `my_role`.
Result<Envelope> decode_peer_envelope(std::string_view blob, std::string_view transport, Role my_role);

// 128 random bits drawn once per process: two endpoints with equal nonces live in one process
// (pids are not enough: containers reuse them).
const TransferId& process_nonce();
// Identifies the running kernel of this host: /proc/sys/kernel/random/boot_id (shared by the
// containers of one host, which share its GPUs and CUDA IPC), else "host:" + the hostname.
// Computed once. Empty only when neither can be read.
const std::string& local_host_id();

}  // namespace kvb::transport
