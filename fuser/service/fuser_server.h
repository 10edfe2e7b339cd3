// kvbridge-fuser: one C2C fuser behind gRPC (kvbridge.v1.FuserService, fuser_service.h).
//
//   kvbridge-fuser --weights DIR --listen HOST:PORT [--name N] [--device cpu|cuda|cuda:N] [--threads N]
//                  [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]] [--auth-token-file F]
//                  [--metrics-listen HOST:PORT] [--log-format text|json] [--max-message-bytes SIZE]
//                  [--max-stream-bytes SIZE] [--max-concurrent-fuses N]
//
// The flags shared with kvbridge-agent mean the same and are checked by the same code
// (rpc/flags.h: parse_host_port, parse_message_limit, parse_log_format, check_tls_flags,
// load_tls_files, load_auth_token); the server is assembled from the parts every kvbridge server
// shares (rpc/: start_grpc_server, BearerAuth, CallMetrics + MetricsEndpoint, logging, signals).
//
//   auto server = FuserServer::create(config);  // loads and uploads the fuser (seconds for big ones)
//   server->start();                            // binds; bound_address() is now known
//   ... SIGINT / SIGTERM ...
//   server->shutdown(std::chrono::seconds(5));  // graceful, then cancels what is left
//
// Ownership: FuserServer owns everything it builds. Destruction = shutdown(0s) if still running.
// Threading: create/start/shutdown from one thread (main); gRPC and the metrics listener run their
// own threads.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "kernels/status.h"
#include "rpc/flags.h"
#include "rpc/server.h"

namespace grpc {
class Server;
}

namespace kvb {
class Backend;
}

namespace kvb::rpc {
class BearerAuth;
class CallMetrics;
class MetricsEndpoint;
}  // namespace kvb::rpc

namespace kvb::fuser {

class Fuser;
class FuserServiceImpl;

// The smallest --max-message-bytes kvbridge-fuser accepts: fused chunks are up to ~1 MiB of payload.
inline constexpr uint64_t kFuserMinMessageBytes = 2 * rpc::kMiB;

struct FuserServerConfig {
  std::string weights_dir;      // --weights: a fuser directory (config.json + weights)
  rpc::HostPort listen;      // --listen; port 0 = pick a free port (printed on stdout)
  std::string name;             // --name; empty = the bound listen address
  std::string device = "cpu";   // --device cpu|cuda|cuda:N: the projector's backend
  int32_t threads = 0;          // --threads: CPU backend threads; 0 = all cores
  uint64_t max_message_bytes = 64 * rpc::kMiB;  // --max-message-bytes: gRPC limit, both directions
  uint64_t max_stream_bytes = rpc::kGiB;        // --max-stream-bytes: decoded (f32) bytes per input stream
  uint32_t max_concurrent_fuses = 4;               // --max-concurrent-fuses
  rpc::TlsConfig tls;                           // --tls-cert, --tls-key, --tls-client-ca
  std::string auth_token_file;                     // --auth-token-file
  std::string auth_token;                          // its contents, filled by load_fuser_files
  std::optional<rpc::HostPort> metrics_listen;  // --metrics-listen: Prometheus /metrics over HTTP
  rpc::LogFormat log_format = rpc::LogFormat::kText;  // --log-format text|json
};

// Either a config to run with, or an exit code and a text to print (--help / --version → 0 and
// the text for stdout; a bad flag → 2 and the message for stderr). Never throws.
struct FuserParsedArgs {
  std::optional<FuserServerConfig> config;
  int exit_code = 0;
  std::string output;
};
FuserParsedArgs parse_fuser_args(int argc, const char* const* argv);

// Reads the TLS PEMs and the token file the config names (rpc::load_tls_files,
// rpc::load_auth_token): NOT_FOUND / INVALID_ARGUMENT naming the flag and the path.
Status load_fuser_files(FuserServerConfig& cfg);

class FuserServer final : public rpc::ServerProcess {
 public:
  // Creates the backend on --device and loads the fuser: the registry's UNAVAILABLE / NOT_FOUND
  // for a device this build or machine does not have; NOT_FOUND / INVALID_ARGUMENT from
  // Fuser::load (naming the directory); nothing listens yet. Streams are decoded into host caches
  // either way; on a GPU the projector stages each chunk to the device and back (fuser/projector.h).
  static Result<std::unique_ptr<FuserServer>> create(FuserServerConfig config);
  ~FuserServer() override;
  FuserServer(const FuserServer&) = delete;
  FuserServer& operator=(const FuserServer&) = delete;

  // Binds and starts serving gRPC (FuserService + grpc.health.v1 + reflection) and /metrics.
  // UNAVAILABLE when an address cannot be bound or the TLS credentials are rejected.
  Status start() override;
  // "host:port" with the real port (after start()).
  const std::string& bound_address() const override { return bound_; }
  int metrics_port() const override;
  // One line for the startup log: pair, gates, weights, backend.
  std::string summary() const;
  const Fuser& fuser() const { return *fuser_; }

  // Stops accepting calls, lets running ones finish for up to `grace`, cancels the rest, then
  // stops the metrics endpoint. Idempotent.
  void shutdown(std::chrono::milliseconds grace) override;

 private:
  explicit FuserServer(FuserServerConfig config);

  FuserServerConfig config_;
  std::unique_ptr<Backend> backend_;  // borrowed by fuser_: declared before it
  std::unique_ptr<Fuser> fuser_;
  std::unique_ptr<rpc::CallMetrics> metrics_;
  std::unique_ptr<rpc::BearerAuth> auth_;
  std::unique_ptr<FuserServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<rpc::MetricsEndpoint> metrics_endpoint_;
  std::string bound_;
  bool shut_down_ = false;
};

// The whole kvbridge-fuser program: flags (bad ones: exit 2) → files → logging → server (a fuser
// that does not load: exit 1) → "listening on HOST:PORT" on stdout → wait for SIGINT/SIGTERM →
// graceful shutdown (5 s). Returns the exit code.
int fuser_main(int argc, char** argv);

}  // namespace kvb::fuser
