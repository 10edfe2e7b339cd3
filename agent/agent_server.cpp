#include "agent/agent_server.h"

#include <fmt/format.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <malloc.h>
#include <cstdint>
#include <cstdio>

#include "agent/agent_metrics.h"
#include "agent/agent_service.h"
#include "agent/context_fuser.h"
#include "agent/transfer/peer_client.h"
#include "engine/kv_wire.h"
#include "engine/model.h"
#include "fuser/fuser.h"
#include "kernels/registry.h"
#include "rpc/auth.h"
#include "rpc/logging.h"
#include "rpc/metrics.h"
#include "rpc/server.h"
#include "runtime/buffer_pool.h"
#include "runtime/cache_staging.h"
#include "runtime/cache_store.h"
#include "runtime/engine_loop.h"

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

  // 1. The device first: a GPU that is not there fails at once, before the model is read.
  auto found = find_device(c.device);
  if (!found.ok()) return found.status().with_context("--device " + c.device);
  const Device& device = **found;

  // 2. The model.
  LoadOptions lo;
  lo.tokenizer_path = c.tokenizer_path;
  KVB_ASSIGN_OR_RETURN(s->model_, load_model(c.model_path, lo));
  if (!s->model_->tokenizer) {
    return failed_precondition(fmt::format("{} has no tokenizer; pass --tokenizer", c.model_path));
  }
  s->identity_ = std::make_unique<ModelIdentity>(model_identity(*s->model_));
  const int32_t n_ctx_train = s->model_->config.n_ctx_train;
  if (c.ctx_size > 0 && n_ctx_train > 0 && c.ctx_size > n_ctx_train) {
    rpc::log_event(spdlog::level::warn,
                   "--ctx-size exceeds the model's training context; positions beyond it extrapolate",
                   {{"ctx_size", int64_t(c.ctx_size)}, {"n_ctx_train", int64_t(n_ctx_train)}});
  }
  s->metrics_ = std::make_unique<Metrics>();
  s->auth_ = std::make_unique<rpc::BearerAuth>(c.auth_token);
  s->self_ = std::make_unique<SelfAddresses>();

  // 3. The runtime, 4. cache transfers, 5. the embedded fuser, 6. the service.
  KVB_RETURN_IF_ERROR(s->build_runtime(device));
  const KvWireLimits limits = s->received_cache_limits();
  s->build_transfers(device, std::move(transports), limits);
  KVB_RETURN_IF_ERROR(s->load_embedded_fuser(device));
  s->context_fuser_ =
      std::make_unique<ContextFuser>(*s->model_, *s->identity_, *s->engine_, *s->peers_, s->fuser_.get());
  s->build_service(device, limits);
  return s;
}

Status AgentServer::build_runtime(const Device& device) {
  const AgentConfig& c = config_;
  const bool on_gpu = !device.buffer_type().is_host();
  runtime::CacheStoreOptions so;
  so.max_bytes = c.max_cache_bytes;
  so.default_ttl_s = c.cache_ttl_s;
  store_ = std::make_unique<runtime::CacheStore>(so);

  // Pulled caches and Generate sessions are short-lived and cache-sized: recycle their memory
  // (runtime/buffer_pool.h), at most one request's worth kept idle per pool. On the CPU one pool
  // serves both (a pulled cache becomes the session's cache as it is). On a GPU, sessions take
  // device memory from their own pool, and the host pool is pinned memory: pulls land there and
  // are uploaded, device caches are staged there to be exported (CacheStager).
  runtime::BufferPoolOptions bo;
  bo.max_idle_bytes = size_t(std::min<uint64_t>(c.request_cache_limit(), SIZE_MAX));
  session_buffers_ = std::make_unique<runtime::BufferPool>(host_staging_buffer_type(device), bo);
  if (on_gpu) device_buffers_ = std::make_unique<runtime::BufferPool>(device.buffer_type(), bo);
  KVB_ASSIGN_OR_RETURN(stager_, runtime::CacheStager::create(device, session_buffers_.get()));

  runtime::EngineOptions eo;
  eo.device = &device;
  eo.n_threads = c.threads;
  eo.graphs = c.cuda_graphs;
  eo.session_buffers = on_gpu ? device_buffers_.get() : session_buffers_.get();
  eo.host_buffers = session_buffers_.get();
  eo.ctx_size = c.ctx_size;
  eo.max_request_cache_bytes = c.request_cache_limit();
  eo.fingerprint = identity_->fingerprint;
  eo.parallel = c.parallel;
  eo.max_batch_tokens = c.max_batch_tokens;
  eo.prefill_chunk = c.prefill_chunk;
  eo.prefill_step_factor = c.prefill_step_factor;
  eo.max_queue = c.max_queue;
  eo.prefix_cache_bytes = c.prefix_cache_bytes;
  eo.prefix_block_tokens = c.prefix_block_tokens;
  eo.on_step = [m = metrics_.get()](const runtime::StepInfo& step) { m->record_step(step); };
  KVB_ASSIGN_OR_RETURN(engine_, runtime::EngineLoop::create(*model_, *store_, eo));
  return Status::Ok();
}

KvWireLimits AgentServer::received_cache_limits() const {
  // Received caches (imports, pulls): at most a context's worth of cells, and no more f32 bytes
  // than one request may hold.
  const uint64_t request_limit = config_.request_cache_limit();
  const KvLayout lay = engine_->kv_layout();
  const uint64_t cache_bytes_per_cell = uint64_t(lay.cell_bytes()) * 2 * uint64_t(lay.n_layer);
  KvWireLimits limits;
  limits.max_tokens =
      static_cast<uint32_t>(std::min<uint64_t>(uint64_t(engine_->ctx_size()), request_limit / cache_bytes_per_cell));
  limits.max_bytes = request_limit;
  return limits;
}

