// AVX-512 matmul kernels (compiled with -mavx512f -mavx512bw -mavx512vl -mavx512dq -mfma -mf16c).
//
// A panel row (32 outputs at one k) is two zmm registers. Everything here lives in an anonymous
// namespace and uses no out-of-line library templates, so no AVX-512 instruction can leak into code
// that a CPU without AVX-512 runs (the linker would otherwise be free to pick this TU's copy of a
// shared inline function).

// GCC 12's AVX-512 headers trip -W(maybe-)uninitialized in their own _mm512_undefined_* helpers
// (GCC PR105593); the warnings are silenced for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop

#include "kernels/cpu/gemm.h"

namespace kvb::cpu {
namespace {

constexpr int kMr = 14;
// The micro-kernel prefetches its a and b streams this many k's ahead into L1 (both come from L2:
// the b block [kc][32] is larger than L1); measured 0.5-1.5% faster than the hardware prefetchers
// alone.
constexpr int64_t kPfK = 8;  // 14 x 32 accumulators = 28 zmm, + 2 for b and 1 for the a broadcast

inline __mmask16 lo_mask(int nc) { return nc >= 16 ? __mmask16(0xffff) : __mmask16((1u << nc) - 1); }
inline __mmask16 hi_mask(int nc) {
  return nc >= 32 ? __mmask16(0xffff) : nc <= 16 ? __mmask16(0) : __mmask16((1u << (nc - 16)) - 1);
}

// ---- panel row loaders: row k of a plain panel as two f32 vectors (columns 0-15, 16-31) ----
// Software prefetch distance of the gemv streams. The conversion work per byte of F16/BF16/Q8_0
// panels shrinks how far ahead the out-of-order window reaches, so the hardware prefetchers alone
// leave those streams latency-bound (measured: F16 0.71 -> 0.9 and Q8_0 0.55 -> 0.85 of the
// single-core read bandwidth); 1-8 KiB ahead all work, 2 KiB is the best of them.
constexpr int64_t kPrefetchBytes = 2048;

struct LoadF32 {
  static constexpr int64_t kRowBytes = kPanel * 4;
  static inline void row(const uint8_t* panel, int64_t k, __m512& w0, __m512& w1) {
    const float* p = reinterpret_cast<const float*>(panel) + k * kPanel;
    w0 = _mm512_load_ps(p);
    w1 = _mm512_load_ps(p + 16);
  }
};
struct LoadF16 {
  static constexpr int64_t kRowBytes = kPanel * 2;
  static inline void row(const uint8_t* panel, int64_t k, __m512& w0, __m512& w1) {
    const auto* p = reinterpret_cast<const __m256i*>(panel + k * kPanel * 2);
    w0 = _mm512_cvtph_ps(_mm256_load_si256(p));
    w1 = _mm512_cvtph_ps(_mm256_load_si256(p + 1));
  }
};
struct LoadBF16 {
  static constexpr int64_t kRowBytes = kPanel * 2;
  static inline __m512 widen(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
  static inline void row(const uint8_t* panel, int64_t k, __m512& w0, __m512& w1) {
    const auto* p = reinterpret_cast<const __m256i*>(panel + k * kPanel * 2);
    w0 = widen(_mm256_load_si256(p));
    w1 = widen(_mm256_load_si256(p + 1));
  }
};
inline __m512 q8_to_f32(const int8_t* q) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_load_si128(reinterpret_cast<const __m128i*>(q))));
}
inline __m512 f16x16_to_f32(const uint8_t* p) {
  return _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)));
}

template <int N>
inline void store_rows(__m512 (&acc)[N][2], float* y, int64_t ldy, int nc, bool accumulate) {
  const __mmask16 m0 = lo_mask(nc), m1 = hi_mask(nc);
  for (int r = 0; r < N; ++r) {
    float* yr = y + r * ldy;
    __m512 v0 = acc[r][0], v1 = acc[r][1];
    if (accumulate) {
      v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, yr));
      v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, yr + 16));
    }
    _mm512_mask_storeu_ps(yr, m0, v0);
    _mm512_mask_storeu_ps(yr + 16, m1, v1);
  }
}

