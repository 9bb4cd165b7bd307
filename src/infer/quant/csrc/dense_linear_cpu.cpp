// Unquantized linear layers for CPU on prepacked weights: y = x @ W.T (+ bias), fp32 or bf16.
//
// Why a kernel: single-stream decode sweeps every weight matrix with a handful of activation
// rows, so its speed is weight bytes / memory read bandwidth. The BLAS GEMV reads a row-major
// [N, K] matrix as many short row streams (SmolLM2's rows are 576 floats) and reaches about
// half of what one core can read; its bf16 path is slower than fp32 on this CPU. Here each
// matrix is packed once into panels of 64 output columns laid out k-major, so a thread's share
// of the weights is ONE sequential stream (the hardware prefetcher's best case), every loaded
// weight vector serves up to kMR activation rows, and no horizontal reductions are needed.
//
// Packed layouts (pack() in dense_cpu.py builds them; Np = ceil(N / 64), zero padded):
//   fp32: wp [Np, K, 64]           wp[p, k, j]    = W[64p + j, k]
//   bf16: wp [Np, ceil(K/2), 64, 2] wp[p, i, j, t] = W[64p + j, 2i + t]   (pairs of k adjacent:
//         the bf16 dot-product instruction multiplies such pairs and adds both into one fp32
//         lane; an odd K is padded with a zero column)
//   int8: wp [Np, K, 64] int8      wp[p, k, j]    = Q[64p + j, k], W[n, k] = Q[n, k] * scale[n]
//         (weight-only int8 with per-output-channel scales, fp32 activations: each code is
//         widened to fp32 in registers and FMA'd like the fp32 path; the fp32 sums are
//         multiplied by scale[n] before the bias is added, so a panel's bytes are 1/4 of fp32's)
//   int4: wp [Np, K/2, 64] uint8   wp[p, i, j]    = Q[64p + j, 2i] | Q[64p + j, 2i + 1] << 4,
//         scale, offset [Np, K/G, 64] fp32: W[n, k] = Q[n, k] * scale[n, k/G] + offset[n, k/G]
//         (group size G even and dividing K). One 16-byte load feeds 16 columns x 2 k. Up to
//         kInt4MaxRows rows: codes decoded in registers, per group y += scale * sum(x * Q)
//         + offset * sum(x). More rows: each panel is dequantized (Q * scale + offset, as the
//         torch reference rounds it) into a per-thread fp32 panel that the fp32 path consumes.
// Contracts (checked): x [M, K] contiguous in wp's dtype; bias [N] in that dtype or empty;
// out [M, N] in that dtype. Accumulation is fp32; bf16 output is the fp32 sum (plus bias)
// rounded to nearest even.
//
// Work split: panels across torch's intra-op threads (each thread a contiguous band: one
// stream per core). When the panels do not divide over the threads, a band may start or end
// inside a panel: with enough rows, at a row part; with few (decode), at one of the panel's
// four 16-column vectors, so two threads on N = 576 take 4.5 panels each instead of 5 and 4,
// and a thread done with its band takes whole panels from another's (balanced_tasks).
// For fp32 / bf16 a vector of a k row is one 64-byte line, so each thread reads only its
// window's lines (the prefetchers may still fetch the others); for int8 / int4 a k row is
// one line, so both read the shared panel whole and only the compute is balanced. A column's
// sum is the same one chain over k either way. Inside a panel, activation rows in groups of
// kMR = 6 (6 x 4 accumulator registers: the FMA unit, not the loads, is the limit for large M).
// Activations are taken in chunks of ~192 KB so a chunk and the current panel stay in L2
// while the chunk's row groups meet the panel; each chunk re-reads the weights once.
//
// Instruction sets: AVX-512 (the register tiles above), AVX2 + FMA (16 registers of 8 lanes:
// fp32/int8 rows in column strips of 16-64, int4 decode in strips of 16; bf16 and the int4
// dequantization take the portable loops), else portable loops the compiler vectorizes.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <immintrin.h>
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#include "entry_points.h"

namespace {

constexpr int64_t kPanel = 64;            // output columns per packed panel
constexpr int kVecs = kPanel / 16;        // 16-column vectors per panel (a band's unit)
constexpr int kMR = 6;                    // activation rows per register tile
constexpr int64_t kChunkElems = 48 << 10; // activation elements per chunk (192 KB of fp32)
constexpr int64_t kCodeStreamAhead = 4096; // bytes a one-row int8 / int4 stream prefetches ahead
constexpr int64_t kKBlock = 64;           // k rows per block of a k-blocked panel (rows_panel_kblocked)
constexpr int64_t kKBlockMaxRows = 41;    // most rows that take the k-blocked order

using bf16 = c10::BFloat16;

// Prefetch of the NEXT panel into L2, spread evenly over the k steps of the current panel's
// row groups. A panel is read from memory by its first row group only (the others hit L2),
// so without it that group waits on DRAM for the whole panel and streaming and FMA time add
// up: on a host reading 9 GB/s per core that was ~1/4 of a 48-row decode step. Spread
// rather than issued at once because each outstanding prefetch holds a fill buffer the
// demand loads from L2 also need. Only a hint: no value depends on it.
struct NextPanel {
  const char* p = nullptr;  // next line to prefetch
  int64_t num = 0;          // lines to prefetch over all steps (0: none)
  int64_t den = 1;          // k steps they are spread over
  int64_t acc = 0;
  inline void step() {
    for (acc += num; acc >= den; acc -= den, p += 64) __builtin_prefetch(p, 0, 2);
  }
};

// f(std::integral_constant<int, R>) for the R = rows (1..kMR-1) left over after a panel's
// full kMR-row groups; nothing for 0
template <typename F>
inline void with_tail_rows(int64_t rows, F&& f) {
  switch (rows) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    default: break;
  }
}

#if defined(__AVX512F__) && defined(__AVX512BW__)
#define INFER_DENSE_SIMD 1
#endif
#if defined(INFER_DENSE_SIMD) && defined(__AVX512BF16__)
#define INFER_DENSE_BF16_SIMD 1
#endif

// Write one row's 64 panel sums (* scale) (+ bias) to out[n0 .. n0 + nv). sum * scale + bias
// is one explicit fma (one rounding): left as a multiply and an add, the compiler contracts
// them in some inlined copies and not in others, and a row's last bit would then depend on
// the tile that wrote it (x * 1 + 0 and x * 1 + b round as the plain sum and add do).
template <typename T>
inline void store_row(const float* sums, const float* scale, const T* bias, T* out, int64_t n0,
                      int64_t nv) {
  for (int64_t j = 0; j < nv; ++j)
    out[j] = T(std::fma(sums[j], scale ? scale[n0 + j] : 1.f, bias ? float(bias[n0 + j]) : 0.f));
}

