// Weight-only quantized linear layers for CPU: y = x @ dequant(W).T (+ bias), fp32 activations.
//
// Why a kernel: single-stream decode is a sweep over every weight matrix with one activation
// row, so its speed is bytes of weights / memory bandwidth. int8/fp8 weights are 1/4 and int4
// ~1/6 of fp32's bytes, but torch's CPU paths either dequantize a full fp32 copy first (moving
// more bytes than fp32 itself) or are slow here (_weight_int8pack_mm: 0.7 GB/s). These kernels
// decode codes to fp32 in registers and FMA them with the activations, so each weight byte is
// read once per call for up to kMaxRows activation rows.
//
// Layouts (all contiguous):
//   x [M, K] fp32; out [M, N] fp32; bias [N] fp32 or empty.
//   int8: w [N, K] int8,                  W[n, k] = w[n, k] * scale[n]           (scale [N]).
//   fp8:  w [N, K] float8_e4m3fn as uint8, W[n, k] = float(w[n, k]) * scale[n].
//   int4: w [N, K/2] uint8, scale/offset [N, K/G] fp32: W[n, k] = q[n, k] * scale + offset of
//         k's group. Codes are packed per 32-wide K chunk c: byte c*16 + i holds k = 32c + i in
//         its low nibble and k = 32c + 16 + i in its high nibble (so one 16-byte load unpacks
//         into two 16-lane vectors in k order). Needs K % 32 == 0 and G % 32 == 0.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <c10/util/Float8_e4m3fn.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstring>

namespace {

constexpr int kMaxRows = 4;  // activation rows that share one read of the weights

#if defined(__AVX512F__) && defined(__AVX512BW__)
inline float hsum(__m512 v) { return _mm512_reduce_add_ps(v); }

// 16 bytes of codes -> 16 fp32 lanes.
struct DecodeInt8 {
  static inline __m512 run(__m128i b) { return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)); }
};
// float8_e4m3fn bits -> fp32: move sign and exponent|mantissa to their fp32 positions, then
// rebias the exponent by multiplying with 2^(127-7) (exact, e4m3 subnormals included).
struct DecodeFp8 {
  static inline __m512 run(__m128i b) {
    const __m512i v = _mm512_cvtepu8_epi32(b);
    const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x80)), 24);
    const __m512i mag = _mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x7F)), 20);
    return _mm512_mul_ps(_mm512_castsi512_ps(_mm512_or_si512(sign, mag)),
                         _mm512_set1_ps(1.329227995784916e36f));  // 2^120
  }
};

// 8-bit weights: MR activation rows x TILE output rows (independent FMA chains); k in steps
// of 16 with a masked tail.
template <typename Decode, int MR, int TILE>
void byte_tile(const float* x, int64_t K, const uint8_t* w, const float* scale, const float* bias,
               float* out, int64_t N, int64_t n0, int64_t nt) {
  __m512 acc[TILE][MR];
  for (int r = 0; r < TILE; ++r)
    for (int m = 0; m < MR; ++m) acc[r][m] = _mm512_setzero_ps();
  for (int64_t k = 0; k < K; k += 16) {
    const int64_t left = K - k;
    const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
    __m512 xv[MR];
    for (int m = 0; m < MR; ++m) xv[m] = _mm512_maskz_loadu_ps(mask, x + m * K + k);
    for (int r = 0; r < TILE; ++r) {
      if (r >= nt) break;
      const __m512 wf = Decode::run(_mm_maskz_loadu_epi8(mask, w + (n0 + r) * K + k));
      for (int m = 0; m < MR; ++m) acc[r][m] = _mm512_fmadd_ps(wf, xv[m], acc[r][m]);
    }
  }
  for (int r = 0; r < nt; ++r) {
    const int64_t n = n0 + r;
    const float b = bias ? bias[n] : 0.f;
    for (int m = 0; m < MR; ++m) out[m * N + n] = hsum(acc[r][m]) * scale[n] + b;
  }
}

