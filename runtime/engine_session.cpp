#include <fmt/format.h>

#include <algorithm>

#include "kernels/registry.h"
#include "runtime/engine_loop.h"
#include "runtime/engine_session.h"

namespace kvb::runtime {

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

Result<std::unique_ptr<EngineLoop::Session>> EngineLoop::start(Task& t) {
  KVB_ASSIGN_OR_RETURN(const int64_t n_context, count_context(t.in, ctx_size_));
  const int64_t n_in = int64_t(t.in.tokens.size());
  int32_t cells = 0;
  if (t.is_generate && !t.gen.forced.empty()) {
    for (int32_t id : t.gen.forced) {
      if (id < 0 || id >= model_.config.n_vocab) {
        return invalid_argument(fmt::format("forced token {} is outside the vocabulary [0, {})", id,
                                            model_.config.n_vocab));
      }
    }
    t.gen.max_tokens = int32_t(t.gen.forced.size());  // what capacity and the stop rule count
  }
  if (t.is_generate) {
    // Room for every token that can be fed: context + input + max_tokens (the last sampled token
    // is fed only for keep_cache), never more than the context size.
    cells = int32_t(std::min<int64_t>(n_context + n_in + t.gen.max_tokens, ctx_size_));
  } else {
    cells = int32_t(n_context + n_in);
    const uint64_t bytes = uint64_t(cells) * kv_layout().cell_bytes() * 2 * uint64_t(kv_layout().n_layer);
    if (opt_.max_request_cache_bytes && bytes > opt_.max_request_cache_bytes) {
      return resource_exhausted(fmt::format("the new cache ({} tokens, {} bytes) exceeds --max-request-cache-bytes {}",
                                            cells, bytes, opt_.max_request_cache_bytes));
    }
    if (t.prefill.hand_back) cells += std::max(0, std::min(t.prefill.reserve_cells, ctx_size_ - cells));
  }
  auto s = std::make_unique<Session>(t.gen.sampling);
  s->is_generate = t.is_generate;
  s->started = Clock::now();
  s->in = std::move(t.in);
  s->opt = std::move(t.gen);
  s->sink = std::move(t.sink);
  s->prefill = t.prefill;
  s->prefill_done = std::move(t.prefill_done);
  s->n_context = int32_t(n_context);
  s->n_prompt = int32_t(n_in);
  if (s->opt.forced.empty()) {  // stop strings do not apply to forced tokens
    for (const auto& stop : s->opt.stop) s->max_stop = std::max(s->max_stop, stop.size());
  }

  if (s->is_generate) s->logits.resize(static_cast<size_t>(model_.config.n_vocab));
  s->capacity = cells;
  // Cells that are exactly what prefilling the tokens computes (no context, or one context cache
  // from position 0) can come from, and go to, the prefix cache.
  const KvCache* single = nullptr;
  if (s->in.context.size() == 1 && s->in.owned_context == nullptr) single = s->in.context.front().get();
  if (s->in.context.empty() && s->in.owned_context != nullptr) single = s->in.owned_context.get();
  const bool host_engine = backend_->device().buffer_type().is_host();
  const bool single_ok = single == nullptr || (s->in.context_exact && single->pos0() == 0 &&
                                               single->layout() == kv_layout() && (single->is_host() || !host_engine));
  const bool no_context = s->in.context.empty() && s->in.owned_context == nullptr;
  s->cacheable = prefix_ != nullptr && prefix_->enabled() && (no_context || single != nullptr) && single_ok &&
                 (s->is_generate || n_in > 0);
  if (s->cacheable) {
    KVB_RETURN_IF_ERROR(start_cached(*s, single, cells));
    s->in.context.clear();
    s->in.owned_context.reset();
    return s;
  }
  KVB_ASSIGN_OR_RETURN(s->cache, assemble_context(s->in, cells));
  s->in.context.clear();  // the sequence has its own copy; release the shared caches early
  if (s->is_generate) {
    if (n_in == 0) {
      // Context only: a cache holds no logits, so the last cell is computed again as the input
      // (same keys and values for a single context; for concatenated contexts the last cell now
      // also attends to the caches before it).
      const int32_t last = s->cache->tokens().back();
      KVB_RETURN_IF_ERROR(s->cache->truncate(s->cache->n_tokens() - 1));
      s->in.tokens = {last};
    }
  }
  return s;
}

bool EngineLoop::sample_and_stream(Session& s) {
  const bool forcing = !s.opt.forced.empty();
  // Forced tokens are never cut short (no EOS or stop string), so the next is forced[n_generated].
  const int32_t next = forcing ? s.opt.forced[size_t(s.n_generated)] : s.sampler.sample(s.logits);
  std::optional<TokenLogprobs> lp;
  if (s.opt.logprobs || forcing || s.opt.top_logprobs > 0) lp = token_logprobs(s.logits, next, s.opt.top_logprobs);
  if (!s.first_token) s.first_token = Clock::now();
  if (!forcing && !s.opt.ignore_eos && model_.is_eos(next)) {
    finish_generate(s, FinishReason::kEos);
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
  s.sink->on_token(next, text, lp ? &*lp : nullptr);

  if (s.max_stop > 0 && !text.empty()) {
    // Only a match that ends inside the new piece is new.
    const size_t from = old_len >= s.max_stop ? old_len - s.max_stop + 1 : 0;
    for (const auto& stop : s.opt.stop) {
      if (s.text.find(stop, from) != std::string::npos) {
        finish_generate(s, FinishReason::kStopString);
        return false;
      }
    }
  }
  if (s.n_generated >= s.opt.max_tokens) {  // with forced tokens, max_tokens is their count (start)
    finish_generate(s, FinishReason::kMaxTokens);
    return false;
  }
  if (s.n_cells() >= s.capacity) {
    finish_generate(s, FinishReason::kContextFull);
    return false;
  }
  s.next = next;
  return true;
}

void EngineLoop::finish_generate(Session& s, FinishReason reason) {
  s.finished = true;
  const auto now = Clock::now();
  GenerateOutcome out;
  out.reason = reason;
  out.n_context = s.n_context;
  out.n_prompt = s.n_prompt;
  out.n_cached = s.n_cached;
  out.n_generated = s.n_generated;
  const auto first = s.first_token.value_or(now);
  out.ttft_ms = ms_between(s.in.arrival, first);
  out.decode_ms = ms_between(first, now);
  if (s.opt.keep_cache) {
    // The cache should hold everything streamed: feed the last token when there is room (not
    // after a full context, where the last token stays out of the kept cache).
    if (!s.last_fed && s.n_cells() < s.capacity) {
      const int32_t last = s.prev;
      const SeqStep step = s.step(std::span<const int32_t>(&last, 1), s.logits.data(), true);
      const Status st = runner_->forward_batch(std::span<const SeqStep>(&step, 1));
      if (!st.ok()) return s.sink->on_done(st);
    }
    auto cells = take_cells(s, backend_->device().buffer_type(), 0);
    if (!cells.ok()) return s.sink->on_done(cells.status().with_context("keep_cache"));
    auto kept = keep(std::move(cells).value(), s.opt.cache_ttl_s, /*pin=*/false, s.cacheable);
    if (!kept.ok()) return s.sink->on_done(kept.status().with_context("keep_cache"));
    out.kept = std::move(kept).value();
  }
  s.cache.reset();
  s.prefix.clear();
  out.tail = s.utf8.finish();
  out.text = std::move(s.text) + out.tail;
  s.sink->on_done(std::move(out));
}

void EngineLoop::finish_prefill(Session& s) {
  s.finished = true;
  // A hand_back cache keeps the free cells it was asked for; a stored one is exactly its cells.
  const BufferType& memory = s.prefill.hand_back && opt_.session_buffers != nullptr ? *opt_.session_buffers
                                                                                     : backend_->device().buffer_type();
  auto taken = take_cells(s, memory, s.prefill.hand_back ? s.capacity - s.n_cells() : 0);
  if (!taken.ok()) return s.prefill_done(taken.status());
  std::unique_ptr<KvCache> cache = std::move(taken).value();
  PrefillOutcome out;
  if (s.prefill.hand_back) {
    if (!cache->is_host()) {  // the receiver fuses on the host: stage it there
      const BufferType& host = opt_.host_buffers ? *opt_.host_buffers : host_staging_buffer_type(backend_->device());
      auto staged = clone_cache(*cache, host, *backend_);
      if (!staged.ok()) return s.prefill_done(staged.status());
      cache = std::move(staged).value();
    }
    out.cache.n_tokens = cache->n_tokens();
    out.cache.bytes = cache->bytes_used();
    out.owned = std::move(cache);
  } else {
    auto kept = keep(std::move(cache), s.prefill.ttl_s, s.prefill.pin, s.cacheable);
    if (!kept.ok()) return s.prefill_done(kept.status());
    out.cache = std::move(kept).value();
  }
  out.prefill_ms = ms_between(s.started, Clock::now());
  s.prefill_done(std::move(out));
}

Result<CacheInfo> EngineLoop::keep(std::unique_ptr<KvCache> cache, uint32_t ttl_s, bool pin, bool exact) {
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
  io.exact = exact;
  io.fingerprint = opt_.fingerprint;
  return store_.insert(std::shared_ptr<const KvCache>(std::move(cache)), io);
}

Status EngineLoop::start_cached(Session& s, const KvCache* context, int32_t cells) {
  const int32_t n_context = context ? context->n_tokens() : 0;
  if (context != nullptr) {
    std::vector<int32_t> all(context->tokens().begin(), context->tokens().end());
    all.insert(all.end(), s.in.tokens.begin(), s.in.tokens.end());
    s.in.tokens = std::move(all);
    // The context's whole blocks join the cache (or are found there), so that later requests and
    // this one share them.
    (void)prefix_->insert(s.in.tokens, {}, *context, *backend_);
  }
  // The last token is always computed here: its logits are the first prediction.
  const int32_t limit = int32_t(s.in.tokens.size()) - 1;
  const PrefixMatch m = prefix_->match(s.in.tokens, limit, n_context);
  s.prefix = m.blocks;
  const int32_t n_blocks = int32_t(m.blocks.size()) * m.block_tokens;
  KVB_ASSIGN_OR_RETURN(s.cache, new_session_cache(cells - n_blocks));
  KVB_RETURN_IF_ERROR(s.cache->set_pos0(n_blocks));
  if (m.partial_n > 0) KVB_RETURN_IF_ERROR(s.cache->append_cells(*backend_, *m.partial, 0, m.partial_n));
  const int32_t have = std::min(n_context, limit);  // context cells the blocks did not cover
  if (m.tokens() < have) KVB_RETURN_IF_ERROR(s.cache->append_cells(*backend_, *context, m.tokens(), have - m.tokens()));
  KVB_RETURN_IF_ERROR(backend_->synchronize());
  s.fed = size_t(std::max(m.tokens(), have));
  s.n_cached = std::max(0, m.tokens() - n_context);
  return Status::Ok();
}

Status EngineLoop::share_prefix(Session& s) {
  if (!s.is_generate) {
    // A Prefill keeps reading its own cells, which become the stored cache as they are.
    (void)prefix_->insert(s.in.tokens, s.prefix, *s.cache, *backend_);
    return Status::Ok();
  }
  const size_t had = s.prefix.size();
  s.prefix = prefix_->insert(s.in.tokens, std::move(s.prefix), *s.cache, *backend_);
  const int32_t gained = int32_t(s.prefix.size() - had) * prefix_->block_tokens();
  if (gained == 0) return Status::Ok();
  KVB_RETURN_IF_ERROR(s.cache->drop_front(*backend_, gained));
  return backend_->synchronize();
}

Result<std::unique_ptr<KvCache>> EngineLoop::take_cells(Session& s, const BufferType& memory, int32_t extra) {
  if (s.prefix.empty()) return std::move(s.cache);
  KVB_ASSIGN_OR_RETURN(std::unique_ptr<KvCache> out, KvCache::create(memory, kv_layout(), s.n_cells() + extra));
  for (const auto& block : s.prefix) KVB_RETURN_IF_ERROR(out->append_cells(*backend_, *block, 0, block->n_tokens()));
  KVB_RETURN_IF_ERROR(out->append_cells(*backend_, *s.cache, 0, s.cache->n_tokens()));
  KVB_RETURN_IF_ERROR(backend_->synchronize());
  s.prefix.clear();
  s.cache.reset();
  return out;
}

}  // namespace kvb::runtime
