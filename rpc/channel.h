// The one way kvbridge opens a gRPC channel — agents calling peers and fusers, the client library,
// the CLI: credentials (insecure, TLS, or mutual TLS with a client certificate), message limits,
// and for agent-to-agent transfers HTTP/2 keepalive pings and fast reconnects. The bearer token
// travels per call (rpc/auth.h BearerAuth::attach, or the client's ClientChannel::prepare).
//
// Threading: make_channel is reentrant; a grpc::Channel is thread-safe.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

namespace grpc {
class Channel;
}

namespace kvb::rpc {

struct ChannelConfig {
  uint64_t max_message_bytes = uint64_t(64) << 20;  // both directions; clamped to gRPC's int limit
  bool tls = false;
  std::string root_pem;     // roots that must have signed the server's certificate; empty = system roots
  std::string cert_pem;     // client certificate chain presented for mutual TLS; empty = none
  std::string key_pem;      // its private key
  std::string server_name;  // overrides the name checked against the server's certificate; empty = the host
  // A long transfer between agents: ping every 5 s (5 s timeout) even while a stream carries no data,
  // so that a hung peer is noticed, and reconnect within 0.2–2 s instead of backing off for a minute.
  bool peer_keepalive = false;
};

// A channel to `address` ("host:port"). Never fails: connection errors surface on the first call.
std::shared_ptr<grpc::Channel> make_channel(const std::string& address, const ChannelConfig& config);

}  // namespace kvb::rpc
