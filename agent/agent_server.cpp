#include "agent/agent_server.h"

#include <fmt/format.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <climits>
#include <malloc.h>
#include <csignal>
#include <cstdint>
#include <cstdio>

#include "engine/kv_wire.h"
#include "engine/model.h"
#include "agent/agent_service.h"
#include "agent/context_fuser.h"
#include "fuser/fuser.h"
#include "kernels/registry.h"
#include "rpc/auth.h"
#include "runtime/buffer_pool.h"
#include "runtime/cache_staging.h"
#include "runtime/cache_store.h"
#include "runtime/engine_loop.h"
#include "rpc/logging.h"
#include "rpc/metrics.h"
#include "rpc/server.h"
#include "transport/metadata.h"
#include "agent/agent_metrics.h"
#include "agent/transfer/peer_client.h"

namespace kvb::agent {

namespace {

constexpr const char* kServiceName = "kvbridge.v1.AgentService";

// Process-wide allocator policy, set before any thread starts. Cache transfers allocate and free
// ~1 MiB blocks at memory bandwidth (protobuf payloads, gRPC read buffers). glibc's defaults give
// freed memory back to the kernel as soon as 2 MiB sit free at the top of an arena (and mmap
// blocks above an adaptive threshold), so every transfer faults its buffers in again: ~25k page
// faults and ~25 ms per 150 MB pulled. Fixed thresholds keep up to 128 MiB of freed memory per
// arena for reuse; blocks above 32 MiB (weights, KV caches) are still mmap'ed and unmapped.
void keep_freed_memory() {
#if defined(__GLIBC__)
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 128 << 20);
#endif
}

bool is_local_host(const std::string& h) {
  return h == "0.0.0.0" || h == "[::]" || h == "127.0.0.1" || h == "localhost" || h == "[::1]";
}

}  // namespace

AgentServer::AgentServer(AgentConfig config) : config_(std::move(config)) {}

AgentServer::~AgentServer() { shutdown(std::chrono::milliseconds(0)); }