#if defined(INFER_DENSE_SIMD)
inline __mmask16 lane_mask(int64_t nv, int j) {
  const int64_t left = std::clamp<int64_t>(nv - 16 * j, 0, 16);
  return (__mmask16)((1u << left) - 1);
}

inline void store_vec(__m512 v, const float* scale, const float* bias, float* out, int64_t n0,
                      int64_t nv, int j) {
  const __mmask16 m = lane_mask(nv, j);
  if (scale || bias)  // one explicit fma, as store_row (why: there)
    v = _mm512_fmadd_ps(v, scale ? _mm512_maskz_loadu_ps(m, scale + n0 + 16 * j) : _mm512_set1_ps(1.f),
                        bias ? _mm512_maskz_loadu_ps(m, bias + n0 + 16 * j) : _mm512_setzero_ps());
  _mm512_mask_storeu_ps(out + 16 * j, m, v);
}

inline void store_vec(__m512 v, const bf16* bias, bf16* out, int64_t n0, int64_t nv, int j) {
  const __mmask16 m = lane_mask(nv, j);
  if (bias) {  // bf16 -> fp32 is a 16-bit left shift
    const __m256i b = _mm256_maskz_loadu_epi16(m, bias + n0 + 16 * j);
    v = _mm512_add_ps(v, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16)));
  }
#if defined(__AVX512BF16__)
  // round to nearest even, as c10::BFloat16(float) does for every finite value
  _mm256_mask_storeu_epi16(out + 16 * j, m, (__m256i)_mm512_cvtneps_pbh(v));
#else
  float tmp[16];
  _mm512_storeu_ps(tmp, v);
  for (int i = 0; i < 16; ++i)
    if (m >> i & 1) out[16 * j + i] = bf16(tmp[i]);
#endif
}

inline __m512 bcast(const float* v) { return _mm512_set1_ps(*v); }

// 16 panel weights -> 16 fp32 lanes (int8 codes are widened exactly).
inline __m512 load_w(const float* w) { return _mm512_loadu_ps(w); }
inline __m512 load_w(const int8_t* w) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i*)w)));
}

// MR rows of x against NV 16-column vectors of one fp32 or int8 panel [K, 64]: p, out and
// n0 point at the window's first column, nv = its columns that exist (scale: per-column
// factor or null). Every panel function below takes such a window (NV = kVecs: all of it).
// With part (k-blocked tiles, rows_panel_kblocked): only k in [k0, k1), the sums so far
// kept in part [MR][64] between calls (from it when k0 > 0, back to it when k1 < K). A store
// and a reload do not round, so the chain over k and the bits stay those of one call.
template <int MR, int NV, typename W>
inline void panel_f32(const float* x, const W* p, int64_t K, const float* scale,
                      const float* bias, float* out, int64_t N, int64_t n0, int64_t nv,
                      NextPanel& next, int64_t k0 = 0, int64_t k1 = -1, float* part = nullptr) {
  NextPanel pf = next;  // a local copy stays in registers through the k loop
  if (k1 < 0) k1 = K;
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV; ++j)
      acc[m][j] = k0 > 0 ? _mm512_load_ps(part + m * kPanel + 16 * j) : _mm512_setzero_ps();
  // one chain per column over k for every MR (also one row: a second chain for odd k would
  // hide FMA latency, but the row's bits would then differ from the same row in a bigger
  // tile, i.e. depend on the batch; one row is bound by memory, not by that latency)
  for (int64_t k = k0; k < k1; ++k) {
    const W* w = p + k * kPanel;
    __m512 wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = load_w(w + 16 * j);
    // one fp32 row is left to the hardware prefetchers: software prefetches 2 KB ahead into
    // L1 gained 1.1-1.3% on the earlier host but cost 3% on the model's decode GEMVs (10% on
    // the LM head) on the 2 MiB-L2 Xeon (experiments/16-team-decode); into L2 at 4-8 KB, or
    // non-temporal, was slower on both
    // int8 codes: a k row of the panel is one line. Without this the widening and FMAs of a
    // line and its fetch did not overlap: 1.41x on the model's one-row int8 GEMVs at one thread
    if constexpr (MR == 1 && std::is_same_v<W, int8_t>)
      __builtin_prefetch(reinterpret_cast<const char*>(w) + kCodeStreamAhead, 0, 3);
    for (int m = 0; m < MR; ++m) {
      const __m512 xb = bcast(x + m * K + k);
      for (int j = 0; j < NV; ++j) acc[m][j] = _mm512_fmadd_ps(wv[j], xb, acc[m][j]);
    }
    pf.step();
  }
  next = pf;
  if (k1 < K) {
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < NV; ++j) _mm512_store_ps(part + m * kPanel + 16 * j, acc[m][j]);
    return;
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV; ++j) store_vec(acc[m][j], scale, bias, out + m * N, n0, nv, j);
}

// fp32 / int8 panel, 2 to 5 full row groups: k in blocks of kKBlock, every group (and the
// leftover rows) meeting a block before the next one starts, the sums in between parked in
// a per-thread buffer. A block's lines (16 KB of fp32) are read from memory by the first
// group and from L1 by the others, where whole-K passes re-read the panel from L2; measured
// on the model's shapes at one thread: 1.06-1.14x for 12-24 rows, ~1.01x at 36-42, slower
// from 48 (the parked sums' traffic grows with the rows, the FMA work is the limit there).
template <int NV, typename W>
void rows_panel_kblocked(const float* x, const W* p, int64_t mc, int64_t K, const float* scale,
                         const float* bias, float* out, int64_t N, int64_t n0, int64_t nv,
                         NextPanel& pf) {
  thread_local std::vector<float> buf;
  const size_t need = static_cast<size_t>((mc + 1) * kPanel);  // + 1 row: room to align
  if (buf.size() < need) buf.resize(need);
  float* part = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buf.data()) + 63) & ~uintptr_t{63});
  NextPanel none;
  const int64_t full = mc / kMR * kMR;
  for (int64_t k0 = 0; k0 < K; k0 += kKBlock) {
    const int64_t k1 = std::min(K, k0 + kKBlock);
    for (int64_t m = 0; m < full; m += kMR)
      panel_f32<kMR, NV, W>(x + m * K, p, K, scale, bias, out + m * N, N, n0, nv, pf, k0, k1, part + m * kPanel);
    const float* xm = x + full * K;
    float* om = out + full * N;
    float* pm = part + full * kPanel;
    with_tail_rows(mc - full, [&](auto r_) {
      panel_f32<decltype(r_)::value, NV, W>(xm, p, K, scale, bias, om, N, n0, nv, none, k0, k1, pm);
    });
  }
}
#elif defined(__AVX2__) && defined(__FMA__)
// AVX2 (16 vector registers of 8 fp32): the 64-column panel is too wide for one register
// tile, so up to 6 rows run against column strips: 6 rows x 16 columns (12 accumulators; per
// k one weight line and 6 broadcasts feed 12 FMAs), fewer rows on wider strips, and a single
// row (decode) on the whole window in one pass (up to 8 accumulators: 64 columns, or the 16-48
// of a window when a thread's band cuts the panel), so each weight line is streamed once. Sums over k in order, per column, in one chain, as the AVX-512 tiles
// do, so a row's sums are the same in every tile shape (they do not depend on the batch);
// the FMAs come from GCC's default contraction here, so the last bits may still differ from
// an AVX-512 host's.
typedef float v8f __attribute__((vector_size(32), aligned(4)));
typedef int8_t v8b __attribute__((vector_size(8), aligned(1)));

