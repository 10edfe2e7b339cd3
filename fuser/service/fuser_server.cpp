#include "fuser/service/fuser_server.h"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <grpcpp/server.h>

#include <cstdio>

#include "fuser/fuse_session.h"
#include "fuser/fuser.h"
#include "fuser/service/fuser_service.h"
#include "kernels/registry.h"
#include "rpc/auth.h"
#include "rpc/logging.h"
#include "rpc/metrics.h"
#include "rpc/server.h"

namespace kvb::fuser {

namespace {

// The flags that need conversion, as given.
struct RawFlags {
  std::string listen, max_message_bytes, max_stream_bytes, metrics_listen;
  std::string log_format = "text";
};

Status convert(const RawFlags& raw, FuserServerConfig& c) {
  KVB_ASSIGN_OR_RETURN(c.listen, rpc::parse_host_port(raw.listen, /*allow_port_zero=*/true));
  if (!raw.max_message_bytes.empty()) {
    KVB_ASSIGN_OR_RETURN(c.max_message_bytes, rpc::parse_message_limit(raw.max_message_bytes));
    if (c.max_message_bytes < kFuserMinMessageBytes) {
      return invalid_argument(fmt::format("--max-message-bytes must be at least {} for kvbridge-fuser (fused chunks "
                                          "are ~1 MiB), got {}",
                                          kFuserMinMessageBytes, c.max_message_bytes));
    }
  }
  if (!raw.max_stream_bytes.empty()) {
    KVB_ASSIGN_OR_RETURN(c.max_stream_bytes, rpc::parse_byte_size(raw.max_stream_bytes));
    if (c.max_stream_bytes == 0) return invalid_argument("--max-stream-bytes must be > 0");
  }
  if (!raw.metrics_listen.empty()) {
    KVB_ASSIGN_OR_RETURN(rpc::HostPort m, rpc::parse_host_port(raw.metrics_listen, /*allow_port_zero=*/true));
    c.metrics_listen = std::move(m);
  }
  KVB_ASSIGN_OR_RETURN(c.log_format, rpc::parse_log_format(raw.log_format));
  KVB_RETURN_IF_ERROR(rpc::check_device_flag(c.device));
  if (c.threads < 0 || c.threads > 1024) return invalid_argument("--threads must be in [0, 1024]");
  if (c.max_concurrent_fuses < 1 || c.max_concurrent_fuses > 1024) {
    return invalid_argument("--max-concurrent-fuses must be in [1, 1024]");
  }
  if (c.weights_dir.empty()) return invalid_argument("--weights must name a fuser directory");
  return rpc::check_tls_flags(c.tls);
}

std::string describe_backend(const Backend& b) {
  if (!b.device().buffer_type().is_host()) return fmt::format("{}: {}", b.device().name(), b.device().description());
  return fmt::format("{}, {} in use", b.device().description(), b.n_threads());
}

}  // namespace

// ============================== flags ==============================

FuserParsedArgs parse_fuser_args(int argc, const char* const* argv) {
  FuserParsedArgs out;
  FuserServerConfig c;
  RawFlags raw;
  CLI::App app{"kvbridge-fuser: a C2C fuser behind gRPC, projecting one model's KV cache into another's"};
  app.set_version_flag("--version", fmt::format("kvbridge-fuser {}", kFuserVersion));
  app.add_option("--weights", c.weights_dir, "Fuser directory (config.json + safetensors weights)")->required();
  app.add_option("--listen", raw.listen, "gRPC host:port to serve on (port 0: a free port, printed on stdout)")
      ->required();
  app.add_option("--name", c.name, "Name GetInfo reports (default: the bound address)");
  app.add_option("--device", c.device, "Where the projector runs: cpu, cuda (= cuda:0) or cuda:N (default cpu)");
  app.add_option("--threads", c.threads, "CPU threads of the projector backend (default: all cores)");
  app.add_option("--max-message-bytes", raw.max_message_bytes, "gRPC message limit, in and out (default 64M)");
  app.add_option("--max-stream-bytes", raw.max_stream_bytes,
                 "Largest decoded (f32) cache one input stream may carry (default 1G)");
  app.add_option("--max-concurrent-fuses", c.max_concurrent_fuses, "Fuse calls served at once (default 4)");
  app.add_option("--tls-cert", c.tls.cert_path, "PEM certificate chain of this server; turns TLS on");
  app.add_option("--tls-key", c.tls.key_path, "PEM private key of --tls-cert");
  app.add_option("--tls-client-ca", c.tls.client_ca_path, "PEM CA that client certificates must chain to (mTLS)");
  app.add_option("--auth-token-file", c.auth_token_file, "File with the bearer token every call must carry");
  app.add_option("--metrics-listen", raw.metrics_listen, "HTTP host:port serving Prometheus /metrics");
  app.add_option("--log-format", raw.log_format, "Log lines on stderr: text or json");

  if (rpc::parse_flags(app, argc, argv, [&] { return convert(raw, c); }, out.exit_code, out.output)) {
    out.config = std::move(c);
  }
  return out;
}

Status load_fuser_files(FuserServerConfig& cfg) {
  KVB_RETURN_IF_ERROR(rpc::load_tls_files(cfg.tls));
  if (!cfg.auth_token_file.empty()) {
    KVB_ASSIGN_OR_RETURN(cfg.auth_token, rpc::load_auth_token(cfg.auth_token_file));
  }
  return Status::Ok();
}

// ============================== FuserServer ==============================

FuserServer::FuserServer(FuserServerConfig config) : config_(std::move(config)) {}

FuserServer::~FuserServer() { shutdown(std::chrono::milliseconds(0)); }

Result<std::unique_ptr<FuserServer>> FuserServer::create(FuserServerConfig config) {
  std::unique_ptr<FuserServer> s(new FuserServer(std::move(config)));
  const FuserServerConfig& c = s->config_;
  auto device = find_device(c.device);
  if (!device.ok()) return device.status().with_context("--device " + c.device);
  auto backend = (*device)->create_backend();
  if (!backend.ok()) return backend.status().with_context("--device " + c.device);
  s->backend_ = std::move(backend).value();
  if (c.threads > 0) s->backend_->set_n_threads(c.threads);
  auto f = Fuser::load(c.weights_dir, *s->backend_);
  if (!f.ok()) return f.status().with_context(fmt::format("--weights {}", c.weights_dir));
  s->fuser_ = std::move(f).value();
  s->metrics_ = std::make_unique<rpc::CallMetrics>();
  s->auth_ = std::make_unique<rpc::BearerAuth>(c.auth_token);

  FuserServiceDeps d;
  d.fuser = s->fuser_.get();
  d.backend = describe_backend(*s->backend_);
  d.metrics = s->metrics_.get();
  d.auth = s->auth_.get();
  d.max_message_bytes = c.max_message_bytes;
  d.limits.max_bytes = c.max_stream_bytes;
  d.max_concurrent_fuses = c.max_concurrent_fuses;
  s->service_ = std::make_unique<FuserServiceImpl>(std::move(d));
  return s;
}

Status FuserServer::start() {
  const FuserServerConfig& c = config_;
  int port = 0;
  KVB_ASSIGN_OR_RETURN(server_, rpc::start_grpc_server(c.listen, c.tls, c.max_message_bytes, *service_,
                                                       kFuserServiceName, port));
  bound_ = fmt::format("{}:{}", c.listen.host, port);
  service_->set_name(c.name.empty() ? bound_ : c.name);
  if (c.metrics_listen) {
    const rpc::CallMetrics* m = metrics_.get();
    metrics_endpoint_ = std::make_unique<rpc::MetricsEndpoint>([m] { return m->render(); });
    KVB_RETURN_IF_ERROR(metrics_endpoint_->start(*c.metrics_listen));
  }
  return Status::Ok();
}

int FuserServer::metrics_port() const { return metrics_endpoint_ ? metrics_endpoint_->port() : 0; }

std::string FuserServer::summary() const {
  const FuserConfig& c = fuser_->config();
  const FusePlan plan = fuse_plan(*fuser_);
  return fmt::format("{} -> {} | hidden {}, {} layers | {}/{} slices gated on | weights {:.1f} MiB | {}",
                     c.sharer.name, c.receiver.name, c.hidden_dim, c.receiver.n_layer, plan.receiver.size(),
                     2 * c.receiver.n_layer, double(fuser_->weight_bytes()) / double(rpc::kMiB),
                     describe_backend(*backend_));
}

void FuserServer::shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_) {
    rpc::set_serving(*server_, kFuserServiceName, false);
    // Running Fuse calls get until the deadline; then they are cancelled (their next Read or
    // Write fails and the handler returns).
    server_->Shutdown(std::chrono::system_clock::now() + grace);
  }
  if (metrics_endpoint_) metrics_endpoint_->stop();
  if (server_) server_->Wait();
}

