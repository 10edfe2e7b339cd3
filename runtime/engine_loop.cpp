#include "runtime/engine_loop.h"

#include <fmt/format.h>

#include <algorithm>

#include "kernels/registry.h"
#include "runtime/engine_session.h"

namespace kvb::runtime {

// ---- lifecycle ----

EngineLoop::EngineLoop(const Model& model, CacheStore& store, const EngineOptions& opt)
    : model_(model), store_(store), opt_(opt) {}

Result<std::unique_ptr<EngineLoop>> EngineLoop::create(const Model& model, CacheStore& store,
                                                       const EngineOptions& opt) {
  if (!model.tokenizer) return failed_precondition("the model has no tokenizer (pass --tokenizer)");
  if (opt.parallel < 1 || opt.max_queue < 0) return invalid_argument("parallel must be >= 1 and max_queue >= 0");
  if (opt.prefill_chunk < 1) return invalid_argument("prefill_chunk must be >= 1");
  if (opt.prefill_step_factor < 0) return invalid_argument("prefill_step_factor must be >= 0");
  if (opt.prefix_cache_bytes > 0 && opt.prefix_block_tokens < 1) {
    return invalid_argument("prefix_block_tokens must be >= 1");
  }
  if (opt.max_batch_tokens < opt.parallel) {
    return invalid_argument(fmt::format("max_batch_tokens ({}) must be at least parallel ({}): every decoding "
                                        "sequence needs its row in each step",
                                        opt.max_batch_tokens, opt.parallel));
  }
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
  ro.n_batch = opt.max_batch_tokens;
  KVB_ASSIGN_OR_RETURN(e->runner_, ModelRunner::create(model, *e->backend_, ro));
  if (opt.prefix_cache_bytes > 0) {
    PrefixCacheOptions po;
    po.block_tokens = opt.prefix_block_tokens;
    po.max_bytes = opt.prefix_cache_bytes;
    po.fingerprint = opt.fingerprint;
    const BufferType& mem = opt.session_buffers ? *opt.session_buffers : e->backend_->device().buffer_type();
    e->prefix_ = std::make_unique<PrefixCache>(po, e->kv_layout(), mem);
  }
  e->chunker_.emplace(opt.prefill_chunk, opt.prefill_step_factor);
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

EngineLoad EngineLoop::load() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineLoad load{opt_.parallel, opt_.max_batch_tokens, opt_.prefill_chunk, opt_.max_queue, active_,
                  int32_t(queue_.size())};
  if (prefix_ != nullptr) {
    load.prefix = prefix_->stats();
    load.prefix_block_tokens = prefix_->block_tokens();
  }
  return load;
}

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
  Status refused;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      refused = unavailable("the agent is shutting down");
    } else if (int64_t(active_) + int64_t(queue_.size()) >= int64_t(opt_.parallel) + opt_.max_queue) {
      // Slots and queue places are counted together: a task admitted by the loop frees its queue
      // place and takes a slot in one go, so the limit does not depend on the loop's timing.
      refused = resource_exhausted(fmt::format(
          "the agent is at capacity: {} sequences run (--parallel {}) and {} requests wait (--max-queue {}); "
          "retry later",
          active_, opt_.parallel, queue_.size(), opt_.max_queue));
    } else {
      queue_.push_back(std::move(t));
      cv_.notify_one();
      return;
    }
  }
  fail(t, refused);
}

void EngineLoop::fail(Task& t, const Status& st) {
  if (t.is_generate) {
    t.sink->on_done(st);
  } else {
    t.prefill_done(st);
  }
}

void EngineLoop::fail(Session& s, const Status& st) {
  s.finished = true;
  if (s.is_generate) {
    s.sink->on_done(st);
  } else {
    s.prefill_done(st);
  }
}

// ---- the loop ----