// ---- gemv: n <= 4 rows of x against one panel in its stored dtype ----
template <int N, class L>
void gemv_rows(const uint8_t* panel, int64_t k, const float* x, int64_t ldx, float* y, int64_t ldy, int nc,
               bool accumulate) {
  // One accumulator chain per output whatever N, starting from y when accumulating, as the GEMM
  // micro-kernel's does: a row's bits depend neither on the rows beside it nor on the RowMode
  // (PackedWeight::mode_invariant). Decode is memory-bound: two chains per row (128 bytes of f32
  // weights per 4-cycle FMA latency) already stream faster than DRAM delivers.
  const __mmask16 m0 = lo_mask(nc), m1 = hi_mask(nc);
  __m512 acc[N][2];
  for (int r = 0; r < N; ++r) {
    acc[r][0] = accumulate ? _mm512_maskz_loadu_ps(m0, y + r * ldy) : _mm512_setzero_ps();
    acc[r][1] = accumulate ? _mm512_maskz_loadu_ps(m1, y + r * ldy + 16) : _mm512_setzero_ps();
  }
#pragma GCC unroll 4
  for (int64_t kk = 0; kk < k; ++kk) {
    const uint8_t* pf = panel + kk * L::kRowBytes + kPrefetchBytes;
    _mm_prefetch(reinterpret_cast<const char*>(pf), _MM_HINT_T0);
    if constexpr (L::kRowBytes > 64) _mm_prefetch(reinterpret_cast<const char*>(pf + 64), _MM_HINT_T0);
    __m512 w0, w1;
    L::row(panel, kk, w0, w1);
#pragma GCC unroll 4
    for (int r = 0; r < N; ++r) {
      const __m512 xb = _mm512_set1_ps(x[r * ldx + kk]);
      acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
    }
  }
  store_rows<N>(acc, y, ldy, nc, false);
}

template <int N>
void gemv_q8_rows(const uint8_t* panel, int64_t k, const float* x, int64_t ldx, float* y, int64_t ldy, int nc,
                  bool accumulate) {
  // Two chains per output and 32 k's, for every N (the same bits whatever rows share the call):
  // the int8 -> f32 conversions lengthen each k's chain, and one chain per output measured 13%
  // slower decode.
  constexpr int kU = 2;
  __m512 acc[N][2];
  for (int r = 0; r < N; ++r) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
  for (int64_t g = 0; g < k / kQ8BlockSize; ++g) {
    const uint8_t* group = panel + g * int64_t(kQ8GroupBytes);
    const auto* q = reinterpret_cast<const int8_t*>(group + kPanel * 2);
    const float* xg = x + g * kQ8BlockSize;
    // Sum q * x over the block in f32, then scale once by d (per output row).
    __m512 blk[kU][N][2];
    for (int u = 0; u < kU; ++u)
      for (int r = 0; r < N; ++r) blk[u][r][0] = blk[u][r][1] = _mm512_setzero_ps();
#pragma GCC unroll 8
    for (int kk = 0; kk < kQ8BlockSize; kk += kU) {
#pragma GCC unroll 2
      for (int u = 0; u < kU; ++u) {
        if ((kk + u) % 2 == 0) {  // 17 lines per 32 k's: one prefetch every other k
          _mm_prefetch(reinterpret_cast<const char*>(group + kPrefetchBytes + (kk + u) * 34), _MM_HINT_T0);
        }
        const __m512 w0 = q8_to_f32(q + (kk + u) * kPanel);
        const __m512 w1 = q8_to_f32(q + (kk + u) * kPanel + 16);
#pragma GCC unroll 4
        for (int r = 0; r < N; ++r) {
          const __m512 xb = _mm512_set1_ps(xg[r * ldx + kk + u]);
          blk[u][r][0] = _mm512_fmadd_ps(xb, w0, blk[u][r][0]);
          blk[u][r][1] = _mm512_fmadd_ps(xb, w1, blk[u][r][1]);
        }
      }
    }
    const __m512 d0 = f16x16_to_f32(group), d1 = f16x16_to_f32(group + 32);
    for (int r = 0; r < N; ++r) {
      const __m512 b0 = _mm512_add_ps(blk[0][r][0], blk[1][r][0]);
      const __m512 b1 = _mm512_add_ps(blk[0][r][1], blk[1][r][1]);
      acc[r][0] = _mm512_fmadd_ps(b0, d0, acc[r][0]);
      acc[r][1] = _mm512_fmadd_ps(b1, d1, acc[r][1]);
    }
  }
  store_rows<N>(acc, y, ldy, nc, accumulate);
}