// ============================== main ==============================

int fuser_main(int argc, char** argv) {
  FuserParsedArgs args = parse_fuser_args(argc, argv);
  if (!args.config) {
    std::fputs(args.output.c_str(), args.exit_code == 0 ? stdout : stderr);
    return args.exit_code;
  }
  FuserServerConfig cfg = std::move(*args.config);
  rpc::setup_logging(cfg.log_format);
  if (Status st = load_fuser_files(cfg); !st.ok()) {
    rpc::log_event(spdlog::level::err, "bad configuration", {{"error", st.message()}});
    return 2;
  }
  // Every thread created from here on inherits the blocked signals; main waits for them below.
  rpc::block_shutdown_signals();

  auto server = FuserServer::create(cfg);
  if (!server.ok()) {
    rpc::log_event(spdlog::level::err, "startup failed", {{"error", server.status().to_string()}});
    return 1;
  }
  rpc::ServeOptions so;
  so.ready = "fuser ready";
  so.fields = {{"fuser", (*server)->summary()}, {"weights", cfg.weights_dir}};
  so.tls = cfg.tls;
  so.auth = !cfg.auth_token.empty();
  so.metrics_listen = cfg.metrics_listen;
  return rpc::serve(std::move(server).value(), so);
}

}  // namespace kvb::fuser