Result<std::unique_ptr<AgentServer>> AgentServer::create(AgentConfig config,
                                                         std::unique_ptr<TransportFactory> transports) {
  std::unique_ptr<AgentServer> s(new AgentServer(std::move(config)));
  const AgentConfig& c = s->config_;

  // The device first: a GPU that is not there fails at once, before the model is read.
  auto found = find_device(c.device);
  if (!found.ok()) return found.status().with_context("--device " + c.device);
  const Device& device = **found;
  const bool on_gpu = !device.buffer_type().is_host();

  LoadOptions lo;
  lo.tokenizer_path = c.tokenizer_path;
  KVB_ASSIGN_OR_RETURN(s->model_, load_model(c.model_path, lo));
  if (!s->model_->tokenizer) {
    return failed_precondition(fmt::format("{} has no tokenizer; pass --tokenizer", c.model_path));
  }
  s->identity_ = std::make_unique<ModelIdentity>(model_identity(*s->model_));
  const int32_t n_ctx_train = s->model_->config.n_ctx_train;
  if (c.ctx_size > 0 && n_ctx_train > 0 && c.ctx_size > n_ctx_train) {
    rpc::log_event(spdlog::level::warn, "--ctx-size exceeds the model's training context; positions beyond it extrapolate",
              {{"ctx_size", int64_t(c.ctx_size)}, {"n_ctx_train", int64_t(n_ctx_train)}});
  }

  s->metrics_ = std::make_unique<Metrics>();
  runtime::CacheStoreOptions so;
  so.max_bytes = c.max_cache_bytes;
  so.default_ttl_s = c.cache_ttl_s;
  s->store_ = std::make_unique<runtime::CacheStore>(so);
  s->auth_ = std::make_unique<rpc::BearerAuth>(c.auth_token);
  s->self_ = std::make_unique<SelfAddresses>();

  // Pulled caches and Generate sessions are short-lived and cache-sized: recycle their memory
  // (runtime/buffer_pool.h), at most one request's worth kept idle per pool. On the CPU one pool
  // serves both (a pulled cache becomes the session's cache as it is). On a GPU, sessions take
  // device memory from their own pool, and the host pool is pinned memory: pulls land there and
  // are uploaded, device caches are staged there to be exported (CacheStager).
  runtime::BufferPoolOptions bo;
  bo.max_idle_bytes = size_t(std::min<uint64_t>(c.request_cache_limit(), SIZE_MAX));
  s->session_buffers_ = std::make_unique<runtime::BufferPool>(host_staging_buffer_type(device), bo);
  if (on_gpu) s->device_buffers_ = std::make_unique<runtime::BufferPool>(device.buffer_type(), bo);
  KVB_ASSIGN_OR_RETURN(s->stager_, runtime::CacheStager::create(device, s->session_buffers_.get()));

  runtime::EngineOptions eo;
  eo.device = &device;
  eo.n_threads = c.threads;
  eo.graphs = c.cuda_graphs;
  eo.session_buffers = on_gpu ? s->device_buffers_.get() : s->session_buffers_.get();
  eo.host_buffers = s->session_buffers_.get();
  eo.ctx_size = c.ctx_size;
  eo.max_request_cache_bytes = c.request_cache_limit();
  eo.fingerprint = s->identity_->fingerprint;
  KVB_ASSIGN_OR_RETURN(s->engine_, runtime::EngineLoop::create(*s->model_, *s->store_, eo));

  // Received caches (imports, pulls): at most a context's worth of cells, and no more f32 bytes
  // than one request may hold.
  const KvLayout lay = s->engine_->kv_layout();
  const uint64_t cache_bytes_per_cell = uint64_t(lay.cell_bytes()) * 2 * uint64_t(lay.n_layer);
  KvWireLimits limits;
  limits.max_tokens = static_cast<uint32_t>(
      std::min<uint64_t>(uint64_t(s->engine_->ctx_size()), c.request_cache_limit() / cache_bytes_per_cell));
  limits.max_bytes = c.request_cache_limit();

  PeerClientOptions po;
  po.identity = *s->identity_;
  po.limits = limits;
  po.max_message_bytes = c.max_message_bytes;
  po.tls = c.tls.enabled();
  po.tls_root_pem = c.tls.mutual() ? c.tls.client_ca_pem : c.tls.cert_pem;
  po.tls_cert_pem = c.tls.cert_pem;
  po.tls_key_pem = c.tls.key_pem;
  po.auth_token = c.auth_token;
  po.metrics = s->metrics_.get();
  po.cache_buffers = s->session_buffers_.get();
  // grpc pulls arrive in host memory (ExportCache stages a device cache to the host); raw pulls
  // (nccl, cuda-ipc) land where the factory says: device memory on a GPU.
  s->transports_ = transports ? std::move(transports)
                              : make_agent_transport_factory(device, on_gpu ? static_cast<const BufferType&>(
                                                                                  *s->device_buffers_)
                                                                            : *s->session_buffers_);
  s->transfers_ = std::make_unique<TransferSessions>(*s->transports_);
  po.endpoint = s->transports_->endpoint();
  po.transports = s->transports_.get();
  s->peers_ = std::make_unique<PeerClient>(std::move(po));
  s->sharer_ = std::make_unique<CacheSharer>(*s->store_, *s->stager_, *s->identity_, s->transports_->endpoint(),
                                             s->transfers_.get(), c.max_message_bytes);

  if (!c.fuser_dir.empty()) {
    KVB_ASSIGN_OR_RETURN(s->fuser_backend_, device.create_backend());
    if (c.threads > 0) s->fuser_backend_->set_n_threads(c.threads);
    auto f = fuser::Fuser::load(c.fuser_dir, *s->fuser_backend_);
    if (!f.ok()) return f.status().with_context("--fuser " + c.fuser_dir);
    s->fuser_ = std::move(f).value();
    const fuser::ModelSide& r = s->fuser_->config().receiver;
    const ModelIdentity& id = *s->identity_;
    if ((r.fingerprint != 0 && r.fingerprint != id.fingerprint) || uint32_t(r.n_layer) != id.n_layer ||
        uint32_t(r.n_head_kv) != id.n_head_kv || uint32_t(r.head_dim) != id.head_dim) {
      return failed_precondition(fmt::format("--fuser {}: built for receiver {} ({} layers x {} x {}), not this model",
                                             c.fuser_dir, r.name, r.n_layer, r.n_head_kv, r.head_dim));
    }
  }
  s->context_fuser_ =
      std::make_unique<ContextFuser>(*s->model_, *s->identity_, *s->engine_, *s->peers_, s->fuser_.get());

  ServiceDeps d;
  d.fuser = s->context_fuser_.get();
  d.config = &s->config_;
  d.model = s->model_.get();
  d.identity = s->identity_.get();
  d.store = s->store_.get();
  d.engine = s->engine_.get();
  d.peers = s->peers_.get();
  d.metrics = s->metrics_.get();
  d.auth = s->auth_.get();
  d.self = s->self_.get();
  d.import_limits = limits;
  d.sharer = s->sharer_.get();
  d.stager = s->stager_.get();
  // Imports decode into host memory; on a GPU into the pinned pool, then they are uploaded.
  d.import_buffers = on_gpu ? static_cast<const BufferType*>(s->session_buffers_.get()) : &cpu_device().buffer_type();
  s->service_ = std::make_unique<AgentServiceImpl>(std::move(d));
  return s;
}

