// The model's pointwise ops on CPU in one call each: RMSNorm, residual add + RMSNorm, SwiGLU
// activation and rotary embedding (neox layout). fp32, bf16 and fp16 activations; the math is
// fp32 inside.
//
// Why a kernel: in single-stream decode each of these ops touches one row of a few hundred
// elements, so its cost is the number of aten ops it is made of (an RMSNorm is five: pow, mean,
// add, rsqrt, mul), not the arithmetic. Each function here is one call from Python.
//
// Numerics follow the torch paths of infer.layers.ops op by op, so the two agree to rounding:
//   rms_norm:  fp32: x * rsqrt(mean(x^2) + eps) * w.  bf16/fp16: y = round(x * rsqrt(...)) then
//              round(w * y) (the cast before the weight, as the reference does). Only the order of
//              the sum of squares differs from torch's.
//   fused_add_rms_norm: residual = round(x + residual); then rms_norm(residual).
//   silu_and_mul: round(round(silu(g)) * u) (silu(g) = g / (1 + exp(-g))); fp32 takes exp from
//              vec_math.h's vexp (within ~1e-7 relative of expf), one vector (16 lanes with
//              AVX-512, 8 with AVX2) at a time; the tail past the last full vector uses expf.
//   rotary: cos/sin gathered from the fp32 table at each token's position and rounded to the
//           activation dtype; out = round(round(x*cos) + round(rot(x)*sin)) with rot the
//           rotate-half partner (sign folded into sin). Built with -ffp-contract=off, so in fp32
//           this is the same sequence of roundings as the torch path (no fused multiply-add).
// Rows are independent; they are split over torch's intra-op threads only when there are many
// (a decode step's single row runs inline, without any threading cost).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <tuple>
#include <type_traits>

#include "entry_points.h"
#include "vec_math.h"

namespace {

// Elements per parallel task: below this many a call runs on the calling thread.
constexpr int64_t kGrainElems = 1 << 15;

// Row r of a tensor viewed as rows of its last dim (1-3 dims, last dim contiguous).
struct Rows {
  int64_t n = 1, inner = 1, s_outer = 0, s_inner = 0;  // rows = n * inner
  explicit Rows(const at::Tensor& t) {
    const int64_t d = t.dim();
    if (d == 3) {
      n = t.size(0); inner = t.size(1); s_outer = t.stride(0); s_inner = t.stride(1);
    } else if (d == 2) {
      n = t.size(0); s_outer = t.stride(0);
    }
  }
  int64_t count() const { return n * inner; }
  int64_t offset(int64_t r) const { return (r / inner) * s_outer + (r % inner) * s_inner; }
};

// A view the kernels can address with Rows: 1-3 dims with a unit-stride last dim, else a copy.
at::Tensor rowable(const at::Tensor& t) {
  if (t.dim() >= 1 && t.dim() <= 3 && t.stride(-1) == 1) return t;
  return t.contiguous().reshape({-1, t.size(-1)});
}

template <typename F>
void for_rows(int64_t rows, int64_t row_elems, const F& f) {
  const int64_t grain = std::max<int64_t>(1, kGrainElems / std::max<int64_t>(1, row_elems));
  if (rows <= grain) {
    f(0, rows);
  } else {
    at::parallel_for(0, rows, grain, f);
  }
}

template <typename T>
inline float sum_squares(const T* x, int64_t h) {
  // 16 independent partial sums: a reduction the compiler vectorizes without reassociating
  float acc[16] = {0.f};
  int64_t i = 0;
  for (; i + 16 <= h; i += 16) {
#pragma omp simd
    for (int l = 0; l < 16; ++l) {
      const float v = float(x[i + l]);
      acc[l] += v * v;
    }
  }
  for (int l = 0; i + l < h; ++l) {
    const float v = float(x[i + l]);
    acc[l] += v * v;
  }
  float s = 0.f;
  for (int l = 0; l < 16; ++l) s += acc[l];
  return s;
}

template <typename T>
inline void norm_row(const T* x, const T* w, T* out, int64_t h, float eps) {
  const float r = 1.f / std::sqrt(sum_squares(x, h) / float(h) + eps);
  if constexpr (std::is_same_v<T, float>) {
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) out[i] = (x[i] * r) * w[i];
  } else {
#pragma omp simd
    for (int64_t i = 0; i < h; ++i) out[i] = T(float(w[i]) * float(T(float(x[i]) * r)));
  }
}