inline v8f load8(const float* w) { return *reinterpret_cast<const v8f*>(w); }
inline v8f load8(const int8_t* w) {
  return __builtin_convertvector(*reinterpret_cast<const v8b*>(w), v8f);
}

// R rows x (8 * NJ) columns starting at column c0 of the panel -> sums[r][c0 ...]
template <int R, int NJ, typename W>
inline void tile_f32(const float* x, const W* p, int64_t K, int c0, float (*sums)[kPanel],
                     NextPanel& next) {
  NextPanel pf = next;
  v8f acc[R][NJ];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NJ; ++j) acc[r][j] = v8f{};
  const W* w = p + c0;
  for (int64_t k = 0; k < K; ++k, w += kPanel) {
    v8f wv[NJ];
    for (int j = 0; j < NJ; ++j) wv[j] = load8(w + 8 * j);
    for (int r = 0; r < R; ++r) {
      // a load-broadcast (v8f{} + x would add -0-safe zero first: an extra FP op per row)
      const v8f xb = (v8f)_mm256_broadcast_ss(x + r * K + k);
      for (int j = 0; j < NJ; ++j) acc[r][j] += xb * wv[j];
    }
    pf.step();
  }
  next = pf;
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NJ; ++j) *reinterpret_cast<v8f*>(sums[r] + c0 + 8 * j) = acc[r][j];
}

// columns per strip for R rows over a window of nv vectors: R x (columns / 8) <= 12
// accumulators, and the strips tile the window (one row: the whole window in one strip)
constexpr int strip_cols(int rows, int nv) {
  if (rows == 1) return 16 * nv;
  int c = rows <= 3 ? 32 : 16;
  while ((16 * nv) % c != 0) c /= 2;
  return c;
}

template <int R, int NV, typename W>
inline void rows_f32(const float* x, const W* p, int64_t K, float (*sums)[kPanel],
                     NextPanel& next) {
  constexpr int kCols = strip_cols(R, NV);
  for (int c0 = 0; c0 < 16 * NV; c0 += kCols) tile_f32<R, kCols / 8>(x, p, K, c0, sums, next);
}

template <int MR, int NV, typename W>
inline void panel_f32(const float* x, const W* p, int64_t K, const float* scale,
                      const float* bias, float* out, int64_t N, int64_t n0, int64_t nv,
                      NextPanel& next) {
  alignas(32) float sums[MR][kPanel];
  rows_f32<MR, NV>(x, p, K, sums, next);
  for (int r = 0; r < MR; ++r) store_row<float>(sums[r], scale, bias, out + r * N, n0, nv);
}
#else
template <int MR, int NV, typename W>
inline void panel_f32(const float* x, const W* p, int64_t K, const float* scale,
                      const float* bias, float* out, int64_t N, int64_t n0, int64_t nv,
                      NextPanel&) {
  for (int m = 0; m < MR; ++m) {
    float sums[kPanel] = {0.f};
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < 16 * NV; ++j) sums[j] += x[m * K + k] * float(p[k * kPanel + j]);
    store_row<float>(sums, scale, bias, out + m * N, n0, nv);
  }
}
#endif

#if defined(INFER_DENSE_BF16_SIMD)
// MR rows of x against NV vectors of one bf16 panel [ceil(K/2), 64, 2].
template <int MR, int NV>
inline void panel_bf16(const bf16* x, const bf16* p, int64_t K, const bf16* bias, bf16* out,
                       int64_t N, int64_t n0, int64_t nv, NextPanel& next) {
  NextPanel pf = next;
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV; ++j) acc[m][j] = _mm512_setzero_ps();
  // one k pair: the pair (x[2i], x[2i+1]) is broadcast as one 32-bit lane; bytes = 2 for an
  // odd K's last pair, which then reads (x[K-1], 0) and never the next row
  auto step = [&](int64_t i, int bytes) {
    const bf16* w = p + i * 2 * kPanel;
    __m512bh wv[NV];
    for (int j = 0; j < NV; ++j) wv[j] = (__m512bh)_mm512_loadu_si512(w + 32 * j);
    for (int m = 0; m < MR; ++m) {
      uint32_t pair = 0;
      std::memcpy(&pair, x + m * K + 2 * i, bytes);
      const __m512bh xb = (__m512bh)_mm512_set1_epi32((int)pair);
      for (int j = 0; j < NV; ++j) acc[m][j] = _mm512_dpbf16_ps(acc[m][j], wv[j], xb);
    }
    pf.step();
  };
  for (int64_t i = 0; i < K / 2; ++i) step(i, 4);
  if (K & 1) step(K / 2, 2);
  next = pf;
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV; ++j) store_vec(acc[m][j], bias, out + m * N, n0, nv, j);
}
#else
template <int MR, int NV>
inline void panel_bf16(const bf16* x, const bf16* p, int64_t K, const bf16* bias, bf16* out,
                       int64_t N, int64_t n0, int64_t nv, NextPanel&) {
  for (int m = 0; m < MR; ++m) {
    float sums[kPanel] = {0.f};
    for (int64_t k = 0; k < K; ++k)
      for (int64_t j = 0; j < 16 * NV; ++j)
        sums[j] += float(x[m * K + k]) * float(p[(k / 2) * 2 * kPanel + 2 * j + (k & 1)]);
    store_row<bf16>(sums, nullptr, bias, out + m * N, n0, nv);
  }
}
#endif

// T: activation / output dtype; W: packed weight dtype (T itself, or int8 codes for fp32 T).
template <typename T, typename W, int MR, int NV>
inline void panel(const T* x, const W* p, int64_t K, const float* scale, const T* bias, T* out,
                  int64_t N, int64_t n0, int64_t nv, NextPanel& next) {
  if constexpr (std::is_same_v<T, float>)
    panel_f32<MR, NV, W>(x, p, K, scale, bias, out, N, n0, nv, next);
  else
    panel_bf16<MR, NV>(x, p, K, bias, out, N, n0, nv, next);
}

// packed elements per output column in one k row of a panel (bf16: a k pair)
template <typename W>
constexpr int64_t col_elems() { return std::is_same_v<W, bf16> ? 2 : 1; }