// int4 weights: per group, the code dot products accumulate in gacc, then one FMA with the
// group scale moves them into acc; offsets multiply precomputed per-group sums of x.
template <int MR, int TILE>
void int4_tile(const float* x, const float* xsum, int64_t K, int64_t G, const uint8_t* w,
               const float* scale, const float* offset, const float* bias, float* out, int64_t N,
               int64_t n0, int64_t nt) {
  const int64_t ng = K / G;
  const __m512i low = _mm512_set1_epi32(0xF);
  __m512 acc[TILE][MR];
  float off[TILE][MR];
  for (int r = 0; r < TILE; ++r)
    for (int m = 0; m < MR; ++m) { acc[r][m] = _mm512_setzero_ps(); off[r][m] = 0.f; }
  for (int64_t g = 0; g < ng; ++g) {
    __m512 gacc[TILE][MR];
    for (int r = 0; r < TILE; ++r)
      for (int m = 0; m < MR; ++m) gacc[r][m] = _mm512_setzero_ps();
    for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
      __m512 xlo[MR], xhi[MR];
      for (int m = 0; m < MR; ++m) {
        xlo[m] = _mm512_loadu_ps(x + m * K + k);
        xhi[m] = _mm512_loadu_ps(x + m * K + k + 16);
      }
      for (int r = 0; r < TILE; ++r) {
        if (r >= nt) break;
        const __m128i b = _mm_loadu_si128((const __m128i*)(w + (n0 + r) * (K / 2) + k / 2));
        const __m512i v = _mm512_cvtepu8_epi32(b);
        const __m512 lo = _mm512_cvtepi32_ps(_mm512_and_si512(v, low));
        const __m512 hi = _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4));
        for (int m = 0; m < MR; ++m) {
          gacc[r][m] = _mm512_fmadd_ps(lo, xlo[m], gacc[r][m]);
          gacc[r][m] = _mm512_fmadd_ps(hi, xhi[m], gacc[r][m]);
        }
      }
    }
    for (int r = 0; r < nt; ++r) {
      const int64_t n = n0 + r;
      const __m512 s = _mm512_set1_ps(scale[n * ng + g]);
      const float o = offset[n * ng + g];
      for (int m = 0; m < MR; ++m) {
        acc[r][m] = _mm512_fmadd_ps(gacc[r][m], s, acc[r][m]);
        off[r][m] += o * xsum[m * ng + g];
      }
    }
  }
  for (int r = 0; r < nt; ++r) {
    const int64_t n = n0 + r;
    const float b = bias ? bias[n] : 0.f;
    for (int m = 0; m < MR; ++m) out[m * N + n] = hsum(acc[r][m]) + off[r][m] + b;
  }
}
#else
// Portable fallbacks (scalar decode, compiler-vectorized dots); same contracts.
struct DecodeInt8 {
  static inline float one(uint8_t b) { return (float)(int8_t)b; }
};
struct DecodeFp8 {
  static inline float one(uint8_t b) {
    uint32_t bits = ((uint32_t)(b & 0x80) << 24) | ((uint32_t)(b & 0x7F) << 20);
    float f;
    std::memcpy(&f, &bits, 4);
    return f * 1.329227995784916e36f;
  }
};

template <typename Decode, int MR, int TILE>
void byte_tile(const float* x, int64_t K, const uint8_t* w, const float* scale, const float* bias,
               float* out, int64_t N, int64_t n0, int64_t nt) {
  for (int64_t r = 0; r < nt; ++r) {
    const int64_t n = n0 + r;
    for (int m = 0; m < MR; ++m) {
      float s = 0.f;
      for (int64_t k = 0; k < K; ++k) s += x[m * K + k] * Decode::one(w[n * K + k]);
      out[m * N + n] = s * scale[n] + (bias ? bias[n] : 0.f);
    }
  }
}

template <int MR, int TILE>
void int4_tile(const float* x, const float* xsum, int64_t K, int64_t G, const uint8_t* w,
               const float* scale, const float* offset, const float* bias, float* out, int64_t N,
               int64_t n0, int64_t nt) {
  const int64_t ng = K / G;
  for (int64_t r = 0; r < nt; ++r) {
    const int64_t n = n0 + r;
    const uint8_t* wr = w + n * (K / 2);
    for (int m = 0; m < MR; ++m) {
      float total = 0.f;
      for (int64_t g = 0; g < ng; ++g) {
        float s = 0.f;
        for (int64_t k = g * G; k < (g + 1) * G; k += 32)
          for (int i = 0; i < 16; ++i) {
            const uint8_t b = wr[k / 2 + i];
            s += x[m * K + k + i] * (float)(b & 0xF) + x[m * K + k + 16 + i] * (float)(b >> 4);
          }
        total += s * scale[n * ng + g] + offset[n * ng + g] * xsum[m * ng + g];
      }
      out[m * N + n] = total + (bias ? bias[n] : 0.f);
    }
  }
}
#endif