void AgentServer::build_transfers(const Device& device, std::unique_ptr<TransportFactory> transports,
                                  const KvWireLimits& limits) {
  const AgentConfig& c = config_;
  // grpc pulls arrive in host memory (ExportCache stages a device cache to the host); raw pulls
  // (nccl, cuda-ipc) land where the factory says: device memory on a GPU.
  const BufferType& raw_buffers =
      device_buffers_ ? static_cast<const BufferType&>(*device_buffers_) : *session_buffers_;
  transports_ = transports ? std::move(transports) : make_agent_transport_factory(device, raw_buffers);
  transfers_ = std::make_unique<TransferSessions>(*transports_);

  PeerClientOptions po;
  po.identity = *identity_;
  po.limits = limits;
  po.max_message_bytes = c.max_message_bytes;
  po.tls = c.tls.enabled();
  po.tls_root_pem = c.tls.mutual() ? c.tls.client_ca_pem : c.tls.cert_pem;
  po.tls_cert_pem = c.tls.cert_pem;
  po.tls_key_pem = c.tls.key_pem;
  po.auth_token = c.auth_token;
  po.metrics = metrics_.get();
  po.cache_buffers = session_buffers_.get();
  po.endpoint = transports_->endpoint();
  po.transports = transports_.get();
  peers_ = std::make_unique<PeerClient>(std::move(po));
  sharer_ = std::make_unique<CacheSharer>(*store_, *stager_, *identity_, transports_->endpoint(), transfers_.get(),
                                          c.max_message_bytes);
}

Status AgentServer::load_embedded_fuser(const Device& device) {
  const AgentConfig& c = config_;
  if (c.fuser_dir.empty()) return Status::Ok();
  KVB_ASSIGN_OR_RETURN(fuser_backend_, device.create_backend());
  if (c.threads > 0) fuser_backend_->set_n_threads(c.threads);
  auto f = fuser::Fuser::load(c.fuser_dir, *fuser_backend_);
  if (!f.ok()) return f.status().with_context("--fuser " + c.fuser_dir);
  fuser_ = std::move(f).value();
  const fuser::ModelSide& r = fuser_->config().receiver;
  const ModelIdentity& id = *identity_;
  if ((r.fingerprint != 0 && r.fingerprint != id.fingerprint) || uint32_t(r.n_layer) != id.n_layer ||
      uint32_t(r.n_head_kv) != id.n_head_kv || uint32_t(r.head_dim) != id.head_dim) {
    return failed_precondition(fmt::format("--fuser {}: built for receiver {} ({} layers x {} x {}), not this model",
                                           c.fuser_dir, r.name, r.n_layer, r.n_head_kv, r.head_dim));
  }
  return Status::Ok();
}

void AgentServer::build_service(const Device& device, const KvWireLimits& limits) {
  ServiceDeps d;
  d.fuser = context_fuser_.get();
  d.config = &config_;
  d.model = model_.get();
  d.identity = identity_.get();
  d.store = store_.get();
  d.engine = engine_.get();
  d.peers = peers_.get();
  d.metrics = metrics_.get();
  d.auth = auth_.get();
  d.self = self_.get();
  d.import_limits = limits;
  d.sharer = sharer_.get();
  d.stager = stager_.get();
  // Imports decode into host memory; on a GPU into the pinned pool, then they are uploaded.
  const bool on_gpu = !device.buffer_type().is_host();
  d.import_buffers = on_gpu ? static_cast<const BufferType*>(session_buffers_.get()) : &cpu_device().buffer_type();
  service_ = std::make_unique<AgentServiceImpl>(std::move(d));
}

Status AgentServer::start() {
  const AgentConfig& c = config_;
  int port = 0;
  // Handlers answer INVALID_ARGUMENT between --max-message-bytes and twice it (agent.proto).
  // Peers ping every 5 s during transfers to detect a hung sharer (rpc::ChannelConfig::peer_keepalive);
  // accept that.
  const auto accept_peer_pings = [](grpc::ServerBuilder& b) {
    b.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 4000);
    b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  };
  KVB_ASSIGN_OR_RETURN(server_, rpc::start_grpc_server(c.listen, c.tls, c.max_message_bytes, *service_, kServiceName,
                                                       port, accept_peer_pings));
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
    const runtime::EngineLoop* engine = engine_.get();
    metrics_endpoint_ = std::make_unique<rpc::MetricsEndpoint>(
        [m, store, engine] { return m->render(store->stats(), engine->load()); });
    KVB_RETURN_IF_ERROR(metrics_endpoint_->start(*c.metrics_listen));
  }
  sweep_thread_ = std::thread([this] { sweeper(); });
  peer_warmer_ = std::make_unique<PeerWarmer>(*peers_, c.peers);
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
  if (peer_warmer_) peer_warmer_->stop();
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
  rpc::ServeOptions so;
  so.ready = "agent ready";
  so.fields = {{"model", (*server)->summary()}, {"path", cfg.model_path}};
  so.tls = cfg.tls;
  so.auth = !cfg.auth_token.empty();
  so.metrics_listen = cfg.metrics_listen;
  return rpc::serve(std::move(server).value(), so);
}

}  // namespace kvb::agent