void check_norm_args(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK(x.device().is_cpu(), "cpu_model_ops: x must be on CPU");
  TORCH_CHECK(x.dim() >= 1, "cpu_model_ops: x needs at least one dim");
  TORCH_CHECK(w.dim() == 1 && w.size(0) == x.size(-1) && w.is_contiguous(),
              "cpu_model_ops: weight must be contiguous [H] with H = x.size(-1)");
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "cpu_model_ops: weight dtype ", w.scalar_type(),
              " differs from x dtype ", x.scalar_type());
}

// Calls f(scalar_t{}) for x's dtype (a function, not a macro: the bodies hold pragmas).
template <typename F>
void dispatch(at::ScalarType dtype, const char* name, const F& f) {
  switch (dtype) {
    case at::kFloat: f(float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}); break;
    case at::kHalf: f(c10::Half{}); break;
    default: TORCH_CHECK(false, name, ": unsupported dtype ", dtype, " (float32, bfloat16, float16)");
  }
}

}  // namespace

// x [..., H] (any strides with a unit last stride for up to 3 dims), weight [H] -> new [..., H].
at::Tensor rms_norm(const at::Tensor& x_in, const at::Tensor& w, double eps) {
  check_norm_args(x_in, w);
  const at::Tensor x = rowable(x_in);
  const int64_t h = x.size(-1);
  at::Tensor out = at::empty(x_in.sizes(), x_in.options());
  const Rows rx(x);
  dispatch(x.scalar_type(), "rms_norm", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_rows(rx.count(), h, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) norm_row(xp + rx.offset(r), wp, op + r * h, h, float(eps));
    });
  });
  return out;
}

// x, residual [..., H] -> (rms_norm(x + residual), x + residual), both new tensors.
std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm(const at::Tensor& x_in, const at::Tensor& res_in,
                                                      const at::Tensor& w, double eps) {
  check_norm_args(x_in, w);
  TORCH_CHECK(res_in.sizes() == x_in.sizes() && res_in.scalar_type() == x_in.scalar_type(),
              "fused_add_rms_norm: residual must match x in shape and dtype");
  const at::Tensor x = rowable(x_in), res = rowable(res_in);
  const int64_t h = x.size(-1);
  at::Tensor out = at::empty(x_in.sizes(), x_in.options());
  at::Tensor new_res = at::empty(x_in.sizes(), x_in.options());
  const Rows rx(x), rr(res);
  dispatch(x.scalar_type(), "fused_add_rms_norm", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    const scalar_t* rp = res.data_ptr<scalar_t>();
    const scalar_t* wp = w.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* np = new_res.data_ptr<scalar_t>();
    for_rows(rx.count(), h, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* xr = xp + rx.offset(r);
        const scalar_t* rr_ = rp + rr.offset(r);
        scalar_t* nr = np + r * h;
#pragma omp simd
        for (int64_t i = 0; i < h; ++i) nr[i] = scalar_t(float(xr[i]) + float(rr_[i]));
        norm_row(nr, wp, op + r * h, h, float(eps));
      }
    });
  });
  return {out, new_res};
}

