#include "rpc/channel.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include <algorithm>
#include <climits>

namespace kvb::rpc {

std::shared_ptr<grpc::Channel> make_channel(const std::string& address, const ChannelConfig& c) {
  grpc::ChannelArguments args;
  const int max_msg = static_cast<int>(std::min<uint64_t>(c.max_message_bytes, INT32_MAX));
  args.SetMaxReceiveMessageSize(max_msg);
  args.SetMaxSendMessageSize(max_msg);
  if (!c.server_name.empty()) args.SetSslTargetNameOverride(c.server_name);
  if (c.peer_keepalive) {
    // kvbridge agents accept pings this often (rpc/server.h callers set the matching server side).
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 5000);
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 0);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
    args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 200);
    args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 2000);
  }
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (c.tls) {
    grpc::SslCredentialsOptions so;
    so.pem_root_certs = c.root_pem;
    so.pem_cert_chain = c.cert_pem;
    so.pem_private_key = c.key_pem;
    creds = grpc::SslCredentials(so);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(address, creds, args);
}

}  // namespace kvb::rpc