// passes a tile of `rows` rows makes over a panel's k (the AVX2 tiles go strip by strip)
template <typename T, int NV>
constexpr int64_t group_passes(int rows) {
#if !defined(INFER_DENSE_SIMD) && defined(__AVX2__) && defined(__FMA__)
  if constexpr (std::is_same_v<T, float>) return 16 * NV / strip_cols(rows, NV);
#endif
  return 1;
}

// All mc rows of x (groups of kMR, then the 1..5 leftover) against an NV-vector window of
// panel p; while the groups run, the next panel of this thread (next_p, next_bytes; null:
// none) is prefetched into L2. Kept out of line: inlined into the parallel_for body, GCC
// stored every fp32 accumulator to memory each step.
template <typename T, typename W, int NV>
__attribute__((noinline)) void rows_panel(const T* x, const W* p, int64_t mc, int64_t K,
                                          const float* scale, const T* bias, T* out, int64_t N,
                                          int64_t n0, int64_t nv, const void* next_p,
                                          int64_t next_bytes) {
  const int64_t groups = mc / kMR, tail = mc % kMR;
  const int64_t k_steps = std::is_same_v<W, bf16> ? (K + 1) / 2 : K;
  NextPanel pf, tail_pf;  // the prefetch of the full groups / of the leftover rows' tile
  // spread over the full groups; with none (fewer than kMR rows), over the leftover rows'
  // pass. One row is a pure weight stream with no FMA time to hide it behind (no gain seen)
  if (next_p && groups > 0)
    pf = NextPanel{static_cast<const char*>(next_p), next_bytes / 64, groups * k_steps * group_passes<T, NV>(kMR), 0};
  else if (next_p && mc > 1)
    tail_pf = NextPanel{static_cast<const char*>(next_p), next_bytes / 64, k_steps * group_passes<T, NV>(static_cast<int>(tail)), 0};
#if defined(INFER_DENSE_SIMD)
  if constexpr (std::is_same_v<T, float>)
    if (groups >= 2 && mc <= kKBlockMaxRows && K > kKBlock)
      return rows_panel_kblocked<NV, W>(x, p, mc, K, scale, bias, out, N, n0, nv, pf);
#endif
  int64_t m = 0;
  for (; m + kMR <= mc; m += kMR)
    panel<T, W, kMR, NV>(x + m * K, p, K, scale, bias, out + m * N, N, n0, nv, pf);
  const T* xm = x + m * K;
  T* om = out + m * N;
  with_tail_rows(tail, [&](auto r_) {
    panel<T, W, decltype(r_)::value, NV>(xm, p, K, scale, bias, om, N, n0, nv, tail_pf);
  });
}

// f(std::integral_constant<int, NV>) for a window of nvec = NV vectors (1..kVecs)
template <typename F>
inline void with_nv(int64_t nvec, F&& f) {
  switch (nvec) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case kVecs: f(std::integral_constant<int, kVecs>{}); break;
    default: TORCH_INTERNAL_ASSERT(false, "a panel window of ", nvec, " vectors");
  }
}

// Columns that exist in the window of nvec vectors from vector j0 of a panel whose first nv
// columns exist (<= 0: the window holds only the last panel's zero padding).
inline int64_t window_cols(int64_t j0, int64_t nvec, int64_t nv) {
  return std::min(nv - 16 * j0, 16 * nvec);
}

// Vectors [j0, j0 + nvec) of panel p (p, out, n0, nv as for a whole panel; nvec in 1..kVecs).
template <typename T, typename W>
void rows_window(int64_t j0, int64_t nvec, const T* x, const W* p, int64_t mc, int64_t K,
                 const float* scale, const T* bias, T* out, int64_t N, int64_t n0, int64_t nv,
                 const void* next_p = nullptr, int64_t next_bytes = 0) {
  const int64_t c0 = 16 * j0, wv = window_cols(j0, nvec, nv);
  if (wv <= 0) return;
  const W* pw = p + c0 * col_elems<W>();
  with_nv(nvec, [&](auto nv_) {
    rows_panel<T, W, decltype(nv_)::value>(x, pw, mc, K, scale, bias, out + c0, N, n0 + c0, wv,
                                           next_p, next_bytes);
  });
}

#if defined(INFER_DENSE_SIMD)
// 16 columns x 2 k of int4 codes (16 bytes) -> (even k, odd k) as fp32 lanes
inline void decode_int4(const uint8_t* w, __m512& lo, __m512& hi) {
  const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)w));
  lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xF)));
  hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
}

// MR (1 or 2) rows of x against an NV-vector window of one int4 panel (p, sc, of, out, n0 at
// the window's first column); xsum [MR, K/G] = per-group sums of x.
template <int MR, int NV>
inline void panel_int4(const float* x, const float* xsum, const uint8_t* p, const float* sc,
                       const float* of, int64_t K, int64_t G, const float* bias, float* out,
                       int64_t N, int64_t n0, int64_t nv) {
  const int64_t ng = K / G;
  __m512 acc[MR][NV];
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV; ++j) acc[m][j] = _mm512_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    __m512 ge[MR][NV], go[MR][NV];  // even-k and odd-k chains of the group's code dot products
    for (int m = 0; m < MR; ++m)
      for (int j = 0; j < NV; ++j) ge[m][j] = go[m][j] = _mm512_setzero_ps();
    for (int64_t i = g * G / 2; i < (g + 1) * G / 2; ++i) {
      const uint8_t* w = p + i * kPanel;
      __m512 xe[MR], xo[MR];
      // one row (single stream): the nibble decoding is slow enough that the line's fetch must
      // be started well before it (1.50x on the model's one-row int4 GEMVs at one thread; 2 KB
      // ahead 1.47x, 8 KB 1.48x)
      if constexpr (MR == 1) __builtin_prefetch(w + kCodeStreamAhead, 0, 3);
      for (int m = 0; m < MR; ++m) {
        xe[m] = bcast(x + m * K + 2 * i);
        xo[m] = bcast(x + m * K + 2 * i + 1);
      }
      for (int j = 0; j < NV; ++j) {
        __m512 lo, hi;
        decode_int4(w + 16 * j, lo, hi);
        for (int m = 0; m < MR; ++m) {
          ge[m][j] = _mm512_fmadd_ps(lo, xe[m], ge[m][j]);
          go[m][j] = _mm512_fmadd_ps(hi, xo[m], go[m][j]);
        }
      }
    }
    for (int j = 0; j < NV; ++j) {
      const __m512 s = _mm512_loadu_ps(sc + g * kPanel + 16 * j);
      const __m512 o = _mm512_loadu_ps(of + g * kPanel + 16 * j);
      for (int m = 0; m < MR; ++m) {
        acc[m][j] = _mm512_fmadd_ps(_mm512_add_ps(ge[m][j], go[m][j]), s, acc[m][j]);
        acc[m][j] = _mm512_fmadd_ps(o, _mm512_set1_ps(xsum[m * ng + g]), acc[m][j]);
      }
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int j = 0; j < NV; ++j) store_vec(acc[m][j], nullptr, bias, out + m * N, n0, nv, j);
}

