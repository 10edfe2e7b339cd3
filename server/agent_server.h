// AgentServer: one kvbridge agent assembled — model, engine loop, cache store, peer client, the
// gRPC server (AgentService + grpc.health.v1 + reflection, TLS or mutual TLS, message limits)
// and the optional Prometheus endpoint — with Start / Wait-for-signal / Shutdown.
//
//   auto server = AgentServer::create(config);  // loads the model, uploads weights (seconds)
//   server->start();                            // binds; bound_address() is now known
//   ... SIGINT / SIGTERM ...
//   server->shutdown(std::chrono::seconds(5));  // graceful, then cancels what is left
//
// Ownership: AgentServer owns everything it builds. Destruction = shutdown(0s) if still running.
// Threading: create/start/shutdown from one thread (main); the parts run their own threads
// (gRPC's, the engine loop, peer workers, the store sweeper, the metrics listener).
#pragma once

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>

#include "kernels/status.h"
#include "server/agent_config.h"

namespace kvb {
class Backend;
namespace fuser {
class Fuser;
}
}  // namespace kvb

namespace grpc {
class Server;
class ServerBuilder;
class ServerCredentials;
class Service;
}

namespace kvb {
struct Model;
struct ModelIdentity;
}  // namespace kvb

namespace kvb::server {

class AgentServiceImpl;
class BearerAuth;
class BufferPool;
class CacheStager;
class CacheStore;
class EngineLoop;
class Metrics;
class MetricsEndpoint;
class PeerClient;
class ContextFuser;
class SelfAddresses;
class TransferSessions;
class TransportFactory;

class AgentServer {
 public:
  // Loads the model and builds every part; nothing listens yet. NOT_FOUND / INVALID_ARGUMENT from
  // the model loader; INVALID_ARGUMENT for a --ctx-size the model cannot use; the registry's
  // UNAVAILABLE / NOT_FOUND for a --device that this build or machine does not have.
  // `transports`: where raw cache transfers get their endpoints; null = the agent's own
  // (make_agent_transport_factory). Tests pass one over host fakes.
  static Result<std::unique_ptr<AgentServer>> create(AgentConfig config,
                                                     std::unique_ptr<TransportFactory> transports = nullptr);
  ~AgentServer();
  AgentServer(const AgentServer&) = delete;
  AgentServer& operator=(const AgentServer&) = delete;

  // Binds and starts serving gRPC (and /metrics). UNAVAILABLE when an address cannot be bound or
  // the TLS credentials are rejected.
  Status start();
  // "host:port" with the real port (after start()).
  const std::string& bound_address() const { return bound_; }
  int metrics_port() const;
  // One line for the startup log: model summary, backend, limits.
  std::string summary() const;

  // Stops accepting calls, lets running ones finish for up to `grace`, cancels the rest, then
  // stops the engine, the peer workers and the endpoints. Idempotent.
  void shutdown(std::chrono::milliseconds grace);

 private:
  explicit AgentServer(AgentConfig config);
  void sweeper();

  AgentConfig config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<ModelIdentity> identity_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<CacheStore> store_;
  std::unique_ptr<BearerAuth> auth_;
  std::unique_ptr<SelfAddresses> self_;
  // Borrowed by engine_, peers_, stager_ and the service: declared before them.
  std::unique_ptr<BufferPool> session_buffers_;  // host (pinned on a GPU): pulls, staging; CPU sessions
  std::unique_ptr<BufferPool> device_buffers_;   // GPU sessions; null on the CPU
  std::unique_ptr<CacheStager> stager_;
  std::unique_ptr<TransportFactory> transports_;  // borrowed by peers_ and transfers_
  std::unique_ptr<TransferSessions> transfers_;   // raw transfers this agent shares
  std::unique_ptr<EngineLoop> engine_;
  std::unique_ptr<PeerClient> peers_;
  std::unique_ptr<Backend> fuser_backend_;          // the embedded fuser's (--fuser), or null
  std::unique_ptr<fuser::Fuser> fuser_;             // borrows fuser_backend_
  std::unique_ptr<ContextFuser> context_fuser_;     // borrows model_, engine_, peers_, fuser_
  std::unique_ptr<AgentServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<MetricsEndpoint> metrics_endpoint_;
  std::string bound_;

  std::mutex sweep_mu_;
  std::condition_variable sweep_cv_;
  bool sweep_stop_ = false;
  std::thread sweep_thread_;
  bool shut_down_ = false;
};

// ============================== shared by kvbridge's gRPC servers (agent, fuser) ==============================

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

// The whole kvbridge-agent program: flags → config → logging → server → "listening on HOST:PORT"
// on stdout → wait for SIGINT/SIGTERM → graceful shutdown (5 s). Returns the exit code.
int agent_main(int argc, char** argv);

}  // namespace kvb::server
