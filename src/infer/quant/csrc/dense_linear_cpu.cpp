// Unquantized linear layers for CPU: y = x @ W.T (+ bias), fp32 or bf16, W row-major [N, K].
//
// Why a kernel: single-stream decode sweeps every weight matrix with a handful of activation
// rows, so its speed is weight bytes / memory read bandwidth. The BLAS GEMV path streams
// SmolLM2's short (K = 576) rows at about half the bandwidth one core can read, and its bf16
// path is slower than fp32 on this CPU. Here each thread streams a contiguous band of weight
// rows once per call and reuses every loaded weight vector for up to kMaxRows activation rows.
//
// Layout: the checkpoint's own row-major [N, K] is already the packed layout this kernel wants
// (a tile of TILE consecutive rows is one contiguous stretch of memory; bf16 pairs (k, k+1) of
// a row are adjacent, which is what the bf16 dot-product instruction consumes), so nothing is
// repacked and the tied embedding matrix serves the token lookup and the LM head unchanged.
//
// Blocking: output rows in blocks of kRowBlock across torch's intra-op threads (each thread a
// contiguous band, so one sequential stream per core); inside a block, activation rows in
// groups of 4 (MR) against TILE = 6 weight rows (24 accumulators), leftovers 1-3 rows against
// TILE = 8. Activations are split into chunks of ~256 KB (they stay in L2 while a chunk's pass
// over the weights runs), so very long prefills re-read the weights once per chunk.
//
// Contracts (checked): x [M, K] contiguous, w [N, K] contiguous, same dtype (fp32 or bf16);
// bias [N] of that dtype or empty; out [M, N] of that dtype. Accumulation is fp32; bf16 output
// is the fp32 sum (plus bias) rounded to nearest even.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>

#include <immintrin.h>
#include <algorithm>
#include <cstring>

namespace {

constexpr int64_t kRowBlock = 24;         // weight rows per work item (lcm of the two TILEs)
constexpr int64_t kChunkFloats = 1 << 16; // activation floats per chunk (256 KB of fp32)

using bf16 = c10::BFloat16;

#if defined(__AVX512F__)
inline __mmask16 tail16(int64_t left) { return (__mmask16)((1u << left) - 1); }
#endif
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512BF16__)
#define INFER_DENSE_BF16_SIMD 1
inline __mmask32 tail32(int64_t left) { return (__mmask32)((1ull << left) - 1); }
#endif

// One MR x TILE tile: acc[m][r] = dot(x row m, w row r) over all K, written to sums[m][r].
template <int MR, int TILE>
inline void tile_f32(const float* x, const float* w, int64_t K, float sums[MR][TILE]) {
#if defined(__AVX512F__)
  __m512 acc[MR][TILE];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < TILE; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = _mm512_loadu_ps(x + m * K + k);
    for (int r = 0; r < TILE; ++r) {
      const __m512 wv = _mm512_loadu_ps(w + r * K + k);
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_fmadd_ps(wv, xv[m], acc[m][r]);
    }
  }
  if (k < K) {
    const __mmask16 mask = tail16(K - k);
    __m512 xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, x + m * K + k);
    for (int r = 0; r < TILE; ++r) {
      const __m512 wv = _mm512_maskz_loadu_ps(mask, w + r * K + k);
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_fmadd_ps(wv, xv[m], acc[m][r]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < TILE; ++r) sums[m][r] = _mm512_reduce_add_ps(acc[m][r]);
#else
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < TILE; ++r) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * w[r * K + k];
      sums[m][r] = s;
    }
#endif
}

// bf16 operands: each instruction multiplies 16 pairs (k, k+1) and adds both products into one
// fp32 lane, so a 32-wide K step needs no unpacking; the masked tail zero-fills odd K.
template <int MR, int TILE>
inline void tile_bf16(const bf16* x, const bf16* w, int64_t K, float sums[MR][TILE]) {
#if defined(INFER_DENSE_BF16_SIMD)
  __m512 acc[MR][TILE];
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < TILE; ++r) acc[m][r] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512bh xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = (__m512bh)_mm512_loadu_si512(x + m * K + k);
    for (int r = 0; r < TILE; ++r) {
      const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + r * K + k);
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv, xv[m]);
    }
  }
  if (k < K) {
    const __mmask32 mask = tail32(K - k);
    __m512bh xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = (__m512bh)_mm512_maskz_loadu_epi16(mask, x + m * K + k);
    for (int r = 0; r < TILE; ++r) {
      const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(mask, w + r * K + k);
      for (int m = 0; m < MR; ++m) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], wv, xv[m]);
    }
  }
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < TILE; ++r) sums[m][r] = _mm512_reduce_add_ps(acc[m][r]);
#else
  for (int m = 0; m < MR; ++m)
    for (int r = 0; r < TILE; ++r) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += float(x[m * K + k]) * float(w[r * K + k]);
      sums[m][r] = s;
    }