// Dequantize weight rows [n0, n0 + nr) into dst [nr, K] fp32 (kind 0 int8, 1 fp8, 2 int4).
void dequant_rows(int kind, const uint8_t* w, const float* scale, const float* offset, int64_t K,
                  int64_t G, int64_t n0, int64_t nr, float* dst) {
  at::parallel_for(0, nr, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = n0 + r;
      float* d = dst + r * K;
      if (kind == 2) {
        const int64_t ng = K / G;
        const uint8_t* wr = w + n * (K / 2);
        for (int64_t g = 0; g < ng; ++g) {
          const float sc = scale[n * ng + g], of = offset[n * ng + g];
          for (int64_t k = g * G; k < (g + 1) * G; k += 32) {
#if defined(__AVX512F__) && defined(__AVX512BW__)
            const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(wr + k / 2)));
            const __m512 s = _mm512_set1_ps(sc), o = _mm512_set1_ps(of);
            _mm512_storeu_ps(d + k, _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(_mm512_and_si512(v, _mm512_set1_epi32(0xF))), s, o));
            _mm512_storeu_ps(d + k + 16, _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(_mm512_srli_epi32(v, 4)), s, o));
#else
            for (int i = 0; i < 16; ++i) {
              const uint8_t b = wr[k / 2 + i];
              d[k + i] = (float)(b & 0xF) * sc + of;
              d[k + 16 + i] = (float)(b >> 4) * sc + of;
            }
#endif
          }
        }
        continue;
      }
      const uint8_t* wr = w + n * K;
      const float sc = scale[n];
#if defined(__AVX512F__) && defined(__AVX512BW__)
      const __m512 s = _mm512_set1_ps(sc);
      for (int64_t k = 0; k < K; k += 16) {
        const int64_t left = K - k;
        const __mmask16 mask = left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
        const __m128i b = _mm_maskz_loadu_epi8(mask, wr + k);
        const __m512 f = kind == 0 ? DecodeInt8::run(b) : DecodeFp8::run(b);
        _mm512_mask_storeu_ps(d + k, mask, _mm512_mul_ps(f, s));
      }
#else
      for (int64_t k = 0; k < K; ++k)
        d[k] = (kind == 0 ? DecodeInt8::one(wr[k]) : DecodeFp8::one(wr[k])) * sc;
#endif
    }
  });
}

// Output rows across torch's intra-op threads in tiles of TILE; activation rows in chunks of
// at most MAXR (each chunk re-reads the weights once).
template <int TILE, typename Fn>
void parallel_tiles(int64_t M, int64_t N, int maxr, Fn&& fn) {
  const int64_t tiles = (N + TILE - 1) / TILE;
  for (int64_t m0 = 0; m0 < M; m0 += maxr) {
    const int mr = (int)std::min<int64_t>(maxr, M - m0);
    at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t n0 = t * TILE;
        fn(m0, mr, n0, std::min<int64_t>(TILE, N - n0));
      }
    });
  }
}

void check_x_bias(const torch::Tensor& x, const torch::Tensor& bias, int64_t N) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "quant_linear_cpu: x must be contiguous fp32 [M, K]");
  TORCH_CHECK(bias.numel() == 0 || (bias.scalar_type() == torch::kFloat32 && bias.numel() == N &&
                                    bias.is_contiguous()),
              "quant_linear_cpu: bias must be fp32 [N] (or empty)");
}

