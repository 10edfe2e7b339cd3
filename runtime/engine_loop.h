// EngineLoop: the one thread that owns the model's runner and does all work on the model.
//
// Handlers (agent_service.cpp) validate and convert requests, resolve their context caches
// (store lookups, peer pulls) and then submit a task here. A task waits in a bounded queue
// (EngineOptions::max_queue; beyond it submit answers RESOURCE_EXHAUSTED at once) until one of
// EngineOptions::parallel sequence slots is free, then becomes a sequence: its cache is assembled
// (a fresh KvCache sized for context + input + max_tokens, the context caches appended in order
// with KvCache::append_shifted; a context that is one cache the request owns outright,
// SessionInput::owned_context, a fresh pull, becomes the sequence's cache itself when it has the
// room) and its input tokens wait to be prefilled. The loop then repeats one step (continuous
// batching, as llama.cpp's server and vLLM do):
//   1. every decoding Generate samples one token from its last logits and streams it (or
//      finishes); each one that goes on contributes that token as a decode row;
//   2. sequences with input left contribute their next chunk, in admission order, until the step
//      holds EngineOptions::max_batch_tokens tokens, or PrefillChunker::chunk() prompt tokens (at
//      most prefill_chunk, sized to keep the step near prefill_step_factor decode steps) while any
//      sequence decodes (chunked prefill: a long prompt runs over several steps while the others
//      keep streaming);
//   3. one ModelRunner::forward_batch over all those rows; a Generate whose input is done has its
//      first logits, a Prefill whose input is done is stored (or handed back).
// On the CPU a sequence computes the same bits whatever shares its steps (RowMode), so a request's
// greedy tokens do not depend on the load. Cancellation is checked every step; a cancelled
// sequence's cache is freed at once.
// The loop never touches the network: results go to per-request sinks/callbacks that only queue
// data for their gRPC reactor.
//
// Device: the runner, the session caches and the caches the loop stores live on
// EngineOptions::device (the CPU by default). On a GPU, context caches that arrive in host memory
// (pulls, fused contexts) are uploaded into the session's device cache as they are appended, and
// hand_back prefills are staged back to host memory. A step of decode rows only runs as one CUDA
// graph (EngineOptions::graphs).
//
// Ownership: the loop owns the Backend, the ModelRunner and every sequence's KvCache; it borrows
// the Model, the CacheStore, EngineOptions::device, session_buffers and host_buffers (all must
// outlive it). Shared context caches (the store's entries) are read-only pointers the loop never
// writes into; an owned context is the loop's to use as it likes.
// Threading: submit_*(), stop() and the accessors are thread-safe; sinks, callbacks and
// EngineOptions::on_step are called on the engine thread (or on the caller's thread, with
// UNAVAILABLE after stop() or RESOURCE_EXHAUSTED for a full queue), exactly once per task for the
// final result, and must not block.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "engine/forward.h"
#include "engine/model.h"
#include "engine/sampler.h"
#include "kernels/status.h"
#include "runtime/cache_store.h"
#include "runtime/cancel_token.h"
#include "runtime/prefill_chunker.h"
#include "runtime/prefix_cache.h"

