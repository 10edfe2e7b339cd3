#include "runtime/engine_loop.h"

#include <fmt/format.h>

#include <algorithm>

#include "engine/utf8_stream.h"
#include "kernels/registry.h"

namespace kvb::runtime {

namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

Status shutting_down() { return unavailable("the agent is shutting down"); }

}  // namespace

struct EngineLoop::Session {
  explicit Session(const SamplingParams& p) : sampler(p) {}

  SessionInput in;
  GenerateOptions opt;
  std::shared_ptr<GenerateSink> sink;
  std::unique_ptr<KvCache> cache;
  int32_t capacity = 0;       // cells the session may fill (the cache may have more)
  Sampler sampler;
  std::vector<float> logits;  // [n_vocab]: the distribution for the next token
  bool last_fed = true;       // whether the last streamed token is in the cache
  int32_t prev = -1;          // previous token, for decode_token's leading-space rule
  int32_t n_context = 0, n_prompt = 0, n_generated = 0;
  size_t max_stop = 0;
  Utf8StreamDecoder utf8;     // holds back a character split over tokens until it is complete
  std::string text;           // what was streamed so far: valid UTF-8
  std::optional<Clock::time_point> first_token;
};

// ---- lifecycle ----

EngineLoop::EngineLoop(const Model& model, CacheStore& store, const EngineOptions& opt)
    : model_(model), store_(store), opt_(opt) {}

Result<std::unique_ptr<EngineLoop>> EngineLoop::create(const Model& model, CacheStore& store,
                                                       const EngineOptions& opt) {
  if (!model.tokenizer) return failed_precondition("the model has no tokenizer (pass --tokenizer)");
  std::unique_ptr<EngineLoop> e(new EngineLoop(model, store, opt));
  e->ctx_size_ = opt.ctx_size > 0 ? opt.ctx_size : model.config.n_ctx_train;
  if (e->ctx_size_ <= 0) return invalid_argument("the model declares no context length; pass --ctx-size");
  const Device& device = opt.device != nullptr ? *opt.device : cpu_device();
  auto backend = device.create_backend();
  if (!backend.ok()) return backend.status().with_context(fmt::format("starting the engine on {}", device.name()));
  e->backend_ = std::move(backend).value();
  if (opt.n_threads > 0) e->backend_->set_n_threads(opt.n_threads);
  RunnerOptions ro;
  ro.graphs = opt.graphs;
  KVB_ASSIGN_OR_RETURN(e->runner_, ModelRunner::create(model, *e->backend_, ro));
  e->thread_ = std::thread([p = e.get()] { p->run(); });
  return e;
}

EngineLoop::~EngineLoop() { stop(); }

void EngineLoop::stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

std::string EngineLoop::backend_description() const {
  const Device& dev = backend_->device();
  std::string d = dev.description();
  if (!dev.buffer_type().is_host()) return fmt::format("{}: {}", dev.name(), d);
  // The CPU describes the machine ("... (2 threads)"); report the threads this backend uses.
  if (const size_t paren = d.rfind(" ("); paren != std::string::npos && d.back() == ')') d.resize(paren);
  return fmt::format("{}: {} ({} threads)", dev.name(), d, backend_->n_threads());
}

KvLayout EngineLoop::kv_layout() const { return runner_->kv_layout(DType::kF32); }

void EngineLoop::submit_generate(SessionInput in, GenerateOptions opt, std::shared_ptr<GenerateSink> sink) {
  Task t;
  t.in = std::move(in);
  t.is_generate = true;
  t.gen = std::move(opt);
  t.sink = std::move(sink);
  enqueue(std::move(t));
}

void EngineLoop::submit_prefill(SessionInput in, PrefillOptions opt, PrefillCallback done) {
  Task t;
  t.in = std::move(in);
  t.prefill = opt;
  t.prefill_done = std::move(done);
  enqueue(std::move(t));
}

void EngineLoop::enqueue(Task t) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!stopping_) {
      queue_.push_back(std::move(t));
      cv_.notify_one();
      return;
    }
  }
  fail(t, shutting_down());
}

