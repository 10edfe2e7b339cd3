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

#include "agent/agent_config.h"
#include "agent/peer_warmer.h"
#include "engine/kv_wire.h"
#include "rpc/server.h"
#include "kernels/status.h"

namespace grpc {
class Server;
}

namespace kvb {
class Backend;
class Device;
struct Model;
struct ModelIdentity;
namespace fuser {
class Fuser;
}
}  // namespace kvb

namespace kvb::rpc {
class BearerAuth;
class MetricsEndpoint;
}  // namespace kvb::rpc

namespace kvb::runtime {
class BufferPool;
class CacheStager;
class CacheStore;
class EngineLoop;
}  // namespace kvb::runtime

namespace kvb::agent {

class AgentServiceImpl;
class Metrics;
class PeerClient;
class ContextFuser;
class SelfAddresses;
class CacheSharer;
class TransferSessions;
class TransportFactory;

class AgentServer final : public rpc::ServerProcess {
 public:
  // Loads the model and builds every part; nothing listens yet. NOT_FOUND / INVALID_ARGUMENT from
  // the model loader; INVALID_ARGUMENT for a --ctx-size the model cannot use; the registry's
  // UNAVAILABLE / NOT_FOUND for a --device that this build or machine does not have.
  // `transports`: where raw cache transfers get their endpoints; null = the agent's own
  // (make_agent_transport_factory). Tests pass one over host fakes.
  static Result<std::unique_ptr<AgentServer>> create(AgentConfig config,
                                                     std::unique_ptr<TransportFactory> transports = nullptr);
  ~AgentServer() override;
  AgentServer(const AgentServer&) = delete;
  AgentServer& operator=(const AgentServer&) = delete;

  // Binds and starts serving gRPC (and /metrics). UNAVAILABLE when an address cannot be bound or
  // the TLS credentials are rejected.
  Status start() override;
  // "host:port" with the real port (after start()).
  const std::string& bound_address() const override { return bound_; }
  int metrics_port() const override;
  // One line for the startup log: model summary, backend, limits.
  std::string summary() const;

  // Stops accepting calls, lets running ones finish for up to `grace`, cancels the rest, then
  // stops the engine, the peer workers and the endpoints. Idempotent.
  void shutdown(std::chrono::milliseconds grace) override;

 private:
  explicit AgentServer(AgentConfig config);
  // The steps of create(), in order.
  Status build_runtime(const Device& device);      // store, buffer pools, stager, engine loop
  KvWireLimits received_cache_limits() const;      // for imports and pulls
  void build_transfers(const Device& device, std::unique_ptr<TransportFactory> transports,
                       const KvWireLimits& limits);  // transports, raw sessions, peer client, sharer
  Status load_embedded_fuser(const Device& device);  // --fuser, checked against this model
  void build_service(const Device& device, const KvWireLimits& limits);
  void sweeper();

  AgentConfig config_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<ModelIdentity> identity_;
  std::unique_ptr<Metrics> metrics_;
  std::unique_ptr<runtime::CacheStore> store_;
  std::unique_ptr<rpc::BearerAuth> auth_;
  std::unique_ptr<SelfAddresses> self_;
  // Borrowed by engine_, peers_, stager_ and the service: declared before them.
  std::unique_ptr<runtime::BufferPool> session_buffers_;  // host (pinned on a GPU): pulls, staging; CPU sessions
  std::unique_ptr<runtime::BufferPool> device_buffers_;   // GPU sessions; null on the CPU
  std::unique_ptr<runtime::CacheStager> stager_;
  std::unique_ptr<TransportFactory> transports_;  // borrowed by peers_ and transfers_
  std::unique_ptr<TransferSessions> transfers_;   // raw transfers this agent shares
  std::unique_ptr<CacheSharer> sharer_;           // borrows store_, stager_, transfers_
  std::unique_ptr<runtime::EngineLoop> engine_;
  std::unique_ptr<PeerClient> peers_;
  std::unique_ptr<PeerWarmer> peer_warmer_;         // --peers; borrows peers_
  std::unique_ptr<Backend> fuser_backend_;          // the embedded fuser's (--fuser), or null
  std::unique_ptr<fuser::Fuser> fuser_;             // borrows fuser_backend_
  std::unique_ptr<ContextFuser> context_fuser_;     // borrows model_, engine_, peers_, fuser_
  std::unique_ptr<AgentServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<rpc::MetricsEndpoint> metrics_endpoint_;
  std::string bound_;

  std::mutex sweep_mu_;
  std::condition_variable sweep_cv_;
  bool sweep_stop_ = false;
  std::thread sweep_thread_;
  bool shut_down_ = false;
};

// The whole kvbridge-agent program: flags → config → logging → server → "listening on HOST:PORT"
// on stdout → wait for SIGINT/SIGTERM → graceful shutdown (5 s). Returns the exit code.
int agent_main(int argc, char** argv);

}  // namespace kvb::agent