// x [..., 2I] -> silu(x[..., :I]) * x[..., I:]  [..., I] (new tensor).
at::Tensor silu_and_mul(const at::Tensor& x_in) {
  TORCH_CHECK(x_in.device().is_cpu() && x_in.dim() >= 1 && x_in.size(-1) % 2 == 0,
              "silu_and_mul: x must be a CPU tensor [..., 2I]");
  const at::Tensor x = rowable(x_in);
  const int64_t i2 = x.size(-1), n = i2 / 2;
  std::vector<int64_t> shape(x_in.sizes().begin(), x_in.sizes().end());
  shape.back() = n;
  at::Tensor out = at::empty(shape, x_in.options());
  const Rows rx(x);
  dispatch(x.scalar_type(), "silu_and_mul", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* op = out.data_ptr<scalar_t>();
    for_rows(rx.count(), i2, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const scalar_t* g = xp + rx.offset(r);
        const scalar_t* u = g + n;
        scalar_t* o = op + r * n;
        int64_t i = 0;
        if constexpr (std::is_same_v<scalar_t, float>) {
          // a vector at a time with the vector exp (expf is a scalar libm call per element)
          using infer_vec::vf;
          for (; i + infer_vec::kLanes <= n; i += infer_vec::kLanes) {
            const vf gv = infer_vec::load(g + i);
            const vf s = gv / (1.f + infer_vec::vexp(-gv));
            infer_vec::store(o + i, s * infer_vec::load(u + i));
          }
        }
        for (; i < n; ++i) {
          const float gv = float(g[i]);
          const scalar_t s = scalar_t(gv / (1.f + std::exp(-gv)));
          o[i] = scalar_t(float(s) * float(u[i]));
        }
      }
    });
  });
  return out;
}

// x [T, Hh, D] (unit last stride; rotated IN PLACE and returned), rope = (positions int64 [T],
// cos_sin fp32 [max_pos, rd]: first half cos, second half sin), rd <= D even: dims >= rd kept.
at::Tensor rotary(at::Tensor x, const std::tuple<at::Tensor, at::Tensor>& rope) {
  const at::Tensor& pos = std::get<0>(rope);
  const at::Tensor& cs = std::get<1>(rope);
  TORCH_CHECK(x.device().is_cpu() && x.dim() == 3 && x.stride(2) == 1,
              "rotary: x must be a CPU tensor [T, heads, D] with a unit last stride");
  TORCH_CHECK(pos.scalar_type() == at::kLong && pos.dim() == 1 && pos.size(0) == x.size(0),
              "rotary: positions must be int64 [T] with T = x.size(0)");
  TORCH_CHECK(cs.scalar_type() == at::kFloat && cs.dim() == 2 && cs.is_contiguous() &&
                  cs.size(1) % 2 == 0 && cs.size(1) <= x.size(2),
              "rotary: cos_sin must be contiguous fp32 [max_pos, rd] with rd even and <= D");
  const at::Tensor p = pos.contiguous();
  const int64_t t = x.size(0), nh = x.size(1), half = cs.size(1) / 2, max_pos = cs.size(0);
  const int64_t st = x.stride(0), sh = x.stride(1);
  const int64_t* pp = p.data_ptr<int64_t>();
  const float* csp = cs.data_ptr<float>();
  dispatch(x.scalar_type(), "rotary", [&](auto tag) {
    using scalar_t = decltype(tag);
    scalar_t* xp = x.data_ptr<scalar_t>();
    for_rows(t, nh * 2 * half, [&](int64_t b, int64_t e) {
      float c[512], s[512];  // rd/2 <= 512 (head dims up to 1024)
      TORCH_CHECK(half <= 512, "rotary: rotary dim above 1024 is not supported");
      for (int64_t i = b; i < e; ++i) {
        const int64_t q = pp[i];
        TORCH_CHECK(q >= 0 && q < max_pos, "rotary: position ", q, " outside [0, ", max_pos, ")");
        const float* row = csp + q * 2 * half;
        // factors rounded to the activation dtype, as the torch path casts them
        for (int64_t j = 0; j < half; ++j) {
          c[j] = float(scalar_t(row[j]));
          s[j] = float(scalar_t(row[half + j]));
        }
        for (int64_t hh = 0; hh < nh; ++hh) {
          scalar_t* v = xp + i * st + hh * sh;
#pragma omp simd
          for (int64_t j = 0; j < half; ++j) {
            const float a = float(v[j]), bb = float(v[j + half]);
            const float lo = float(scalar_t(a * c[j])) + float(scalar_t(bb * -s[j]));
            const float hi = float(scalar_t(bb * c[j])) + float(scalar_t(a * s[j]));
            v[j] = scalar_t(lo);
            v[j + half] = scalar_t(hi);
          }
        }
      }
    });
  });
  return x;
}