namespace kvb::runtime {

// One engine step, for metrics.
struct StepInfo {
  int32_t n_seqs = 0;         // sequences in the step
  int32_t n_tokens = 0;       // rows: decode tokens + prompt chunk tokens
  int32_t n_decode = 0;       // decode rows
  double seconds = 0;         // the forward pass
};

struct EngineOptions {
  // The device the model runs on (borrowed; registry devices live for the process). Null: the CPU.
  const Device* device = nullptr;
  int32_t n_threads = 0;                // CPU backend threads; 0 = all cores
  int32_t ctx_size = 0;                 // max cells per session; 0 = the model's n_ctx_train
  bool graphs = true;                   // decode steps as op graphs where the backend has them
  uint64_t max_request_cache_bytes = 0; // largest cache a Prefill / keep_cache may store; 0 = none
  uint64_t fingerprint = 0;             // ModelIdentity::fingerprint, stamped on stored caches
  // Memory for session caches (borrowed; null: the backend's device memory), e.g. a BufferPool
  // over it. It must be memory the backend computes on (host memory for the CPU backend, device
  // memory for a GPU).
  const BufferType* session_buffers = nullptr;
  // Host memory for the caches a hand_back Prefill returns when the engine runs on a GPU
  // (borrowed; null: host_staging_buffer_type(device), i.e. pinned memory). Unused on the CPU.
  const BufferType* host_buffers = nullptr;
  // Continuous batching. parallel: sequences (Generates and Prefills) computed at once;
  // max_batch_tokens: tokens per step, decode rows and prompt chunks together (>= parallel, so
  // every decoding sequence always has its row); max_queue: tasks waiting for a slot.
  // prefill_chunk: prompt tokens per step while other sequences decode (their inter-token latency
  // is one step: a 256-token chunk on 2 CPU cores is ~0.3 s); alone, a prompt takes
  // max_batch_tokens per step.
  // prefill_step_factor: while others decode, a step's prompt chunk is sized so that the step takes
  // at most this many times a decode-only step (measured; runtime/prefill_chunker.h), up to
  // prefill_chunk tokens; 0 = always prefill_chunk.
  int32_t parallel = 8;
  int32_t max_batch_tokens = 256;
  int32_t prefill_chunk = 32;
  double prefill_step_factor = 2.5;
  int32_t max_queue = 64;
  // Automatic prefix caching (runtime/prefix_cache.h): bytes of KV blocks kept for later requests
  // (0: off) and cells per block.
  uint64_t prefix_cache_bytes = 0;
  int32_t prefix_block_tokens = 64;
  // Called after every step with what it ran (metrics); engine thread, must be cheap.
  std::function<void(const StepInfo&)> on_step;
};

// The engine's limits and load, for GetInfo and metrics.
struct EngineLoad {
  int32_t parallel = 0, max_batch_tokens = 0, prefill_chunk = 0, max_queue = 0;
  int32_t active = 0;   // sequences in slots
  int32_t queued = 0;   // tasks waiting for a slot
  int32_t prefix_block_tokens = 0;  // 0: no prefix cache
  PrefixCacheStats prefix;
};

// The part of a Generate or Prefill that is the same for both, already validated.
struct SessionInput {
  // Placed first, in order; caches of this model's layout (checked again here) in host memory or,
  // when the engine runs on a GPU, in its device memory (the store's caches). Host caches join a
  // GPU session by an upload (KvCache::append_shifted).
  std::vector<std::shared_ptr<const KvCache>> context;
  // Alternatively (`context` then empty): the whole context as one cache that this request owns,
  // such as a fresh pull. When its cells start at position 0 and it has room for the session
  // (free cells for input + max_tokens, or input for a Prefill: see KvWireDecoder's n_ctx_extra),
  // the session runs in it, with no copy; otherwise it is appended like a shared context.
  std::unique_ptr<KvCache> owned_context;
  // The context's cells are what this model's prefill of its tokens computes (CacheInfo::exact:
  // caches this engine made from tokens, or pulled from an agent of the same model over the
  // lossless f32 wire) — not fused, quantized on the wire or imported. Then a single context
  // from position 0 joins the prefix cache and is found there like any computed prefix; otherwise
  // it is used as it is, and never cached.
  bool context_exact = false;
  std::vector<int32_t> tokens;  // input ids, each in [0, n_vocab); BOS already added when asked
  std::chrono::steady_clock::time_point arrival = std::chrono::steady_clock::now();
  CancelTokenPtr cancel;        // never null
};

enum class FinishReason { kEos, kMaxTokens, kStopString, kContextFull };

struct GenerateOptions {
  SamplingParams sampling;         // validated
  int32_t max_tokens = 128;        // >= 1, already capped by --max-new-tokens
  std::vector<std::string> stop;   // non-empty strings; stop once the generated text contains one
  bool ignore_eos = false;
  bool keep_cache = false;         // store context + input + generated tokens as a new cache
  uint32_t cache_ttl_s = 0;        // for keep_cache; 0 = the store's default
  // Teacher forcing (scoring): these tokens, each in [0, n_vocab), are streamed in order instead of
  // sampled, each with its log-probability given everything before it. max_tokens, stop strings
  // and EOS do not apply: generation ends after the last (FinishReason::kMaxTokens) or when the
  // context is full.
  std::vector<int32_t> forced;
  bool logprobs = false;           // report each streamed token's log-probability (always with forced)
  int32_t top_logprobs = 0;        // and the k most likely tokens' (0 = none)
};

struct GenerateOutcome {
  FinishReason reason = FinishReason::kMaxTokens;
  int32_t n_context = 0;    // cells that came from context caches
  int32_t n_prompt = 0;     // input tokens
  int32_t n_cached = 0;     // of those, found in the prefix cache (not forwarded here)
  int32_t n_generated = 0;  // tokens streamed (an EOS that stopped generation is not counted)
  double ttft_ms = 0;       // arrival → first sampled token (pulls and queueing included)
  double decode_ms = 0;     // first sampled token → done
  // The generated text, valid UTF-8: every streamed token's text (a stop string included), then
  // `tail`. `tail` is U+FFFD when generation ended inside a UTF-8 sequence (engine/utf8_stream.h:
  // the bytes held back could never complete), else empty.
  std::string text;
  std::string tail;
  std::optional<CacheInfo> kept;  // with keep_cache
};

// Receives one Generate's stream. Called on the engine thread; must not block.
class GenerateSink {
 public:
  virtual ~GenerateSink() = default;
  // One sampled token, in order, and the text it completes: always valid UTF-8 (engine/
  // utf8_stream.h). Empty while the token's bytes are held back because they end inside a
  // character; the token that completes it carries the whole character. Invalid bytes come as
  // U+FFFD. Every sampled token is reported, even with empty text. `lp`: the token's
  // log-probabilities when GenerateOptions asked for them, else null (valid during the call only).
  virtual void on_token(int32_t id, std::string_view text, const TokenLogprobs* lp) = 0;
  // Exactly once, after the last on_token. Errors: RESOURCE_EXHAUSTED (input does not fit the
  // context, or the kept cache does not fit), CANCELLED, UNAVAILABLE (shutdown), and the
  // forward pass's own errors.
  virtual void on_done(Result<GenerateOutcome> outcome) = 0;
};

struct PrefillOptions {
  uint32_t ttl_s = 0;  // 0 = the store's default
  bool pin = false;
  // Hand the cache back (PrefillOutcome::owned) instead of storing it, with this many free cells
  // after its own (a receiver fusing its context, then running a session in it). The cache handed
  // back is always host memory: on a GPU engine it is a staged copy (EngineOptions::host_buffers)
  // with no free cells — it is uploaded into a device session cache when it comes back as context.
  bool hand_back = false;
  int32_t reserve_cells = 0;
};

struct PrefillOutcome {
  CacheInfo cache;        // the stored cache (not with hand_back)
  double prefill_ms = 0;  // engine time from admission: concatenation, the chunked forward, store insert
  std::unique_ptr<KvCache> owned;  // with hand_back
};
using PrefillCallback = std::function<void(Result<PrefillOutcome>)>;

class EngineLoop {
 public:
  // Creates the backend and the runner (uploads the weights) and starts the thread.
  static Result<std::unique_ptr<EngineLoop>> create(const Model& model, CacheStore& store, const EngineOptions& opt);
  ~EngineLoop();  // stop()
  EngineLoop(const EngineLoop&) = delete;
  EngineLoop& operator=(const EngineLoop&) = delete;

