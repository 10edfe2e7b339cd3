// Serving gRPC the way every kvbridge server does (kvbridge-agent, kvbridge-fuser): credentials,
// message limits, health and reflection, the shutdown signals and the "listening on" line.
//
// Threading: block_shutdown_signals() from main before any thread starts; the rest from main.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>

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
Result<std::unique_ptr<grpc::Server>> start_grpc_server(const HostPort& listen, const TlsConfig& tls,
                                                        uint64_t max_message_bytes, grpc::Service& service,
                                                        const std::string& service_name, int& port,
                                                        const std::function<void(grpc::ServerBuilder&)>& configure = {});
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

}  // namespace kvb::rpc
