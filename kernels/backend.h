// The hardware interface: every op the engine and the fuser run goes through it.
//
// Split by role, as in ggml-backend:
//   BufferType — where memory comes from (alignment, is_host, alloc)
//   Buffer     — one owned allocation (set/get bytes)
//   Weight     — an immutable matrix uploaded once, in whatever layout the backend prefers
//   Backend    — an in-order execution stream: copies, ops, synchronize
//   Device     — what a device has and can do (memory, supports_op), and the factory of the above
// CPU (kernels/cpu) and CUDA (kernels/cuda) implement it; #if KVBRIDGE_CUDA appears only in
// kernels/cuda and registry.cpp.
//
// Conventions for every op below:
//  - Tensors are views of memory owned by this backend's buffers (host memory for the CPU backend).
//  - Activations are f32 unless stated. Shapes are outermost first.
//  - Ops are enqueued in order on the stream; results are visible to the host after synchronize()
//    (the CPU backend runs each op to completion before returning, so synchronize() is free).
//  - A Backend is not thread-safe: one thread drives it at a time. Ops may use the backend's own
//    worker threads internally.
//  - Shape or dtype mismatches return INVALID_ARGUMENT; they never crash.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "kernels/dtype.h"
#include "kernels/status.h"
#include "kernels/tensor.h"

namespace kvb {

class Backend;
class Device;

enum class OpKind {
  kMatmul,
  kRmsNorm,
  kRope,
  kSoftmax,
  kSiluMul,
  kAdd,
  kAttention,
  kEmbedding,
  kConvert,
  kGelu,
  kGateAdd,
};

// Rotary position embedding parameters.
enum class RopeType {
  kNormal,  // llama / ggml mode 0: rotates adjacent pairs (x[2i], x[2i+1])
  kNeox,    // GPT-NeoX / Qwen: rotates (x[i], x[i + n_rot/2])
};
struct RopeParams {
  RopeType type = RopeType::kNormal;
  int n_rot = 0;              // leading dims of each head that are rotated (usually head_dim)
  float theta_base = 10000.f; // theta_i = pos * theta_base^(-2i/n_rot)
  float freq_scale = 1.0f;    // linear position scaling (pos * freq_scale)
  // Optional per-frequency divisors, f32 [n_rot/2] in the memory of the backend that runs the op
  // (device memory for CUDA): pair i's angle is theta_i / freq_factors[i]. llama.cpp's rope_freqs
  // (Llama 3's "llama3" scaling, engine/model.h llama3_rope_freq_factors). Empty (null data): none.
  Tensor freq_factors;
};

class Buffer {
 public:
  virtual ~Buffer() = default;
  // Base address in the owning device's address space; host-dereferenceable iff is_host().
  virtual void* data() = 0;
  virtual size_t size() const = 0;
  virtual bool is_host() const = 0;
  // Synchronous byte copies between this buffer and host memory. Out-of-range → OUT_OF_RANGE.
  virtual Status set(size_t offset, const void* host_src, size_t n) = 0;
  virtual Status get(size_t offset, void* host_dst, size_t n) const = 0;
};

class BufferType {
 public:
  virtual ~BufferType() = default;
  virtual std::string name() const = 0;
  virtual size_t alignment() const = 0;
  virtual bool is_host() const = 0;
  // RESOURCE_EXHAUSTED when the device is out of memory. The caller owns the buffer.
  virtual Result<std::unique_ptr<Buffer>> alloc(size_t bytes) const = 0;
};

// A matrix w of shape [n_out][n_in] (row i holds the n_in input weights of output i), uploaded once
// and packed by the backend; immutable afterwards and safe to share between threads.
class Weight {
 public:
  virtual ~Weight() = default;
  virtual int64_t n_out() const = 0;
  virtual int64_t n_in() const = 0;
  virtual DType dtype() const = 0;       // the stored element type (F32, F16, BF16 or Q8_0)
  virtual size_t nbytes() const = 0;     // device bytes held, including packing padding
  // True when every RowMode computes each row of a matmul with this weight the same bits (the CPU
  // backend's weights but Q8_0): the engine may then run prompt and decode rows in one call,
  // reading the weight once per step.
  virtual bool mode_invariant() const { return false; }
};

// How an op whose rows are independent (matmul, attention) picks its kernels.
//   kAuto:    by the number of rows: few rows take the decode kernels, more the blocked prefill ones.
//   kDecode:  the decode kernels for any number of rows, each row computed as if it were alone.
//   kPrefill: the blocked prefill kernels for any number of rows.
// With kDecode or kPrefill a row's result is the same bits whatever other rows share the call, so
// the engine can batch the decode tokens and prompt chunks of many sequences in one call and each
// sequence computes what it would alone. The CPU backend promises this; backends whose libraries
// pick algorithms by shape (CUDA's cuBLAS) treat both as kAuto, with results equal within
// rounding.
enum class RowMode : uint8_t { kAuto, kDecode, kPrefill };

// Cells of a sequence's cache held apart from its own: k, v [rows][n_head_kv][head_dim] (e.g. the
// shared prefix blocks of runtime/prefix_cache.h).
struct KvSegment {
  Tensor k, v;
};

// One sequence's part of Backend::attention_batch: the arguments of Backend::attention, and the
// cells before k/v's. The sequence's cells are prefix[0]'s rows, prefix[1]'s, ..., then k/v's
// rows (n_kv = all of them; the queries are the last n cells, so they lie in k/v). Every segment
// has k's dtype and head shape. The result is what attention() gives over the cells laid out
// contiguously; the CPU backend gives the same bits.
struct AttentionSeq {
  Tensor q, k, v, out;
  std::span<const KvSegment> prefix = {};
};

// One output of a matmul: y = x · wᵀ, or y += x · wᵀ when accumulate is set.
struct MatmulOut {
  const Weight* w = nullptr;  // [n_out][n_in]
  Tensor y;                   // f32 [n][n_out]
  bool accumulate = false;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const Device& device() const = 0;