template <typename Decode>
torch::Tensor byte_linear(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& scale,
                          const torch::Tensor& bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  check_x_bias(x, bias, N);
  TORCH_CHECK(w.element_size() == 1 && w.is_contiguous() && w.dim() == 2 && w.size(1) == K,
              "quant_linear_cpu: w must be a contiguous 1-byte [N, K] tensor");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.numel() == N && scale.is_contiguous(),
              "quant_linear_cpu: scale must be fp32 [N]");
  auto out = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const uint8_t* wp = static_cast<const uint8_t*>(w.data_ptr());
  const float* sp = scale.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  constexpr int T = 4;
  parallel_tiles<T>(M, N, kMaxRows, [&](int64_t m0, int mr, int64_t n0, int64_t nt) {
    const float* xm = xp + m0 * K;
    float* om = op + m0 * N;
    switch (mr) {
      case 1: byte_tile<Decode, 1, T>(xm, K, wp, sp, bp, om, N, n0, nt); break;
      case 2: byte_tile<Decode, 2, T>(xm, K, wp, sp, bp, om, N, n0, nt); break;
      case 3: byte_tile<Decode, 3, T>(xm, K, wp, sp, bp, om, N, n0, nt); break;
      default: byte_tile<Decode, 4, T>(xm, K, wp, sp, bp, om, N, n0, nt); break;
    }
  });
  return out;
}

}  // namespace

torch::Tensor int8_linear(torch::Tensor x, torch::Tensor w, torch::Tensor scale, torch::Tensor bias) {
  TORCH_CHECK(w.scalar_type() == torch::kInt8, "int8_linear: w must be int8");
  return byte_linear<DecodeInt8>(x, w, scale, bias);
}

torch::Tensor fp8_linear(torch::Tensor x, torch::Tensor w, torch::Tensor scale, torch::Tensor bias) {
  TORCH_CHECK(w.scalar_type() == torch::kUInt8,
              "fp8_linear: w must be float8_e4m3fn codes viewed as uint8");
  return byte_linear<DecodeFp8>(x, w, scale, bias);
}

torch::Tensor int4_linear(torch::Tensor x, torch::Tensor w, torch::Tensor scale,
                          torch::Tensor offset, int64_t group_size, torch::Tensor bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0), G = group_size;
  check_x_bias(x, bias, N);
  TORCH_CHECK(K % 32 == 0 && G % 32 == 0 && K % G == 0,
              "int4_linear: needs K % 32 == 0 and a group size that is a multiple of 32 dividing K");
  TORCH_CHECK(w.scalar_type() == torch::kUInt8 && w.is_contiguous() && w.size(1) == K / 2,
              "int4_linear: w must be contiguous uint8 [N, K/2]");
  const int64_t ng = K / G;
  for (const auto* t : {&scale, &offset})
    TORCH_CHECK(t->scalar_type() == torch::kFloat32 && t->is_contiguous() && t->dim() == 2 &&
                    t->size(0) == N && t->size(1) == ng,
                "int4_linear: scale/offset must be contiguous fp32 [N, K/G]");
  auto xsum = x.view({M, ng, G}).sum(-1).contiguous();  // [M, ng]: multiplies the offsets
  auto out = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const float* xs = xsum.data_ptr<float>();
  const uint8_t* wp = w.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* fp = offset.data_ptr<float>();
  const float* bp = bias.numel() ? bias.data_ptr<float>() : nullptr;
  float* op = out.data_ptr<float>();
  // two activation rows per pass keep acc + gacc (2 x TILE x MR zmm) within the 32 registers
  constexpr int T = 4;
  parallel_tiles<T>(M, N, 2, [&](int64_t m0, int mr, int64_t n0, int64_t nt) {
    const float* xm = xp + m0 * K;
    const float* xsm = xs + m0 * ng;
    float* om = op + m0 * N;
    if (mr == 1)
      int4_tile<1, T>(xm, xsm, K, G, wp, sp, fp, bp, om, N, n0, nt);
    else
      int4_tile<2, T>(xm, xsm, K, G, wp, sp, fp, bp, om, N, n0, nt);
  });
  return out;
}