// Index of the first maximum of each row of fp32 logits [N, V] (unit last stride) -> int64
// [N], as torch.argmax(-1) returns it: the first of equal maxima, and a NaN counts as above
// everything (the first NaN's index). torch's CPU argmax carries the index through a scalar
// reduction (~150 us for one 49,152-wide row here); this is a vectorized max, then a scan for
// the first element equal to it, block by block (both read the row from L1/L2).
at::Tensor argmax_rows(const at::Tensor& logits) {
  TORCH_CHECK(logits.device().is_cpu() && logits.scalar_type() == at::kFloat && logits.dim() == 2 &&
                  logits.stride(1) == 1 && logits.size(1) > 0,
              "argmax_rows: logits must be a CPU fp32 [N, V] tensor (V > 0) with a unit last stride");
  const int64_t n = logits.size(0), v = logits.size(1), rs = logits.stride(0);
  at::Tensor out = at::empty({n}, logits.options().dtype(at::kLong));
  const float* lp = logits.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  using infer_vec::kLanes;
  using infer_vec::vf;
  using infer_vec::vi;
  for_rows(n, v, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      const float* x = lp + r * rs;
      const int64_t vend = v / kLanes * kLanes;
      // pass 1: the maximum, and whether any NaN (x != x) is present
      vf vm = infer_vec::splat(-std::numeric_limits<float>::infinity());
      vi vnan{};
      for (int64_t i = 0; i < vend; i += kLanes) {
        const vf a = infer_vec::load(x + i);
        vnan |= a != a;
        vm = a > vm ? a : vm;
      }
      float m = infer_vec::hmax(vm);
      bool nan = false;
      for (int l = 0; l < kLanes; ++l) nan |= vnan[l] != 0;
      for (int64_t i = vend; i < v; ++i) {
        nan |= x[i] != x[i];
        m = x[i] > m ? x[i] : m;
      }
      // pass 2: the first element equal to it (or the first NaN), a vector at a time
      const vf vmax = infer_vec::splat(m);
      int64_t at = vend;
      for (int64_t i = 0; i < vend; i += kLanes) {
        const vf a = infer_vec::load(x + i);
        const vi hit = nan ? (a != a) : (a == vmax);
        bool any = false;
        for (int l = 0; l < kLanes; ++l) any |= hit[l] != 0;
        if (any) {
          at = i;
          break;
        }
      }
      while (at < v && (nan ? x[at] == x[at] : x[at] != m)) ++at;
      op[r] = at < v ? at : 0;
    }
  });
  return out;
}

// for the decoder stack (entry_points.h): the same functions, called without Python
const infer_ep::ModelOps kEntryPoints{infer_ep::kVersion, &rms_norm, &fused_add_rms_norm,
                                      &silu_and_mul, &rotary};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("entry_points", [] { return reinterpret_cast<int64_t>(&kEntryPoints); },
        "address of this extension's infer_ep::ModelOps table");
  m.def("rms_norm", &rms_norm, "RMSNorm over the last dim (new tensor)");
  m.def("fused_add_rms_norm", &fused_add_rms_norm, "(rms_norm(x + residual), x + residual)");
  m.def("silu_and_mul", &silu_and_mul, "silu(x[..., :I]) * x[..., I:]");
  m.def("rotary", &rotary, "neox rotary embedding of x [T, heads, D] in place");
  m.def("argmax_rows", &argmax_rows, "first index of each row's maximum (NaN counts as maximum)");
}