#endif
}

template <typename T, int MR, int TILE>
inline void tile(const T* x, const T* w, int64_t K, float sums[MR][TILE]) {
  if constexpr (std::is_same_v<T, float>)
    tile_f32<MR, TILE>(x, w, K, sums);
  else
    tile_bf16<MR, TILE>(x, w, K, sums);
}

// MR activation rows against weight rows [n0, n0 + nb): full TILEs, then single rows.
template <typename T, int MR, int TILE>
void rows_block(const T* x, const T* w, const T* bias, T* out, int64_t K, int64_t N, int64_t n0,
                int64_t nb) {
  float sums[MR][TILE];
  int64_t n = n0;
  for (; n + TILE <= n0 + nb; n += TILE) {
    tile<T, MR, TILE>(x, w + n * K, K, sums);
    for (int m = 0; m < MR; ++m)
      for (int r = 0; r < TILE; ++r)
        out[m * N + n + r] = T(sums[m][r] + (bias ? float(bias[n + r]) : 0.f));
  }
  for (; n < n0 + nb; ++n) {
    float one[MR][1];
    tile<T, MR, 1>(x, w + n * K, K, one);
    for (int m = 0; m < MR; ++m) out[m * N + n] = T(one[m][0] + (bias ? float(bias[n]) : 0.f));
  }
}

template <typename T>
void block(const T* x, const T* w, const T* bias, T* out, int64_t mc, int64_t K, int64_t N,
           int64_t n0, int64_t nb) {
  int64_t m = 0;
  for (; m + 4 <= mc; m += 4) rows_block<T, 4, 6>(x + m * K, w, bias, out + m * N, K, N, n0, nb);
  switch (mc - m) {
    case 1: rows_block<T, 1, 8>(x + m * K, w, bias, out + m * N, K, N, n0, nb); break;
    case 2: rows_block<T, 2, 8>(x + m * K, w, bias, out + m * N, K, N, n0, nb); break;
    case 3: rows_block<T, 3, 8>(x + m * K, w, bias, out + m * N, K, N, n0, nb); break;
    default: break;
  }
}

template <typename T>
void run(const T* x, const T* w, const T* bias, T* out, int64_t M, int64_t K, int64_t N) {
  const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
  const int64_t chunk = std::max<int64_t>(4, (kChunkFloats / std::max<int64_t>(K, 1)) / 4 * 4);
  for (int64_t m0 = 0; m0 < M; m0 += chunk) {
    const int64_t mc = std::min(chunk, M - m0);
    // grain 1: every thread gets one contiguous band of blocks (one sequential weight stream)
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      // block by block: a block's rows stay in L1/L2 while every activation group meets them
      for (int64_t b = b0; b < b1; ++b) {
        const int64_t n0 = b * kRowBlock;
        block<T>(x + m0 * K, w, bias, out + m0 * N, mc, K, N, n0, std::min(kRowBlock, N - n0));
      }
    });
  }
}

}  // namespace

torch::Tensor dense_linear(torch::Tensor x, torch::Tensor w, torch::Tensor bias) {
  TORCH_CHECK(x.dim() == 2 && w.dim() == 2 && x.is_contiguous() && w.is_contiguous(),
              "dense_linear: x [M, K] and w [N, K] must be contiguous 2-D tensors");
  TORCH_CHECK(x.scalar_type() == w.scalar_type() &&
                  (x.scalar_type() == torch::kFloat32 || x.scalar_type() == torch::kBFloat16),
              "dense_linear: x and w must share one dtype, float32 or bfloat16");
  TORCH_CHECK(x.size(1) == w.size(1), "dense_linear: x has K=", x.size(1), ", w has K=", w.size(1));
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == x.scalar_type() && bias.numel() == N &&
                                    bias.is_contiguous()),
              "dense_linear: bias must be [N] in x's dtype (or empty)");
  auto out = torch::empty({M, N}, x.options());
  if (M == 0 || N == 0) return out;
  if (x.scalar_type() == torch::kFloat32) {
    run<float>(x.data_ptr<float>(), w.data_ptr<float>(),
               bias.numel() ? bias.data_ptr<float>() : nullptr, out.data_ptr<float>(), M, K, N);
  } else {
    run<bf16>(x.data_ptr<bf16>(), w.data_ptr<bf16>(),
              bias.numel() ? bias.data_ptr<bf16>() : nullptr, out.data_ptr<bf16>(), M, K, N);
  }
  return out;
}

bool has_bf16_simd() {
#if defined(INFER_DENSE_BF16_SIMD)
  return true;
#else
  return false;
#endif
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dense_linear", &dense_linear, "x @ w.T + bias for fp32 / bf16 on CPU (row-major w)");
  m.def("has_bf16_simd", &has_bf16_simd, "whether the bf16 path was built with AVX512-BF16");
}