void EngineLoop::fail(Task& t, const Status& st) {
  if (t.is_generate) {
    t.sink->on_done(st);
  } else {
    t.prefill_done(st);
  }
}

// ---- the loop ----

void EngineLoop::run() {
  std::deque<Task> batch;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || !sessions_.empty(); });
      if (stopping_) {
        batch.swap(queue_);
        break;
      }
      batch.swap(queue_);
    }
    // 1. Queued work, in arrival order: prefills run whole, generates start their session.
    for (Task& t : batch) run_task(t);
    batch.clear();
    // 2. One decode turn: one token per active session.
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      it = step(**it) ? std::next(it) : sessions_.erase(it);
    }
  }
  for (Task& t : batch) fail(t, shutting_down());
  for (auto& s : sessions_) s->sink->on_done(shutting_down());
  sessions_.clear();
}

void EngineLoop::run_task(Task& t) {
  if (t.in.cancel->cancelled()) return fail(t, cancelled("the client cancelled the request"));
  if (!t.is_generate) {
    t.prefill_done(run_prefill(t));
    return;
  }
  auto s = start_session(t);
  if (!s.ok()) return fail(t, s.status());
  sessions_.push_back(std::move(s).value());
}

Result<std::unique_ptr<KvCache>> EngineLoop::new_session_cache(int32_t cells) const {
  if (opt_.session_buffers == nullptr) return runner_->new_cache(cells, DType::kF32);
  return KvCache::create(*opt_.session_buffers, runner_->kv_layout(DType::kF32), cells);
}

Result<std::unique_ptr<KvCache>> EngineLoop::assemble_context(SessionInput& in, int32_t cells) {
  const KvLayout want = runner_->kv_layout(DType::kF32);
  // Host caches, or this engine's device memory when it runs on one.
  const bool host_engine = backend_->device().buffer_type().is_host();
  auto usable = [&](const KvCache& c) { return c.layout() == want && (c.is_host() || !host_engine); };
  std::unique_ptr<KvCache> owned = std::move(in.owned_context);
  if (owned != nullptr) {
    if (!usable(*owned)) return failed_precondition("the context cache has a layout this model cannot use");
    // The common pass: one pulled cache, decoded with room for this session. Positions from 0
    // mean no key needs turning, so it already is what append_shifted would build. A host cache
    // on a GPU engine is uploaded below instead.
    const bool adopt = in.context.empty() && owned->pos0() == 0 && owned->n_ctx() >= cells && host_engine;
    if (adopt) return owned;
  }
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, new_session_cache(cells));
  for (size_t i = 0; i < in.context.size(); ++i) {
    const KvCache& c = *in.context[i];
    if (!usable(c)) {
      return failed_precondition(fmt::format("context cache {} has a layout this model cannot use", i));
    }
    const Status st = cache->append_shifted(*backend_, c, model_.config.rope);
    if (!st.ok()) return st.with_context(fmt::format("appending context cache {}", i));
  }
  if (owned != nullptr) {
    const Status st = cache->append_shifted(*backend_, *owned, model_.config.rope);
    if (!st.ok()) return st.with_context("appending the context cache");
  }
  return cache;
}

namespace {

// Total context cells, or RESOURCE_EXHAUSTED when context + input cannot fit `ctx_size`.
Result<int64_t> count_context(const SessionInput& in, int32_t ctx_size) {
  int64_t n = in.owned_context ? in.owned_context->n_tokens() : 0;
  for (const auto& c : in.context) n += c->n_tokens();
  const int64_t total = n + int64_t(in.tokens.size());
  if (total > ctx_size) {
    return resource_exhausted(fmt::format("context ({} tokens) + input ({} tokens) = {} tokens exceed the context "
                                          "size of {} tokens",
                                          n, in.tokens.size(), total, ctx_size));
  }
  if (total == 0) return invalid_argument("nothing to process: no context and no input tokens");
  return n;
}

}  // namespace

