// SIMD helpers shared by the CPU extensions, written with GCC/Clang vector extensions: a vf
// is one machine vector of fp32 lanes under -march=native: 16 lanes (AVX-512) where the CPU
// has it, else 8 (AVX2). 16-lane vectors on an AVX2 CPU are split into register pairs and
// the attention tiles, sized for 32 registers, spill: the decode kernel ran 5x slower.
// vexp's per-lane result does not depend on the width; reductions over lanes do, and so do
// loops whose scalar tail (past the last full vector) uses libm.
#pragma once

#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace infer_vec {

#if defined(__AVX512F__)
#define INFER_VEC_BYTES 64
constexpr int kVecRegs = 32;  // architectural vector registers (register tiles are sized by it)
#else
#define INFER_VEC_BYTES 32
constexpr int kVecRegs = 16;
#endif
constexpr int kLanes = INFER_VEC_BYTES / 4;

typedef float vf __attribute__((vector_size(INFER_VEC_BYTES), aligned(4)));  // unaligned loads allowed
typedef int32_t vi __attribute__((vector_size(INFER_VEC_BYTES), aligned(4)));

// lane indices 0, 1, ..., kLanes - 1
inline vi lane_ids() {
  vi v{};
  for (int i = 0; i < kLanes; ++i) v[i] = i;
  return v;
}

inline vf load(const float* p) { return *reinterpret_cast<const vf*>(p); }
inline void store(float* p, vf v) { *reinterpret_cast<vf*>(p) = v; }
inline vf splat(float x) { return vf{} + x; }

// Reductions over the lanes as a fixed tree: lane i + w added to lane i for w = kLanes/2,
// ..., 1 (the order of _mm512_reduce_add_ps, used where AVX-512 is). A row's result depends
// only on its vector, not on what else is computed beside it; a sequential sum over the
// lanes was one 16-step latency chain per call (the decode softmax's critical path).
#if defined(__AVX512F__)
inline float hmax(vf v) { return _mm512_reduce_max_ps(reinterpret_cast<__m512&>(v)); }
inline float hsum(vf v) { return _mm512_reduce_add_ps(reinterpret_cast<__m512&>(v)); }
#else
inline float hmax(vf v) {
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) v[i] = std::max(v[i], v[i + w]);
  return v[0];
}

inline float hsum(vf v) {
  for (int w = kLanes / 2; w > 0; w /= 2)
    for (int i = 0; i < w; ++i) v[i] += v[i + w];
  return v[0];
}
#endif

// e^x per lane. Cody-Waite reduction x = n ln2 + r (|r| <= ln2/2), a degree-6 polynomial for
// e^r (relative error ~1e-7, the order of libm's expf), 2^n put into the exponent bits.
// Below -87.3 the result is 0 (exactly 0 for -inf); above 88 it is +inf (the true value is
// within 2x of FLT_MAX there); NaN stays NaN. libm's expf is a scalar call per element: this
// keeps the softmax and SiLU loops in vector registers.
inline vf vexp(vf x) {
  const vi under = x < -87.3f;
  const vi over = x > 88.0f;
  x = under ? splat(-87.3f) : x;
  x = over ? splat(88.0f) : x;
  vf n = x * 1.44269504088896341f;
  n = (n + 12582912.f) - 12582912.f;  // round to nearest: add and subtract 1.5 * 2^23
  vf r = x - n * 0.693359375f;        // ln2 split in two for an exact first product
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof(scale));
  vf out = p * scale;
  out = under ? splat(0.f) : out;
  return over ? splat(__builtin_inff()) : out;
}

}  // namespace infer_vec