// One int4 panel -> fp32 panel [K, 64] (Q * scale, then + offset: the reference's roundings).
inline void dequant_int4(const uint8_t* p, const float* sc, const float* of, int64_t K, int64_t G,
                         float* buf) {
  for (int64_t g = 0; g < K / G; ++g)
    for (int j = 0; j < 4; ++j) {
      const __m512 s = _mm512_loadu_ps(sc + g * kPanel + 16 * j);
      const __m512 o = _mm512_loadu_ps(of + g * kPanel + 16 * j);
      for (int64_t i = g * G / 2; i < (g + 1) * G / 2; ++i) {
        __m512 lo, hi;
        decode_int4(p + i * kPanel + 16 * j, lo, hi);
        _mm512_storeu_ps(buf + 2 * i * kPanel + 16 * j, _mm512_add_ps(_mm512_mul_ps(lo, s), o));
        _mm512_storeu_ps(buf + (2 * i + 1) * kPanel + 16 * j, _mm512_add_ps(_mm512_mul_ps(hi, s), o));
      }
    }
}
#else
inline float int4_at(const uint8_t* p, int64_t k, int64_t j) {
  const uint8_t b = p[(k / 2) * kPanel + j];
  return float((k & 1) ? (b >> 4) : (b & 0xF));
}

#if defined(__AVX2__) && defined(__FMA__)
// AVX2: 8 codes -> 8 fp32 (low nibble: even k, high nibble: odd k).
inline void decode_int4_8(const uint8_t* w, __m256& lo, __m256& hi) {
  const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i*)w));
  lo = _mm256_cvtepi32_ps(_mm256_and_si256(v, _mm256_set1_epi32(0xF)));
  hi = _mm256_cvtepi32_ps(_mm256_srli_epi32(v, 4));
}

// MR (1 or 2) rows against an NV-vector window of one int4 panel, in strips of 16 columns
// (16 vector registers: MR x 2 accumulators plus the group's even/odd chains); the same sums
// as the AVX-512 path.
template <int MR, int NV>
inline void panel_int4(const float* x, const float* xsum, const uint8_t* p, const float* sc,
                       const float* of, int64_t K, int64_t G, const float* bias, float* out,
                       int64_t N, int64_t n0, int64_t nv) {
  const int64_t ng = K / G;
  alignas(32) float sums[MR][kPanel];
  for (int c0 = 0; c0 < 16 * NV; c0 += 16) {
    __m256 acc[MR][2];
    for (int m = 0; m < MR; ++m) acc[m][0] = acc[m][1] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      __m256 ge[MR][2], go[MR][2];
      for (int m = 0; m < MR; ++m) ge[m][0] = ge[m][1] = go[m][0] = go[m][1] = _mm256_setzero_ps();
      for (int64_t i = g * G / 2; i < (g + 1) * G / 2; ++i) {
        const uint8_t* w = p + i * kPanel + c0;
        __m256 xe[MR], xo[MR];
        for (int m = 0; m < MR; ++m) {
          xe[m] = _mm256_broadcast_ss(x + m * K + 2 * i);
          xo[m] = _mm256_broadcast_ss(x + m * K + 2 * i + 1);
        }
        for (int jj = 0; jj < 2; ++jj) {
          __m256 lo, hi;
          decode_int4_8(w + 8 * jj, lo, hi);
          for (int m = 0; m < MR; ++m) {
            ge[m][jj] = _mm256_fmadd_ps(lo, xe[m], ge[m][jj]);
            go[m][jj] = _mm256_fmadd_ps(hi, xo[m], go[m][jj]);
          }
        }
      }
      for (int jj = 0; jj < 2; ++jj) {
        const __m256 sv = _mm256_loadu_ps(sc + g * kPanel + c0 + 8 * jj);
        const __m256 ov = _mm256_loadu_ps(of + g * kPanel + c0 + 8 * jj);
        for (int m = 0; m < MR; ++m) {
          acc[m][jj] = _mm256_fmadd_ps(_mm256_add_ps(ge[m][jj], go[m][jj]), sv, acc[m][jj]);
          acc[m][jj] = _mm256_fmadd_ps(ov, _mm256_set1_ps(xsum[m * ng + g]), acc[m][jj]);
        }
      }
    }
    for (int m = 0; m < MR; ++m)
      for (int jj = 0; jj < 2; ++jj) _mm256_store_ps(sums[m] + c0 + 8 * jj, acc[m][jj]);
  }
  for (int m = 0; m < MR; ++m) store_row<float>(sums[m], nullptr, bias, out + m * N, n0, nv);
}
#else
template <int MR, int NV>
inline void panel_int4(const float* x, const float* xsum, const uint8_t* p, const float* sc,
                       const float* of, int64_t K, int64_t G, const float* bias, float* out,
                       int64_t N, int64_t n0, int64_t nv) {
  const int64_t ng = K / G;
  for (int m = 0; m < MR; ++m) {
    float sums[kPanel] = {0.f};
    for (int64_t g = 0; g < ng; ++g)
      for (int64_t j = 0; j < 16 * NV; ++j) {
        float d = 0.f;
        for (int64_t k = g * G; k < (g + 1) * G; ++k) d += x[m * K + k] * int4_at(p, k, j);
        sums[j] += d * sc[g * kPanel + j] + of[g * kPanel + j] * xsum[m * ng + g];
      }
    store_row<float>(sums, nullptr, bias, out + m * N, n0, nv);
  }
}
#endif

inline void dequant_int4(const uint8_t* p, const float* sc, const float* of, int64_t K, int64_t G,
                         float* buf) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t j = 0; j < kPanel; ++j)
      buf[k * kPanel + j] = int4_at(p, k, j) * sc[(k / G) * kPanel + j] + of[(k / G) * kPanel + j];
}
#endif

constexpr int64_t kInt4MaxRows = 2;  // rows decoded in registers (beyond: dequantized panels)

// Walks a thread's band [t0, t1) of tasks, panel-major, each panel cut into `parts` row parts:
// f(panel, row part, next task) for each (next task == t1: the band ends there).
template <typename F>
inline void for_each_piece(int64_t t0, int64_t t1, int64_t parts, F&& f) {
  for (int64_t t = t0; t < t1; ++t) f(t / parts, t % parts, t + 1);
}