Result<PrefillOutcome> EngineLoop::run_prefill(Task& t) {
  const auto t0 = Clock::now();
  KVB_ASSIGN_OR_RETURN(const int64_t n_context, count_context(t.in, ctx_size_));
  const int32_t cells = int32_t(n_context + int64_t(t.in.tokens.size()));
  const uint64_t bytes = uint64_t(cells) * kv_layout().cell_bytes() * 2 * uint64_t(kv_layout().n_layer);
  if (opt_.max_request_cache_bytes && bytes > opt_.max_request_cache_bytes) {
    return resource_exhausted(fmt::format("the new cache ({} tokens, {} bytes) exceeds --max-request-cache-bytes {}",
                                          cells, bytes, opt_.max_request_cache_bytes));
  }
  const int32_t reserve = t.prefill.hand_back ? std::max(0, std::min(t.prefill.reserve_cells, ctx_size_ - cells)) : 0;
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> cache, assemble_context(t.in, cells + reserve));
  if (!t.in.tokens.empty()) {
    std::vector<float> logits(static_cast<size_t>(model_.config.n_vocab));
    KVB_RETURN_IF_ERROR(runner_->forward(*cache, t.in.tokens, logits));
  }
  PrefillOutcome out;
  if (t.prefill.hand_back) {
    if (!cache->is_host()) {  // the receiver fuses on the host: stage it there
      const BufferType& host = opt_.host_buffers ? *opt_.host_buffers : host_staging_buffer_type(backend_->device());
      KVB_ASSIGN_OR_RETURN(cache, clone_cache(*cache, host, *backend_));
    }
    out.cache.n_tokens = cache->n_tokens();
    out.cache.bytes = cache->bytes_used();
    out.owned = std::move(cache);
  } else {
    KVB_ASSIGN_OR_RETURN(out.cache, keep(std::move(cache), t.prefill.ttl_s, t.prefill.pin));
  }
  out.prefill_ms = ms_between(t0, Clock::now());
  return out;
}

Result<CacheInfo> EngineLoop::keep(std::unique_ptr<KvCache> cache, uint32_t ttl_s, bool pin) {
  // Stored caches are exactly as large as their contents (free cells, or a pooled buffer's slack,
  // would count against the store's budget for nothing), in the device's own memory.
  if (cache->bytes_allocated() != cache->bytes_used()) {
    KVB_ASSIGN_OR_RETURN(cache, clone_cache(*cache, backend_->device().buffer_type(), *backend_));
  }
  if (opt_.max_request_cache_bytes && cache->bytes_allocated() > opt_.max_request_cache_bytes) {
    return resource_exhausted(fmt::format("the new cache ({} bytes) exceeds --max-request-cache-bytes {}",
                                          cache->bytes_allocated(), opt_.max_request_cache_bytes));
  }
  InsertOptions io;
  io.ttl_s = ttl_s;
  io.pinned = pin;
  io.fingerprint = opt_.fingerprint;
  return store_.insert(std::shared_ptr<const KvCache>(std::move(cache)), io);
}

// ---- Generate sessions ----

