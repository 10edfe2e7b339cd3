// FuserClient: the C++ client of one kvbridge fuser (kvbridge.v1.FuserService over gRPC).
//
// Connects exactly as AgentClient does (ClientOptions: TLS, mutual TLS, bearer token, message
// limits, deadline; open_channel in agent_client.h) and maps grpc::Status with the one shared
// conversion (kvb::from_grpc_status). Messages are the kvbridge.v1 protos (fuser.proto documents
// every field and error code).
//
//   KVB_ASSIGN_OR_RETURN(auto fuser, FuserClient::connect("127.0.0.1:7100", opt));
//   KVB_ASSIGN_OR_RETURN(v1::FuserInfo info, fuser->get_info());
//   // send only info.sharer_layers of the sharer's cache and info.receiver_layers of the receiver's
//   KVB_ASSIGN_OR_RETURN(FuseOutput out, fuser->fuse_messages(start, requests));
//   // out.fused: a kv_wire stream to decode over the receiver's cache (KvWireDecoder::create_into)
//
// Threading: every method may be called from any number of threads at once; each call blocks the
// calling thread until it completes. fuse() sends from a second thread it owns for the call.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "client/agent_client.h"
#include "kernels/status.h"
#include "kvbridge/v1/fuser.grpc.pb.h"

namespace kvb::client {

// Produces the requests of a Fuse call after its FuseStart, in order: fills `msg` and returns
// true, or returns false at the end (the client then closes its side). A non-OK Status cancels
// the call and is returned by fuse(). Called on the call's sending thread.
using FuseRequestSource = std::function<Result<bool>(v1::FuseRequest& msg)>;
// Receives each fused message in order (header, data..., trailer); a non-OK Status cancels the
// call and is returned by fuse(). Called on the calling thread.
using FusedSink = std::function<Status(v1::CacheChunk&& msg)>;

struct FuseOutput {
  std::vector<v1::CacheChunk> fused;  // header, data..., trailer
  v1::FuseSummary summary;
  uint64_t bytes_sent = 0, bytes_received = 0;  // serialized messages
};

class FuserClient {
 public:
  // Errors as open_channel (agent_client.h).
  static Result<std::unique_ptr<FuserClient>> connect(const std::string& addr, const ClientOptions& options);
  ~FuserClient();

  const std::string& address() const { return addr_; }

  Result<v1::FuserInfo> get_info();

  // One Fuse call: `start`, then what `next` produces, sent from a second thread while the fused
  // stream is read here (the server does not read while it writes, so both must go at once).
  // Returns the summary; the fused messages went to `sink`. The server's codes (fuser.proto), or
  // the source's / sink's error; a call whose stream ends without a summary is UNAVAILABLE.
  Result<v1::FuseSummary> fuse(const v1::FuseStart& start, const FuseRequestSource& next, const FusedSink& sink,
                               uint64_t* bytes_sent = nullptr, uint64_t* bytes_received = nullptr);
  // The same over requests in memory, collecting the fused stream.
  Result<FuseOutput> fuse_messages(const v1::FuseStart& start, std::span<const v1::FuseRequest> requests);

 private:
  FuserClient(std::string addr, ClientChannel channel);

  std::string addr_;
  ClientChannel channel_;
  std::unique_ptr<v1::FuserService::Stub> stub_;
};

}  // namespace kvb::client