// Few-row calls (decode) split their work dynamically. A static split gives each thread an
// equal share of the bytes, but two threads streaming at once do not finish together: in
// single-stream decode at two threads, one ended 5-15% of the call before the other (10th /
// 90th percentiles; 1.6-3.6 ms of waiting per token over the 121 GEMVs), and the step waits
// for the slower. So each thread owns a band of tasks (task t: 16-column vector t % kVecs of
// panel t / kVecs; the bands are equal to a vector when the panels do not divide over the
// threads) and takes it from the front a panel at a time; a thread done with its band takes
// whole panels from the back of the others'. (Taking single vectors at the end balanced finer
// but read each panel as four strided passes and was slower.) Which thread computes a column
// never changes its sum (one chain over k in every window): outputs stay bit-identical.
struct alignas(64) Band {        // one per thread, on its own cache line
  std::atomic<uint64_t> range;   // [front, back) of the band's untaken tasks: low | high 32 bits
};

static_assert(sizeof(Band) <= infer_ep::kTeamBandBytes, "team_init's band state outgrew its slot");

inline uint64_t band_range(int64_t front, int64_t back) {
  return static_cast<uint64_t>(front) | (static_cast<uint64_t>(back) << 32);
}

// Takes tasks from `band` until it is empty: the owner from the front, others from the back.
// f(panel, first vector, vectors, a panel to prefetch or -1) runs each piece taken.
template <typename F>
void drain_band(Band& band, bool owner, F& f) {
  uint64_t r = band.range.load(std::memory_order_acquire);
  for (;;) {
    const int64_t lo = static_cast<int64_t>(r & 0xffffffffu), hi = static_cast<int64_t>(r >> 32);
    if (lo >= hi) return;
    int64_t t, n;
    if (owner) {  // the rest of the front panel (a band may start or end inside one)
      t = lo;
      n = std::min((lo / kVecs + 1) * kVecs, hi) - lo;
    } else {      // the back panel's part in the band
      n = hi - std::max((hi - 1) / kVecs * kVecs, lo);
      t = hi - n;
    }
    const uint64_t want = owner ? band_range(lo + n, hi) : band_range(lo, hi - n);
    if (!band.range.compare_exchange_weak(r, want, std::memory_order_acq_rel,
                                          std::memory_order_acquire))
      continue;  // r reloaded: the other end moved
    // a hint only: the panel this thread is likely to take next
    const int64_t next = owner ? (t + n < hi ? (t + n) / kVecs : -1) : (t > lo ? (t - 1) / kVecs : -1);
    f(t / kVecs, t % kVecs, n, next);
    r = band.range.load(std::memory_order_acquire);
  }
}

// Bands [b * tasks / nb, (b + 1) * tasks / nb) for b < nb.
inline void init_bands(Band* bands, int64_t tasks, int64_t nb) {
  for (int64_t b = 0; b < nb; ++b)
    bands[b].range.store(band_range(b * tasks / nb, (b + 1) * tasks / nb), std::memory_order_relaxed);
}

// A thread owning bands [b0, b1) of nb: drains its own from the front, then takes what is
// left of every band from the back (b0 == b1 == nb: a thread without a band only takes).
template <typename F>
void drain_bands(Band* bands, int64_t b0, int64_t b1, int64_t nb, F& f) {
  for (int64_t b = b0; b < b1; ++b) drain_band(bands[b], true, f);
  for (int64_t i = 1; i <= nb; ++i) drain_band(bands[(b1 - 1 + i) % nb], false, f);
}

// Runs every vector of `panels` panels over the intra-op threads as above (callers use it
// with two or more threads).
template <typename F>
void balanced_tasks(int64_t panels, F&& f) {
  const int64_t tasks = panels * kVecs;
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), tasks));
  std::unique_ptr<Band[]> bands(new Band[nt]);
  init_bands(bands.get(), tasks, nt);
  // grain 1 over nt items: each thread one band (run inline on one thread, all of them)
  at::parallel_for(0, nt, 1, [&](int64_t b0, int64_t b1) { drain_bands(bands.get(), b0, b1, nt, f); });
}

// Vectors [j0, j0 + nvec) of int4 panel p for M (1 or 2) rows; the other arguments as for a
// whole panel (the int4 twin of rows_window).
inline void int4_window(int64_t M, int64_t j0, int64_t nvec, const float* x, const float* xsum,
                        const uint8_t* p, const float* sc, const float* of, int64_t K, int64_t G,
                        const float* bias, float* out, int64_t N, int64_t n0, int64_t nv) {
  const int64_t c0 = 16 * j0, wv = window_cols(j0, nvec, nv);
  if (wv <= 0) return;
  with_nv(nvec, [&](auto nv_) {
    constexpr int NV = decltype(nv_)::value;
    if (M == 1)
      panel_int4<1, NV>(x, xsum, p + c0, sc + c0, of + c0, K, G, bias, out + c0, N, n0 + c0, wv);
    else
      panel_int4<2, NV>(x, xsum, p + c0, sc + c0, of + c0, K, G, bias, out + c0, N, n0 + c0, wv);
  });
}

template <typename T, typename W = T>
void run(const T* x, const W* wp, const T* bias, T* out, int64_t M, int64_t K, int64_t N,
         const float* scale = nullptr) {
  const int64_t panels = (N + kPanel - 1) / kPanel;
  const int64_t panel_elems = (std::is_same_v<W, bf16> ? 2 * ((K + 1) / 2) : K) * kPanel;
  const int64_t panel_bytes = panel_elems * static_cast<int64_t>(sizeof(W));
  const int64_t chunk = std::max<int64_t>(kMR, kChunkElems / std::max<int64_t>(K, 1) / kMR * kMR);
  const int64_t threads = at::get_num_threads();
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    const int64_t mc = std::min(chunk, M - m0);
    if (threads > 1 && mc < threads * kMR) {  // few rows (decode): the dynamic split above
      balanced_tasks(panels, [&](int64_t p, int64_t j0, int64_t nvec, int64_t np) {
        const int64_t n0 = p * kPanel;
        rows_window<T, W>(j0, nvec, x + m0 * K, wp + p * panel_elems, mc, K, scale, bias,
                          out + m0 * N + n0, N, n0, std::min(kPanel, N - n0),
                          np >= 0 ? wp + np * panel_elems : nullptr, panel_bytes);
      });
      continue;
    }
    // Tasks are panel-major; grain 1: at::parallel_for hands each thread one contiguous band
    // of them. When the panels do not divide over the threads (N = 576: 9 panels, 5 + 4 on
    // two threads), each panel's rows are cut in `threads` parts (a row's sums are the same
    // whichever part holds it; whole-panel streams keep the next-panel prefetch).
    const int64_t parts = threads > 1 && panels % threads != 0 ? threads : 1;
    const int64_t part_rows = (mc + parts - 1) / parts;  // every row in exactly one part
    const bool more_chunks = m0 + chunk < M;
    at::parallel_for(0, panels * parts, 1, [&](int64_t t0, int64_t t1) {
      for_each_piece(t0, t1, parts, [&](int64_t p, int64_t part, int64_t t) {
        const int64_t r0 = part * part_rows, rows = std::min(mc, r0 + part_rows) - r0;
        if (rows <= 0) return;
        // the next panel this thread reads whole: the next task's (unless it is this panel
        // again, another row part), or after the band's end its first one, next chunk
        const int64_t u = t < t1 ? t : (more_chunks ? t0 : -1);
        const int64_t np = u >= 0 ? u / parts : p;
        const W* next = np != p ? wp + np * panel_elems : nullptr;
        const int64_t n0 = p * kPanel;
        rows_window<T, W>(0, kVecs, x + (m0 + r0) * K, wp + p * panel_elems, rows, K, scale, bias,
                          out + (m0 + r0) * N + n0, N, n0, std::min(kPanel, N - n0), next, panel_bytes);
      });
    });
  }
}