void EngineLoop::run() {
  std::vector<Task> admitted;
  for (;;) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait(lock, [&] { return stopping_ || !queue_.empty() || !sessions_.empty(); });
      if (stopping_) break;
      // Free slots go to the queue's head, in arrival order.
      while (!queue_.empty() && active_ < opt_.parallel) {
        admitted.push_back(std::move(queue_.front()));
        queue_.pop_front();
        ++active_;
      }
    }
    for (Task& t : admitted) admit(t);
    admitted.clear();
    if (!sessions_.empty()) run_step();
    const size_t before = sessions_.size();
    sessions_.remove_if([](const std::unique_ptr<Session>& s) { return s->finished; });
    const bool removed = sessions_.size() != before;
    if (prefix_ != nullptr) prefix_->refresh_gauges(/*force=*/removed);  // removed ones let their blocks go
    if (removed) {
      std::lock_guard<std::mutex> lock(mu_);
      active_ = int32_t(sessions_.size());
    }
  }
  std::deque<Task> queued;
  {
    std::lock_guard<std::mutex> lock(mu_);
    queued.swap(queue_);
  }
  const Status down = unavailable("the agent is shutting down");
  for (Task& t : queued) fail(t, down);
  for (auto& s : sessions_) {
    if (!s->finished) fail(*s, down);
  }
  sessions_.clear();
}

void EngineLoop::admit(Task& t) {
  Result<std::unique_ptr<Session>> s = t.in.cancel->cancelled() ? Result<std::unique_ptr<Session>>(
                                                                      cancelled("the client cancelled the request"))
                                                                : start(t);
  if (!s.ok()) {
    fail(t, s.status());
    std::lock_guard<std::mutex> lock(mu_);
    --active_;
    return;
  }
  // A Prefill with nothing to compute (a context alone) is done at once.
  if (!(*s)->is_generate && (*s)->prompt_left() == 0) finish_prefill(**s);
  sessions_.push_back(std::move(s).value());
}

void EngineLoop::run_step() {
  std::vector<SeqStep> steps;
  std::vector<Session*> in_step;
  // 1. Decoding sequences sample and stream; those that go on feed their token.
  for (auto& sp : sessions_) {
    Session& s = *sp;
    if (s.finished) continue;
    if (s.cancel_requested()) {
      fail(s, cancelled("the client cancelled the request"));
      continue;
    }
    if (!s.decoding() || !sample_and_stream(s)) continue;
    steps.push_back(s.step(std::span<const int32_t>(&s.next, 1), s.logits.data(), true));
    in_step.push_back(&s);
  }
  const int32_t n_decode = int32_t(steps.size());
  // 2. Prompt chunks, in admission order, within the step's token budget: while others decode,
  //    at most prefill_chunk tokens, so that their next tokens do not wait on a long prefill.
  int64_t budget = int64_t(opt_.max_batch_tokens) - n_decode;
  if (n_decode > 0) budget = std::min<int64_t>(budget, chunker_->chunk());
  for (auto& sp : sessions_) {
    Session& s = *sp;
    if (s.finished || s.decoding() || budget <= 0) continue;
    const int64_t n = std::min<int64_t>(s.prompt_left(), budget);
    if (n <= 0) continue;
    budget -= n;
    const bool last = n == s.prompt_left();
    const std::span<const int32_t> chunk(s.in.tokens.data() + s.fed, size_t(n));
    steps.push_back(s.step(chunk, last && s.is_generate ? s.logits.data() : nullptr, false));
    in_step.push_back(&s);
  }
  if (steps.empty()) return;
  // 3. One forward over all of it.
  const auto t0 = Clock::now();
  const Status st = runner_->forward_batch(steps);
  StepInfo info;
  info.n_seqs = int32_t(steps.size());
  info.n_decode = n_decode;
  for (const SeqStep& q : steps) info.n_tokens += int32_t(q.tokens.size());
  info.seconds = ms_between(t0, Clock::now()) / 1e3;
  if (st.ok()) chunker_->observe(n_decode, info.n_tokens - n_decode, info.seconds);
  if (opt_.on_step) opt_.on_step(info);
  for (size_t i = 0; i < in_step.size(); ++i) {
    Session& s = *in_step[i];
    if (!st.ok()) {
      fail(s, st);
      continue;
    }
    if (steps[i].decode) {
      s.last_fed = true;
      continue;
    }
    s.fed += steps[i].tokens.size();
    if (s.cacheable) {
      // Whole blocks join the prefix cache as they complete: a block copy per chunk, not the whole
      // prompt's cells in the step that ends it.
      if (const Status shared = share_prefix(s); !shared.ok()) {
        fail(s, shared.with_context("moving the prompt's cells into the prefix cache"));
        continue;
      }
    }
    if (s.prompt_left() > 0) continue;
    if (s.is_generate) {
      s.prev = s.in.tokens.back();
      s.has_logits = true;
      s.in.tokens = {};
    } else {
      finish_prefill(s);
    }
  }
}

}  // namespace kvb::runtime