  void submit_generate(SessionInput in, GenerateOptions opt, std::shared_ptr<GenerateSink> sink);
  void submit_prefill(SessionInput in, PrefillOptions opt, PrefillCallback done);

  // Answers every queued and active task with UNAVAILABLE and joins the thread. Later submissions
  // are answered UNAVAILABLE at once. Idempotent.
  void stop();

  int32_t ctx_size() const { return ctx_size_; }
  // "<device name>: <description>", e.g. "cpu: CPU x86_64 avx2 (4 threads)" or
  // "cuda:0: NVIDIA H100 80GB HBM3 (sm_90, 132 SMs, 79.1 GiB)" (AgentInfo.backend).
  std::string backend_description() const;
  // The device the engine runs on.
  const Device& device() const { return backend_->device(); }
  // The cache layout of this engine's sessions (what context caches must have).
  KvLayout kv_layout() const;
  EngineLoad load() const;

 private:
  struct Session;
  struct Task {
    SessionInput in;
    bool is_generate = false;
    GenerateOptions gen;
    std::shared_ptr<GenerateSink> sink;
    PrefillOptions prefill;
    PrefillCallback prefill_done;
  };

  EngineLoop(const Model& model, CacheStore& store, const EngineOptions& opt);
  void run();
  // Turns an admitted task into a sequence (fails the task on error).
  void admit(Task& t);
  Result<std::unique_ptr<Session>> start(Task& t);
  // A cache of at least `cells` cells holding the concatenated context (and nothing else): the
  // owned context itself when it fits (moved out of `in`), else a new one.
  Result<std::unique_ptr<KvCache>> assemble_context(SessionInput& in, int32_t cells);
  Result<std::unique_ptr<KvCache>> new_session_cache(int32_t cells) const;
  // Starts a cacheable sequence (its cells from position 0 are its tokens): the longest cached
  // prefix of its tokens becomes its shared blocks, and its own cache gets the rest of what is
  // already computed (a divergent block's first cells, the context's cells past the blocks).
  // `context`: the single context cache at position 0, or null.
  Status start_cached(Session& s, const KvCache* context, int32_t cells);
  // After each prompt chunk of a cacheable sequence: its new whole blocks go to the prefix cache,
  // and a Generate attends to those shared blocks from then on instead of its own copies (a
  // Prefill keeps its cells whole: they are the cache it stores).
  Status share_prefix(Session& s);
  // The sequence's cells as one cache of its own (its prefix blocks and cache laid out again in
  // `memory` with `extra` free cells, or its cache itself when it has no blocks).
  Result<std::unique_ptr<KvCache>> take_cells(Session& s, const BufferType& memory, int32_t extra);
  // One step over every sequence (the class comment's 1-3).
  void run_step();
  // Samples and streams a decoding Generate's next token; false when it finished (its sink got
  // on_done), else s.next is the token to feed.
  bool sample_and_stream(Session& s);
  void finish_generate(Session& s, FinishReason reason);
  void finish_prefill(Session& s);
  // `exact`: CacheInfo::exact (the sequence was cacheable).
  Result<CacheInfo> keep(std::unique_ptr<KvCache> cache, uint32_t ttl_s, bool pin, bool exact);
  static void fail(Task& t, const Status& st);
  static void fail(Session& s, const Status& st);
  // Queues a task for the loop, or fails it: UNAVAILABLE once stop() has begun,
  // RESOURCE_EXHAUSTED when max_queue tasks wait.
  void enqueue(Task t);

  const Model& model_;
  CacheStore& store_;
  EngineOptions opt_;
  int32_t ctx_size_ = 0;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<ModelRunner> runner_;
  std::unique_ptr<PrefixCache> prefix_;  // null: no prefix caching; engine thread (stats(): any)
  std::optional<PrefillChunker> chunker_;  // engine thread

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Task> queue_;  // guarded by mu_
  bool stopping_ = false;   // guarded by mu_
  int32_t active_ = 0;      // guarded by mu_: sessions_.size(), for load()
  std::thread thread_;
  std::list<std::unique_ptr<Session>> sessions_;  // engine thread only, in admission order
};

}  // namespace kvb::runtime