// One thread's share of a team GEMV (the decoder stack's team decode, team_linear below):
// the tasks and bands of balanced_tasks, drained by the calling thread as balanced_tasks'
// body would be: its own band from the front, then the others' from the back.
void team_drain(const float* x, const float* wp, const float* bias, float* out, int64_t M,
                int64_t K, int64_t N, Band* bands, int64_t tid, int64_t nb) {
  const int64_t panel_elems = K * kPanel;
  auto f = [&](int64_t p, int64_t j0, int64_t nvec, int64_t np) {
    const int64_t n0 = p * kPanel;
    rows_window<float, float>(j0, nvec, x, wp + p * panel_elems, M, K, nullptr, bias, out + n0,
                              N, n0, std::min(kPanel, N - n0),
                              np >= 0 ? wp + np * panel_elems : nullptr, panel_elems * 4);
  };
  const int64_t own = std::min(tid, nb);
  drain_bands(bands, own, tid < nb ? own + 1 : own, nb, f);
}

void run_int4(const float* x, const float* xsum, const uint8_t* wp, const float* sc,
              const float* of, const float* bias, float* out, int64_t M, int64_t K, int64_t N,
              int64_t G) {
  const int64_t panels = (N + kPanel - 1) / kPanel, ng = K / G;
  const int64_t pb = K / 2 * kPanel, ps = ng * kPanel;  // bytes / scales per panel
  if (M <= kInt4MaxRows) {
    const auto piece = [&](int64_t p, int64_t j0, int64_t nvec) {
      const int64_t n0 = p * kPanel;
      int4_window(M, j0, nvec, x, xsum, wp + p * pb, sc + p * ps, of + p * ps, K, G, bias,
                  out + n0, N, n0, std::min(kPanel, N - n0));
    };
    if (at::get_num_threads() > 1) {  // decode: the dynamic split
      balanced_tasks(panels, [&](int64_t p, int64_t j0, int64_t nvec, int64_t) { piece(p, j0, nvec); });
      return;
    }
    for (int64_t p = 0; p < panels; ++p) piece(p, 0, kVecs);  // one thread
    return;
  }
  const int64_t chunk = std::max<int64_t>(kMR, kChunkElems / std::max<int64_t>(K, 1) / kMR * kMR);
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    const int64_t mc = std::min(chunk, M - m0);
    at::parallel_for(0, panels, 1, [&](int64_t p0, int64_t p1) {
      std::vector<float> buf(K * kPanel);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n0 = p * kPanel;
        dequant_int4(wp + p * pb, sc + p * ps, of + p * ps, K, G, buf.data());
        rows_window<float, float>(0, kVecs, x + m0 * K, buf.data(), mc, K, nullptr, bias,
                                  out + m0 * N + n0, N, n0, std::min(kPanel, N - n0));
      }
    });
  }
}

}  // namespace

// x [M, K] @ W.T (+ bias) with W [n, K] given packed (layouts above).
torch::Tensor packed_linear(torch::Tensor x, torch::Tensor wp, int64_t n, torch::Tensor bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && wp.is_contiguous(),
              "packed_linear: x must be a contiguous [M, K] tensor and wp contiguous");
  TORCH_CHECK(x.scalar_type() == wp.scalar_type() &&
                  (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16),
              "packed_linear: x and the packed weight must share one dtype, float32 or bfloat16 "
              "(got ", x.scalar_type(), " and ", wp.scalar_type(), ")");
  const int64_t M = x.size(0), K = x.size(1), N = n;
  const bool f32 = x.scalar_type() == torch::kFloat32;
  const int64_t panels = (N + kPanel - 1) / kPanel;
  const int64_t kp = f32 ? K : 2 * ((K + 1) / 2);
  TORCH_CHECK(N >= 0 && wp.numel() == panels * kp * kPanel,
              "packed_linear: packed weight has ", wp.numel(), " elements, expected ",
              panels * kp * kPanel, " for N=", N, ", K=", K);
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == x.scalar_type() && bias.numel() == N &&
                                    bias.is_contiguous()),
              "packed_linear: bias must be [N] in x's dtype (or empty)");
  auto out = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  if (f32) {
    run<float>(x.data_ptr<float>(), wp.data_ptr<float>(),
               bias.numel() ? bias.data_ptr<float>() : nullptr, out.data_ptr<float>(), M, K, N);
  } else {
    run<bf16>(x.data_ptr<bf16>(), wp.data_ptr<bf16>(),
              bias.numel() ? bias.data_ptr<bf16>() : nullptr, out.data_ptr<bf16>(), M, K, N);
  }
  return out;
}

// x [M, K] fp32 @ (Q * scale[:, None]).T (+ bias) with Q [n, K] int8 given packed (int8 layout
// above); scale [ceil(n/64) * 64] fp32 (entries past n unused).
torch::Tensor packed_linear_int8(torch::Tensor x, torch::Tensor wp, int64_t n, torch::Tensor scale,
                                 torch::Tensor bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && wp.is_contiguous() && scale.is_contiguous(),
              "packed_linear_int8: x must be a contiguous [M, K] tensor, wp and scale contiguous");
  TORCH_CHECK(x.scalar_type() == torch::kFloat32 && wp.scalar_type() == torch::kInt8 &&
                  scale.scalar_type() == torch::kFloat32,
              "packed_linear_int8: x must be float32, wp int8, scale float32 (got ",
              x.scalar_type(), ", ", wp.scalar_type(), ", ", scale.scalar_type(), ")");
  const int64_t M = x.size(0), K = x.size(1), N = n;
  const int64_t panels = (N + kPanel - 1) / kPanel;
  TORCH_CHECK(N >= 0 && wp.numel() == panels * K * kPanel && scale.numel() >= N,
              "packed_linear_int8: packed weight has ", wp.numel(), " elements (expected ",
              panels * K * kPanel, ") and scale ", scale.numel(), " (need >= ", N, ") for N=", N,
              ", K=", K);
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == torch::kFloat32 && bias.numel() == N &&
                                    bias.is_contiguous()),
              "packed_linear_int8: bias must be [N] float32 (or empty)");
  auto out = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  run<float, int8_t>(x.data_ptr<float>(), wp.data_ptr<int8_t>(),
                     bias.numel() ? bias.data_ptr<float>() : nullptr, out.data_ptr<float>(), M, K,
                     N, scale.data_ptr<float>());
  return out;
}