Status AgentServer::start() {
  const AgentConfig& c = config_;
  int port = 0;
  // Handlers answer INVALID_ARGUMENT between --max-message-bytes and twice it (agent.proto).
  KVB_ASSIGN_OR_RETURN(server_, rpc::start_grpc_server(c.listen, c.tls, c.max_message_bytes, *service_, kServiceName, port,
                                                  [](grpc::ServerBuilder& b) {
                                                    // Peers ping every 5 s during transfers to detect
                                                    // a hung sharer; accept that.
                                                    b.AddChannelArgument(
                                                        GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 4000);
                                                    b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
                                                  }));
  bound_ = fmt::format("{}:{}", c.listen.host, port);

  std::vector<std::string> self{bound_};
  if (is_local_host(c.listen.host)) {
    for (const char* h : {"127.0.0.1", "localhost", "[::1]"}) self.push_back(fmt::format("{}:{}", h, port));
  }
  if (!c.name.empty()) self.push_back(c.name);
  self_->set(c.name.empty() ? bound_ : c.name, std::move(self));

  if (c.metrics_listen) {
    const Metrics* m = metrics_.get();
    runtime::CacheStore* store = store_.get();
    metrics_endpoint_ = std::make_unique<rpc::MetricsEndpoint>([m, store] { return m->render(store->stats()); });
    KVB_RETURN_IF_ERROR(metrics_endpoint_->start(*c.metrics_listen));
  }
  sweep_thread_ = std::thread([this] { sweeper(); });
  return Status::Ok();
}

int AgentServer::metrics_port() const { return metrics_endpoint_ ? metrics_endpoint_->port() : 0; }

std::string AgentServer::summary() const {
  return fmt::format("{} | {} | ctx {} | store {} MiB", describe(*model_), engine_->backend_description(),
                     engine_->ctx_size(), config_.max_cache_bytes >> 20);
}

void AgentServer::sweeper() {
  std::unique_lock<std::mutex> lock(sweep_mu_);
  while (!sweep_cv_.wait_for(lock, std::chrono::seconds(1), [&] { return sweep_stop_; })) {
    const size_t n = store_->sweep();
    if (n > 0) rpc::log_event(spdlog::level::info, "expired caches", {{"count", int64_t(n)}});
  }
}

void AgentServer::shutdown(std::chrono::milliseconds grace) {
  if (shut_down_) return;
  shut_down_ = true;
  if (server_) {
    rpc::set_serving(*server_, kServiceName, false);
    // Waits for running calls until the deadline, then cancels them (their CancelTokens stop
    // generations and pulls) and waits for their reactors to finish.
    server_->Shutdown(std::chrono::system_clock::now() + grace);
  }
  if (engine_) engine_->stop();
  if (peers_) peers_->stop();
  transfers_.reset();  // ends the sessions still open (their receivers see UNAVAILABLE)
  {
    std::lock_guard<std::mutex> lock(sweep_mu_);
    sweep_stop_ = true;
  }
  sweep_cv_.notify_all();
  if (sweep_thread_.joinable()) sweep_thread_.join();
  if (metrics_endpoint_) metrics_endpoint_->stop();
  if (server_) server_->Wait();
}

// ============================== main ==============================

int agent_main(int argc, char** argv) {
  ParsedArgs args = parse_agent_args(argc, argv);
  if (!args.config) {
    std::fputs(args.output.c_str(), args.exit_code == 0 ? stdout : stderr);
    return args.exit_code;
  }
  AgentConfig cfg = std::move(*args.config);
  rpc::setup_logging(cfg.log_format);
  if (Status st = load_agent_files(cfg); !st.ok()) {
    rpc::log_event(spdlog::level::err, "bad configuration", {{"error", st.message()}});
    return 2;
  }

  keep_freed_memory();

  // Every thread created from here on inherits the blocked signals; main waits for them below.
  rpc::block_shutdown_signals();

  auto server = AgentServer::create(cfg);
  if (!server.ok()) {
    rpc::log_event(spdlog::level::err, "startup failed", {{"error", server.status().to_string()}});
    return 1;
  }
  if (Status st = (*server)->start(); !st.ok()) {
    rpc::log_event(spdlog::level::err, "startup failed", {{"error", st.to_string()}});
    return 1;
  }
  const AgentServer& s = **server;
  rpc::log_event(spdlog::level::info, "agent ready",
            {{"model", s.summary()},
             {"path", cfg.model_path},
             {"listen", s.bound_address()},
             {"tls", cfg.tls.enabled() ? (cfg.tls.mutual() ? "mutual" : "on") : "off"},
             {"auth", !cfg.auth_token.empty()},
             {"metrics_port", int64_t(s.metrics_port())}});
  rpc::announce_and_wait(s.bound_address(), cfg.metrics_listen, s.metrics_port());
  (*server)->shutdown(std::chrono::seconds(5));
  server->reset();
  rpc::log_event(spdlog::level::info, "stopped", {});
  return 0;
}

}  // namespace kvb::agent