template <class L>
void gemv_plain(const uint8_t* panel, int64_t k, const float* x, int64_t ldx, int n, float* y, int64_t ldy, int nc,
                bool accumulate) {
  switch (n) {
    case 1:
      return gemv_rows<1, L>(panel, k, x, ldx, y, ldy, nc, accumulate);
    case 2:
      return gemv_rows<2, L>(panel, k, x, ldx, y, ldy, nc, accumulate);
    case 3:
      return gemv_rows<3, L>(panel, k, x, ldx, y, ldy, nc, accumulate);
    default:
      return gemv_rows<4, L>(panel, k, x, ldx, y, ldy, nc, accumulate);
  }
}

void gemv_q8(const uint8_t* panel, int64_t k, const float* x, int64_t ldx, int n, float* y, int64_t ldy, int nc,
             bool accumulate) {
  switch (n) {
    case 1:
      return gemv_q8_rows<1>(panel, k, x, ldx, y, ldy, nc, accumulate);
    case 2:
      return gemv_q8_rows<2>(panel, k, x, ldx, y, ldy, nc, accumulate);
    case 3:
      return gemv_q8_rows<3>(panel, k, x, ldx, y, ldy, nc, accumulate);
    default:
      return gemv_q8_rows<4>(panel, k, x, ldx, y, ldy, nc, accumulate);
  }
}

// ---- unpack: stored dtype -> f32 tile[kc][32] ----
template <class L>
void unpack_plain(const uint8_t* panel, int64_t k0, int64_t kc, float* tile) {
  for (int64_t kk = 0; kk < kc; ++kk) {
    __m512 w0, w1;
    L::row(panel, k0 + kk, w0, w1);
    _mm512_store_ps(tile + kk * kPanel, w0);
    _mm512_store_ps(tile + kk * kPanel + 16, w1);
  }
}

void unpack_q8(const uint8_t* panel, int64_t k0, int64_t kc, float* tile) {
  for (int64_t g = k0 / kQ8BlockSize; g < (k0 + kc) / kQ8BlockSize; ++g) {
    const uint8_t* group = panel + g * int64_t(kQ8GroupBytes);
    const auto* q = reinterpret_cast<const int8_t*>(group + kPanel * 2);
    const __m512 d0 = f16x16_to_f32(group), d1 = f16x16_to_f32(group + 32);
    float* t = tile + (g * kQ8BlockSize - k0) * kPanel;
    for (int kk = 0; kk < kQ8BlockSize; ++kk) {
      _mm512_store_ps(t + kk * kPanel, _mm512_mul_ps(q8_to_f32(q + kk * kPanel), d0));
      _mm512_store_ps(t + kk * kPanel + 16, _mm512_mul_ps(q8_to_f32(q + kk * kPanel + 16), d1));
    }
  }
}