// x [M, K] fp32 @ W.T (+ bias), W [n, K] int4 group-wise given packed (int4 layout above).
torch::Tensor packed_linear_int4(torch::Tensor x, torch::Tensor wp, int64_t n, torch::Tensor scale,
                                 torch::Tensor offset, int64_t group_size, torch::Tensor bias) {
  TORCH_CHECK(x.dim() == 2 && x.is_contiguous() && x.scalar_type() == torch::kFloat32,
              "packed_linear_int4: x must be a contiguous float32 [M, K] tensor");
  const int64_t M = x.size(0), K = x.size(1), N = n, G = group_size;
  TORCH_CHECK(G > 0 && G % 2 == 0 && K % G == 0,
              "packed_linear_int4: group_size must be even and divide K (got ", G, ", K=", K, ")");
  const int64_t panels = (N + kPanel - 1) / kPanel, ng = K / G;
  TORCH_CHECK(wp.scalar_type() == torch::kUInt8 && wp.is_contiguous() &&
                  wp.numel() == panels * (K / 2) * kPanel,
              "packed_linear_int4: wp must be contiguous uint8 with ", panels * (K / 2) * kPanel,
              " elements for N=", N, ", K=", K);
  for (const auto* t : {&scale, &offset})
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->is_contiguous() &&
                    t->numel() == panels * ng * kPanel,
                "packed_linear_int4: scale/offset must be contiguous float32 [Np, K/G, 64]");
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == torch::kFloat32 && bias.numel() == N &&
                                    bias.is_contiguous()),
              "packed_linear_int4: bias must be [N] float32 (or empty)");
  auto out = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  // per-group sums of x multiply the offsets (only the register path needs them)
  auto xsum = M <= kInt4MaxRows ? x.view({M, ng, G}).sum(-1).contiguous() : torch::empty({0}, x.options());
  run_int4(x.data_ptr<float>(), xsum.data_ptr<float>(), wp.data_ptr<uint8_t>(),
           scale.data_ptr<float>(), offset.data_ptr<float>(),
           bias.numel() ? bias.data_ptr<float>() : nullptr, out.data_ptr<float>(), M, K, N, G);
  return out;
}

// ---- Team decode (the decoder stack's few-row steps, fp32 weights) ----------------------
// The stack runs a whole step's layers in ONE OpenMP team instead of a parallel region per
// GEMV: thread 0 runs the small ops (norms, rope, KV store, attention) alone while the other
// threads, instead of idling, read the first lines of their band of the NEXT GEMV into their
// L2 (team_preload); then every thread takes its part of the GEMV (team_linear). The tasks,
// bands and stealing are balanced_tasks', so which thread computes a column never changes
// its sum: outputs are bit-identical to packed_linear's.

// Bands for a GEMV of N columns over nt threads (bands: nt * infer_ep::kTeamBandBytes bytes,
// 64-byte aligned, zeroed or previously initialized); returns the number of bands used.
int64_t team_init(void* bands_mem, int64_t N, int64_t nt) {
  Band* bands = static_cast<Band*>(bands_mem);
  const int64_t tasks = (N + kPanel - 1) / kPanel * kVecs;
  const int64_t nb = std::max<int64_t>(1, std::min(nt, tasks));
  for (int64_t b = 0; b < nb; ++b) new (&bands[b]) Band;  // raw bytes -> Bands (trivially destructible)
  init_bands(bands, tasks, nb);
  std::atomic_thread_fence(std::memory_order_release);
  return nb;
}

// Thread tid's part of out [M, N] = x [M, K] @ W.T (+ bias) on fp32 packed W (bands from
// team_init with nb bands; every thread of the team calls it; M <= kMR * threads).
void team_linear(const float* x, const float* wp, const float* bias, float* out, int64_t M,
                 int64_t K, int64_t N, void* bands, int64_t nb, int64_t tid) {
  team_drain(x, wp, bias, out, M, K, N, static_cast<Band*>(bands), tid, nb);
}

// Reads into this core's caches the lines that thread tid will take first in a GEMV on fp32
// packed W [N, K] over nt threads (its band's front), at most max_bytes, stopping as soon as
// *flag reaches `until` (the GEMV is published). A hint only: no value depends on it.
void team_preload(const float* wp, int64_t K, int64_t N, int64_t tid, int64_t nt,
                  int64_t max_bytes, const std::atomic<int64_t>* flag, int64_t until) {
  const int64_t tasks = (N + kPanel - 1) / kPanel * kVecs;
  const int64_t nb = std::max<int64_t>(1, std::min(nt, tasks));
  if (tid >= nb) return;
  const int64_t t0 = tid * tasks / nb, t1 = (tid + 1) * tasks / nb;
  int64_t lines = max_bytes / 64;
  for (int64_t t = t0; t < t1 && lines > 0;) {
    // a piece: the rest of task t's panel within the band (vectors j0 .. j0 + nvec)
    const int64_t p = t / kVecs, j0 = t % kVecs, nvec = std::min((p + 1) * kVecs, t1) - t;
    const char* base = reinterpret_cast<const char*>(wp + p * K * kPanel + 16 * j0);
    for (int64_t k = 0; k < K && lines > 0; ++k) {
      for (int64_t j = 0; j < nvec; ++j) _mm_prefetch(base + (k * kPanel + 16 * j) * 4, _MM_HINT_T0);
      lines -= nvec;
      if ((k & 15) == 0 && flag->load(std::memory_order_acquire) >= until) return;
    }
    t += nvec;
  }
}

bool has_bf16_simd() {
#if defined(INFER_DENSE_BF16_SIMD)
  return true;
#else
  return false;
#endif
}

// for the decoder stack (entry_points.h): the same functions, called without Python
const infer_ep::DenseLinear kEntryPoints{infer_ep::kVersion, &packed_linear, &packed_linear_int8,
                                         &packed_linear_int4, &team_init, &team_linear,
                                         &team_preload};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("entry_points", [] { return reinterpret_cast<int64_t>(&kEntryPoints); },
        "address of this extension's infer_ep::DenseLinear table");
  m.def("packed_linear", &packed_linear, "x @ W.T + bias, W prepacked (fp32 / bf16, CPU)");
  m.def("packed_linear_int8", &packed_linear_int8,
        "x @ (Q_int8 * scale).T + bias, Q prepacked (fp32 activations, CPU)");
  m.def("packed_linear_int4", &packed_linear_int4,
        "x @ (Q_int4 * scale + offset).T + bias, group-wise, Q prepacked (fp32, CPU)");
  m.def("has_bf16_simd", &has_bf16_simd, "whether the bf16 path was built with AVX512-BF16");
}
