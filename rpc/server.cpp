#include "rpc/server.h"

#include <fmt/format.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <climits>
#include <csignal>
#include <cstdio>

#include "rpc/logging.h"

namespace kvb::rpc {

Result<std::unique_ptr<grpc::Server>> start_grpc_server(const HostPort& listen, const TlsConfig& tls,
                                                        uint64_t max_message_bytes, grpc::Service& service,
                                                        const std::string& service_name, int& port,
                                                        const std::function<void(grpc::ServerBuilder&)>& configure) {
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder b;
  port = 0;
  b.AddListeningPort(listen.to_string(), server_credentials(tls), &port);
  b.RegisterService(&service);
  b.SetMaxReceiveMessageSize(static_cast<int>(std::min<uint64_t>(2 * max_message_bytes, INT_MAX)));
  b.SetMaxSendMessageSize(static_cast<int>(std::min<uint64_t>(max_message_bytes, INT_MAX)));
  b.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);
  if (configure) configure(b);
  std::unique_ptr<grpc::Server> server = b.BuildAndStart();
  if (!server || port == 0) {
    return unavailable(fmt::format("cannot serve on --listen {} (address in use or not local, or TLS credentials "
                                   "rejected)",
                                   listen.to_string()));
  }
  set_serving(*server, service_name, true);
  return server;
}

void set_serving(grpc::Server& server, const std::string& service_name, bool serving) {
  if (auto* health = server.GetHealthCheckService()) {
    health->SetServingStatus(service_name, serving);
    health->SetServingStatus("", serving);
  }
}

std::shared_ptr<grpc::ServerCredentials> server_credentials(const TlsConfig& tls) {
  if (!tls.enabled()) return grpc::InsecureServerCredentials();
  grpc::SslServerCredentialsOptions so(tls.mutual() ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
                                                    : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  so.pem_key_cert_pairs.push_back({tls.key_pem, tls.cert_pem});
  if (tls.mutual()) so.pem_root_certs = tls.client_ca_pem;
  return grpc::SslServerCredentials(so);
}

namespace {
sigset_t shutdown_signal_set() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  return signals;
}
}  // namespace

void block_shutdown_signals() {
  const sigset_t signals = shutdown_signal_set();
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  std::signal(SIGPIPE, SIG_IGN);
}

int wait_for_shutdown_signal() {
  const sigset_t signals = shutdown_signal_set();
  int sig = 0;
  sigwait(&signals, &sig);
  return sig;
}

void announce_and_wait(const std::string& bound, const std::optional<HostPort>& metrics, int metrics_port) {
  std::printf("listening on %s\n", bound.c_str());
  if (metrics) std::printf("metrics on %s:%d\n", metrics->host.c_str(), metrics_port);
  std::fflush(stdout);
  const int sig = wait_for_shutdown_signal();
  log_event(spdlog::level::info, "shutting down", {{"signal", int64_t(sig)}});
}

int serve(std::unique_ptr<ServerProcess> server, const ServeOptions& o) {
  if (Status st = server->start(); !st.ok()) {
    log_event(spdlog::level::err, "startup failed", {{"error", st.to_string()}});
    return 1;
  }
  std::vector<LogField> fields;
  for (const auto& [key, value] : o.fields) fields.push_back({key, value});
  fields.push_back({"listen", server->bound_address()});
  fields.push_back({"tls", o.tls.enabled() ? (o.tls.mutual() ? "mutual" : "on") : "off"});
  fields.push_back({"auth", o.auth});
  fields.push_back({"metrics_port", int64_t(server->metrics_port())});
  log_event(spdlog::level::info, o.ready, fields);
  announce_and_wait(server->bound_address(), o.metrics_listen, server->metrics_port());
  server->shutdown(std::chrono::seconds(5));
  server.reset();
  log_event(spdlog::level::info, "stopped", {});
  return 0;
}

}  // namespace kvb::rpc