// ---- micro-kernel: c[M][32] (+)= a[kc][kMr] (first M rows) * b[kc][32] ----
// pf / pf_bytes (the next weight block's slice) are prefetched at a steady pace over the k loop:
// pf_pos advances by pf_step (16.16 fixed point bytes) per k, so the slice is covered by the end of
// the loop with at most one line per k (a slice longer than kc lines, from a group of very few row
// blocks, has its remainder issued after the loop). Issued as one burst after the call instead,
// the prefetches that miss to DRAM stall on the fill buffers (measured ~6% of the GEMM).
template <int M>
void micro_m(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int nc, bool load_c,
             const uint8_t* pf, size_t pf_bytes) {
  // With nothing to prefetch, re-touch b[0] (an L1 hit) so the loop needs no branch.
  const char* pf_base = pf_bytes > 0 ? reinterpret_cast<const char*>(pf) : reinterpret_cast<const char*>(b);
  const size_t pf_spread = pf_bytes < size_t(kc) * 64 ? pf_bytes : size_t(kc) * 64;
  const uint64_t pf_step = pf_spread > 0 ? ((uint64_t(pf_spread) << 16) + uint64_t(kc) - 1) / uint64_t(kc) : 0;
  uint64_t pf_pos = 0;
  const __mmask16 m0 = lo_mask(nc), m1 = hi_mask(nc);
  __m512 c0[M], c1[M];
  if (load_c) {
    for (int i = 0; i < M; ++i) {
      c0[i] = _mm512_maskz_loadu_ps(m0, c + i * ldc);
      c1[i] = _mm512_maskz_loadu_ps(m1, c + i * ldc + 16);
    }
  } else {
    for (int i = 0; i < M; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  }
  for (int64_t kk = 0; kk < kc; ++kk) {
    const __m512 b0 = _mm512_load_ps(b + kk * kPanel);
    const __m512 b1 = _mm512_load_ps(b + kk * kPanel + 16);
    const float* ak = a + kk * kMr;
    // Prefetches past the end of a or b are harmless (no faults) and cost a few L1 fills.
    _mm_prefetch(reinterpret_cast<const char*>(b + (kk + kPfK) * kPanel), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(b + (kk + kPfK) * kPanel + 16), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(ak + kPfK * kMr), _MM_HINT_T0);
    _mm_prefetch(pf_base + (pf_pos >> 16), _MM_HINT_T0);
    pf_pos += pf_step;
#pragma GCC unroll 14
    for (int i = 0; i < M; ++i) {
      const __m512 ai = _mm512_set1_ps(ak[i]);
      c0[i] = _mm512_fmadd_ps(ai, b0, c0[i]);
      c1[i] = _mm512_fmadd_ps(ai, b1, c1[i]);
    }
  }
  for (int i = 0; i < M; ++i) {
    _mm512_mask_storeu_ps(c + i * ldc, m0, c0[i]);
    _mm512_mask_storeu_ps(c + i * ldc + 16, m1, c1[i]);
  }
  for (size_t line = pf_spread; line < pf_bytes; line += 64) _mm_prefetch(pf_base + line, _MM_HINT_T0);
}

template <int M>
inline void micro_dispatch(int m, int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int nc,
                           bool load_c, const uint8_t* pf, size_t pf_bytes) {
  if constexpr (M > 0) {
    if (m == M) return micro_m<M>(kc, a, b, c, ldc, nc, load_c, pf, pf_bytes);
    micro_dispatch<M - 1>(m, kc, a, b, c, ldc, nc, load_c, pf, pf_bytes);
  }
}

void micro(int64_t kc, const float* a, const float* b, float* c, int64_t ldc, int m, int nc, bool load_c,
           const uint8_t* pf, size_t pf_bytes) {
  micro_dispatch<kMr>(m, kc, a, b, c, ldc, nc, load_c, pf, pf_bytes);
}

// ---- x packing: 16 k's of the 14 rows at a time, as a 16 x 16 register transpose (rows 14 and 15
// are zero), so each packed row [kk][0..13] is one masked store instead of 14 scalar ones ----
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xee);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 16; i += 8) {
    for (int j = 0; j < 4; ++j) {
      t[i + j] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0x88);
      t[i + j + 4] = _mm512_shuffle_f32x4(r[i + j], r[i + j + 4], 0xdd);
    }
  }
  for (int j = 0; j < 8; ++j) {
    r[j] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0x88);
    r[j + 8] = _mm512_shuffle_f32x4(t[j], t[j + 8], 0xdd);
  }
}

void pack_x(const float* x, int64_t n, int64_t k, int64_t rb, float* dst) {
  float* d = dst + rb * kMr * k;
  const int64_t rows = n - rb * kMr < kMr ? n - rb * kMr : kMr;
  const float* src = x + rb * kMr * k;
  int64_t kk = 0;
  for (; kk + 16 <= k; kk += 16) {
    __m512 r[16];
    for (int i = 0; i < 16; ++i) r[i] = i < rows ? _mm512_loadu_ps(src + i * k + kk) : _mm512_setzero_ps();
    transpose16(r);
    for (int j = 0; j < 16; ++j) _mm512_mask_storeu_ps(d + (kk + j) * kMr, __mmask16(0x3fff), r[j]);
  }
  for (; kk < k; ++kk) {
    for (int i = 0; i < kMr; ++i) d[kk * kMr + i] = i < rows ? src[i * k + kk] : 0.0f;
  }
}

}  // namespace

const GemmKernels& gemm_kernels_avx512() {
  // Aggregate initialization: no (shared, inline) constructor of GemmKernels runs in this TU.
  static const GemmKernels k{"avx512",
                             kMr,
                             {gemv_plain<LoadF32>, gemv_plain<LoadF16>, gemv_plain<LoadBF16>, gemv_q8},
                             {unpack_plain<LoadF32>, unpack_plain<LoadF16>, unpack_plain<LoadBF16>, unpack_q8},
                             micro,
                             pack_x};
  return k;
}

}  // namespace kvb::cpu