  // Worker threads for the CPU backend (>= 1); other backends ignore it.
  virtual void set_n_threads(int n) = 0;
  virtual int n_threads() const = 0;

  // ---- memory ----
  // Uploads and packs a host matrix (F32, F16, BF16 or Q8_0, shape [n_out][n_in]); the host memory
  // may be released afterwards. UNIMPLEMENTED for a dtype the device does not support.
  virtual Result<std::unique_ptr<Weight>> upload_weight(const Tensor& host) = 0;
  // Byte copies on the stream. host ↔ device, and device ↔ device within this backend.
  virtual Status copy_from_host(void* dst, const void* host_src, size_t n) = 0;
  virtual Status copy_to_host(void* host_dst, const void* src, size_t n) = 0;
  virtual Status copy(void* dst, const void* src, size_t n) = 0;
  virtual Status synchronize() = 0;

  // ---- op graphs (optional) ----
  // Between begin_graph() and end_graph(), ops and device-to-device copies are recorded instead of
  // run; the recording then runs as one unit (CUDA: a graph, one launch instead of one per op).
  // Nothing in between may need the host: no host copies, no synchronize(). Backends without
  // graphs answer UNIMPLEMENTED and record nothing; the caller runs the ops directly.
  virtual Status begin_graph() { return unimplemented("this backend has no op graphs"); }
  // Ends the recording begun by a successful begin_graph(). With `run`, enqueues it on the stream
  // like any op (its results are visible after synchronize()); without, discards it. An error (an
  // op could not be recorded, e.g. working memory that had to grow; or the launch failed) means
  // nothing of it ran: the caller runs the ops directly instead.
  virtual Status end_graph(bool /*run*/) { return failed_precondition("end_graph without begin_graph"); }