// Larger batches: dequantize a chunk of weight rows (~1 MB of fp32, stays in L2) and let
// the BLAS GEMM consume it, chunk after chunk. Weight bytes are read once per call and the
// fp32 copy never exists in full; compute runs at fp32 GEMM speed.
torch::Tensor dequant_linear(torch::Tensor x, torch::Tensor w, torch::Tensor scale,
                             torch::Tensor offset, int64_t kind, int64_t group_size,
                             torch::Tensor bias) {
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  check_x_bias(x, bias, N);
  TORCH_CHECK(kind >= 0 && kind <= 2, "dequant_linear: kind must be 0 (int8), 1 (fp8) or 2 (int4)");
  TORCH_CHECK(w.element_size() == 1 && w.is_contiguous() && w.dim() == 2 &&
                  w.size(1) == (kind == 2 ? K / 2 : K),
              "dequant_linear: w must be a contiguous 1-byte [N, K] ([N, K/2] for int4) tensor");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat32 && scale.is_contiguous(),
              "dequant_linear: scale must be contiguous fp32");
  if (kind == 2) {
    TORCH_CHECK(K % 32 == 0 && group_size % 32 == 0 && K % group_size == 0 &&
                    scale.numel() == N * (K / group_size) && offset.numel() == scale.numel() &&
                    offset.is_contiguous() && offset.scalar_type() == torch::kFloat32,
                "dequant_linear: int4 needs K % 32 == 0, group % 32 == 0, fp32 scale/offset [N, K/G]");
  } else {
    TORCH_CHECK(scale.numel() == N, "dequant_linear: scale must be fp32 [N]");
  }
  const int64_t chunk = std::max<int64_t>(16, std::min<int64_t>(N, (1 << 18) / K));
  auto buf = torch::empty({chunk, K}, x.options());
  auto out = torch::empty({M, N}, x.options());
  const uint8_t* wp = static_cast<const uint8_t*>(w.data_ptr());
  const float* op = kind == 2 ? offset.data_ptr<float>() : nullptr;
  for (int64_t n0 = 0; n0 < N; n0 += chunk) {
    const int64_t nc = std::min(chunk, N - n0);
    dequant_rows((int)kind, wp, scale.data_ptr<float>(), op, K, group_size, n0, nc,
                 buf.data_ptr<float>());
    out.narrow(1, n0, nc).copy_(at::mm(x, buf.narrow(0, 0, nc).t()));
  }
  if (bias.numel()) out.add_(bias);
  return out;
}

// Dynamic per-row quantize + dequantize of activations, what a W8A8 / FP8 GEMM sees of x:
// scale = amax / QMAX (127 or 448), q = round_half_even(x / scale) (int8, clamped) or the
// RTNE e4m3 cast (fp8), out = q * scale. Bit-exact with infer_kernels' quantize_last_dim
// followed by q.float() * scale; one call instead of a dozen small torch ops per layer.
torch::Tensor fake_quant_rows(torch::Tensor x, bool fp8) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(),
              "fake_quant_rows: x must be contiguous fp32 [M, K]");
  const int64_t M = x.size(0), K = x.size(1);
  const float qmax = fp8 ? 448.f : 127.f;
  auto out = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  float* op = out.data_ptr<float>();
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = xp + m * K;
    float* orow = op + m * K;
    float amax = 0.f;
    for (int64_t k = 0; k < K; ++k) amax = std::max(amax, std::fabs(xr[k]));
    const float scale = amax / qmax;
    const float denom = scale > 0.f ? scale : 1.f;
    for (int64_t k = 0; k < K; ++k) {
      const float y = xr[k] / denom;
      float q;
      if (fp8)
        q = static_cast<float>(c10::Float8_e4m3fn(std::min(std::max(y, -qmax), qmax)));
      else
        q = std::min(std::max(std::nearbyint(y), -qmax), qmax);
      orow[k] = q * scale;
    }
  }
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("dequant_linear", &dequant_linear, "chunked dequantize + GEMM for larger batches (fp32, CPU)");
  m.def("fake_quant_rows", &fake_quant_rows, "per-row dynamic int8 / fp8 quantize-dequantize (fp32, CPU)");
  m.def("int8_linear", &int8_linear, "x @ (w_int8 * scale).T + bias (fp32, CPU)");
  m.def("fp8_linear", &fp8_linear, "x @ (float(w_e4m3) * scale).T + bias (fp32, CPU)");
  m.def("int4_linear", &int4_linear, "x @ (q4 * scale + offset).T + bias, group-wise (fp32, CPU)");
}
