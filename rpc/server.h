// Serving gRPC the way every kvbridge server does (kvbridge-agent, kvbridge-fuser): credentials,
// message limits, health and reflection, the shutdown signals and the "listening on" line.
//
// Threading: block_shutdown_signals() from main before any thread starts; the rest from main.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "kernels/status.h"
#include "rpc/flags.h"

namespace grpc {
class Server;
class ServerBuilder;
class ServerCredentials;
class Service;
}  // namespace grpc

namespace kvb::rpc {

// TLS (mutual when tls.mutual()) server credentials from the PEMs load_tls_files read, or insecure
// ones when TLS is off.
std::shared_ptr<grpc::ServerCredentials> server_credentials(const TlsConfig& tls);
// Serves `service` (borrowed: it must outlive the server) as every kvbridge server does: on `listen`
// with server_credentials(tls); requests up to 2 x max_message_bytes reach the handlers, which answer
// INVALID_ARGUMENT above max_message_bytes (gRPC refuses larger ones unread, RESOURCE_EXHAUSTED);
// replies up to max_message_bytes; no SO_REUSEPORT (a taken port is an error, not a shared one);
// grpc.health.v1 reporting `service_name` and "" SERVING, and reflection. `configure` may add
// builder settings. Sets `port` to the bound port. UNAVAILABLE when the address cannot be bound or
// the TLS credentials are rejected.
Result<std::unique_ptr<grpc::Server>> start_grpc_server(
    const HostPort& listen, const TlsConfig& tls, uint64_t max_message_bytes, grpc::Service& service,
    const std::string& service_name, int& port, const std::function<void(grpc::ServerBuilder&)>& configure = {});
// The health status of `service_name` and of the server as a whole ("").
void set_serving(grpc::Server& server, const std::string& service_name, bool serving);
// Blocks SIGINT and SIGTERM in the calling thread, and so in every thread it creates afterwards, and
// ignores SIGPIPE: call from main before any thread starts, then wait_for_shutdown_signal().
void block_shutdown_signals();
// Waits for SIGINT or SIGTERM (blocked by block_shutdown_signals) and returns its number.
int wait_for_shutdown_signal();
// Prints "listening on <bound>" (and "metrics on HOST:PORT" when `metrics` is set) on stdout, where
// scripts and tests read it, then waits for the shutdown signal and logs it.
void announce_and_wait(const std::string& bound, const std::optional<HostPort>& metrics, int metrics_port);

// A kvbridge server as its main() drives it (AgentServer, FuserServer).
class ServerProcess {
 public:
  virtual ~ServerProcess() = default;
  // Binds and starts serving; UNAVAILABLE when an address cannot be bound.
  virtual Status start() = 0;
  // "host:port" with the real port (after start()).
  virtual const std::string& bound_address() const = 0;
  virtual int metrics_port() const = 0;
  // Stops accepting calls, lets running ones finish for up to `grace`, cancels the rest.
  virtual void shutdown(std::chrono::milliseconds grace) = 0;
};

// What serve() logs once the server is up.
struct ServeOptions {
  std::string ready;                                        // the message, e.g. "agent ready"
  std::vector<std::pair<std::string, std::string>> fields;  // first fields, e.g. {"model", summary}
  TlsConfig tls;                                            // logged as off / on / mutual
  bool auth = false;                                        // a bearer token is required
  std::optional<HostPort> metrics_listen;                   // --metrics-listen
};

// The rest of a server's main() once it is created (flags, files, logging and the blocked signals
// come first): start() (exit code 1 when it fails), the ready line, "listening on" and the wait
// for SIGINT/SIGTERM (announce_and_wait), a graceful shutdown (5 s), destruction, "stopped".
// Returns the process's exit code.
int serve(std::unique_ptr<ServerProcess> server, const ServeOptions& options);

}  // namespace kvb::rpc