  // ---- ops ----
  // For each out: y[n][n_out] (+)= x[n][n_in] · wᵀ. All weights share x and are run in one dispatch
  // (e.g. Q, K and V projections). x is f32 [n][n_in].
  virtual Status matmul(const Tensor& x, std::span<const MatmulOut> outs, RowMode mode) = 0;
  Status matmul(const Tensor& x, std::span<const MatmulOut> outs) { return matmul(x, outs, RowMode::kAuto); }
  Status matmul(const Tensor& x, const Weight& w, const Tensor& y, bool accumulate = false,
                RowMode mode = RowMode::kAuto) {
    const MatmulOut o{&w, y, accumulate};
    return matmul(x, std::span<const MatmulOut>(&o, 1), mode);
  }
  // y[n][d] = x[n][d] / sqrt(mean(x²) + eps) * w[d]. y may alias x. w is f32.
  virtual Status rms_norm(const Tensor& x, const Tensor& w, float eps, const Tensor& y) = 0;
  // In place on x [n][n_heads][head_dim] (f32); pos is i32 [n], the position of each row;
  // p.freq_factors, when set, is f32 [p.n_rot / 2].
  virtual Status rope(const Tensor& x, const Tensor& pos, const RopeParams& p) = 0;
  // Row-wise softmax in place on x [n][m].
  virtual Status softmax(const Tensor& x) = 0;
  // out[n][f] = silu(gate) * up, silu(g) = g / (1 + exp(-g)). out may alias gate or up.
  virtual Status silu_mul(const Tensor& gate, const Tensor& up, const Tensor& out) = 0;
  // out = a + b, elementwise: a and out [n][d] (same shapes), b either the same shape or one row
  // of d values ([d] or [1][d]) broadcast over every row of a (a bias). out may alias a, or b when
  // b is not broadcast.
  virtual Status add(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // Causal grouped-query attention over one sequence's cache.
  //   q   [n][n_head][head_dim] f32: the n newest tokens, which occupy the last n cache cells
  //   k,v [n_kv][n_head_kv][head_dim], f32 or f16: cells 0 .. n_kv-1 (n_kv >= n), post-RoPE keys
  //   out [n][n_head][head_dim] f32
  // Query row i attends to cells 0 .. n_kv - n + i. Query head h reads kv head h / (n_head/n_head_kv).
  // scale multiplies q·k (usually 1/sqrt(head_dim)).
  virtual Status attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale,
                           RowMode mode) = 0;
  Status attention(const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out, float scale) {
    return attention(q, k, v, out, scale, RowMode::kAuto);
  }
  // attention() for several sequences (each over its own cache), each result exactly what its own
  // call gives; a backend may run them as one dispatch (the CPU spreads many sequences' decode rows
  // over its threads, where each alone is too small to). Default: one call per sequence.
  // Default: one call per sequence; UNIMPLEMENTED for prefix segments.
  virtual Status attention_batch(std::span<const AttentionSeq> seqs, float scale, RowMode mode) {
    for (const AttentionSeq& a : seqs) {
      if (!a.prefix.empty()) return unimplemented("this backend cannot attend over prefix segments");
      KVB_RETURN_IF_ERROR(attention(a.q, a.k, a.v, a.out, scale, mode));
    }
    return Status::Ok();
  }
  // out[n][d] (f32) = table[tokens[i]] for table [vocab][d] of any weight dtype; tokens i32 [n].
  // An id outside [0, vocab) is INVALID_ARGUMENT.
  virtual Status embedding(const Tensor& table, const Tensor& tokens, const Tensor& out) = 0;
  // dst = src converted element-wise (same numel; F32 ↔ F16/BF16, and F32 → Q8_0).
  virtual Status convert(const Tensor& src, const Tensor& dst) = 0;

  // ---- fuser ops (C2C projector, fuser/projector.h) ----
  // out = gelu(x) = x/2 · (1 + erf(x/√2)), the exact (erf) GELU of torch.nn.GELU(); elementwise,
  // any shape with out.numel() == x.numel() and equal rows. out may alias x.
  virtual Status gelu(const Tensor& x, const Tensor& out) = 0;
  // The gated residual of C2C fusion, for n tokens and H heads of head_dim D:
  //   out[t][h·D + d] = receiver[t][h·D + d] + sigmoid(logits[t][h]) · projected[t][h·D + d]
  // receiver, projected, out: f32 [n][H·D] (or [n][H][D]); logits: f32 [n][H]. out may alias
  // receiver or projected. The hard gate (logit of the whole branch > 0) is the caller's: it
  // simply does not call this when the gate is off.
  virtual Status gate_add(const Tensor& receiver, const Tensor& logits, const Tensor& projected,
                          const Tensor& out) = 0;
};

struct DeviceMemory {
  size_t total = 0;  // bytes
  size_t free = 0;   // bytes
};

class Device {
 public:
  virtual ~Device() = default;
  virtual std::string name() const = 0;         // "cpu", "cuda:0"
  virtual std::string description() const = 0;  // e.g. "CPU x86_64 avx512 (2 threads)"
  virtual DeviceMemory memory() const = 0;
  // Whether the op is implemented for a weight/cache element type (activations are f32).
  virtual bool supports_op(OpKind op, DType t) const = 0;
  virtual const BufferType& buffer_type() const = 0;
  virtual Result<std::unique_ptr<Backend>> create_backend() const = 0;
};

// Checks shared by every backend's op entry points (so CPU and CUDA reject the same inputs).
Status check_matmul_shapes(const Tensor& x, std::span<const MatmulOut> outs);

}  // namespace kvb