Result<std::unique_ptr<EngineLoop::Session>> EngineLoop::start_session(Task& t) {
  KVB_ASSIGN_OR_RETURN(const int64_t n_context, count_context(t.in, ctx_size_));
  const int64_t n_in = int64_t(t.in.tokens.size());
  // Room for every token that can be fed: context + input + max_tokens (the last sampled token
  // is fed only for keep_cache), never more than the context size.
  const int64_t want = n_context + n_in + t.gen.max_tokens;
  const int32_t cells = int32_t(std::min<int64_t>(want, ctx_size_));

  auto s = std::make_unique<Session>(t.gen.sampling);
  s->in = std::move(t.in);
  s->opt = std::move(t.gen);
  s->sink = std::move(t.sink);
  s->n_context = int32_t(n_context);
  s->n_prompt = int32_t(n_in);
  for (const auto& stop : s->opt.stop) s->max_stop = std::max(s->max_stop, stop.size());
  s->logits.resize(static_cast<size_t>(model_.config.n_vocab));

  KVB_ASSIGN_OR_RETURN(s->cache, assemble_context(s->in, cells));
  s->capacity = cells;
  s->in.context.clear();  // the session has its own copy; release the shared caches early
  if (n_in > 0) {
    KVB_RETURN_IF_ERROR(runner_->forward(*s->cache, s->in.tokens, s->logits));
    s->prev = s->in.tokens.back();
  } else {
    // Context only: a cache holds no logits, so recompute the last cell to get the next
    // distribution (same keys and values for a single context; for concatenated contexts the
    // last cell now also attends to the caches before it).
    const int32_t last = s->cache->tokens().back();
    KVB_RETURN_IF_ERROR(s->cache->truncate(s->cache->n_tokens() - 1));
    KVB_RETURN_IF_ERROR(runner_->forward(*s->cache, std::span<const int32_t>(&last, 1), s->logits));
    s->prev = last;
  }
  s->in.tokens.clear();
  s->in.tokens.shrink_to_fit();
  return s;
}

bool EngineLoop::step(Session& s) {
  if (s.in.cancel->cancelled()) {
    s.sink->on_done(cancelled("the client cancelled the request"));
    return false;
  }
  const int32_t next = s.sampler.sample(s.logits);
  if (!s.first_token) s.first_token = Clock::now();
  if (!s.opt.ignore_eos && model_.is_eos(next)) {
    finish(s, FinishReason::kEos);
    return false;
  }
  const std::string piece = model_.tokenizer->decode_token(next, s.prev);
  s.prev = next;
  s.last_fed = false;
  ++s.n_generated;
  std::string text;
  s.utf8.push(piece, text);
  const size_t old_len = s.text.size();
  s.text += text;
  s.sink->on_token(next, text);

  if (s.max_stop > 0 && !text.empty()) {
    // Only a match that ends inside the new piece is new.
    const size_t from = old_len >= s.max_stop ? old_len - s.max_stop + 1 : 0;
    for (const auto& stop : s.opt.stop) {
      if (s.text.find(stop, from) != std::string::npos) {
        finish(s, FinishReason::kStopString);
        return false;
      }
    }
  }
  if (s.n_generated >= s.opt.max_tokens) {
    finish(s, FinishReason::kMaxTokens);
    return false;
  }
  if (s.cache->n_tokens() >= s.capacity) {
    finish(s, FinishReason::kContextFull);
    return false;
  }
  const Status st = runner_->forward(*s.cache, std::span<const int32_t>(&next, 1), s.logits);
  if (!st.ok()) {
    s.sink->on_done(st);
    return false;
  }
  s.last_fed = true;
  return true;
}

void EngineLoop::finish(Session& s, FinishReason reason) {
  const auto now = Clock::now();
  GenerateOutcome out;
  out.reason = reason;
  out.n_context = s.n_context;
  out.n_prompt = s.n_prompt;
  out.n_generated = s.n_generated;
  const auto first = s.first_token.value_or(now);
  out.ttft_ms = ms_between(s.in.arrival, first);
  out.decode_ms = ms_between(first, now);
  if (s.opt.keep_cache) {
    // The cache should hold everything streamed: feed the last token when there is room (not
    // after a full context, where the last token stays out of the kept cache).
    if (!s.last_fed && s.cache->n_tokens() < s.capacity) {
      const int32_t last = s.prev;
      const Status st = runner_->forward(*s.cache, std::span<const int32_t>(&last, 1), s.logits);
      if (!st.ok()) return s.sink->on_done(st);
    }
    auto kept = keep(std::move(s.cache), s.opt.cache_ttl_s, /*pin=*/false);
    if (!kept.ok()) return s.sink->on_done(kept.status().with_context("keep_cache"));
    out.kept = std::move(kept).value();
  }
  out.tail = s.utf8.finish();
  out.text = std::move(s.text) + out.tail;
  s.sink->on_done(std::move(out));
}

}  // namespace kvb::runtime
