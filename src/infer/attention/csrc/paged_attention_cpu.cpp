// Paged attention for CPU (fp32): every query token of every sequence attends, causally,
// to its sequence's cached keys, read in place from the block-table KV cache.
//
// Why a kernel: in torch, decode attention must gather each sequence's blocks into a padded
// dense tensor (and expand GQA heads) before SDPA, moving ~3-6x the KV bytes. Here every
// K/V row is read exactly once per (token, kv head), with the G query heads that share it
// processed together, and online softmax per block (flash-decoding style).
//
// Layouts: q, out [T, Hq, D]; k_cache, v_cache [NB, BS, Hk, D]; block_tables int32 [B, MB];
// query_start_loc int32 [B+1]; context_lens int32 [B] (cached + new tokens). Query i of
// sequence b (0-based among its n new tokens) sits at position c - n + i and sees keys
// 0..c-n+i.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int kMaxGroup = 16;

inline float dot(const float* __restrict a, const float* __restrict b, int d) {
  float s = 0.f;
#pragma omp simd reduction(+ : s)
  for (int i = 0; i < d; ++i) s += a[i] * b[i];
  return s;
}

inline void axpy(float* __restrict y, float a, const float* __restrict x, int d) {
#pragma omp simd
  for (int i = 0; i < d; ++i) y[i] += a * x[i];
}

inline void scale_vec(float* __restrict y, float a, int d) {
#pragma omp simd
  for (int i = 0; i < d; ++i) y[i] *= a;
}

}  // namespace

torch::Tensor paged_attention_fwd(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                  torch::Tensor block_tables, torch::Tensor query_start_loc,
                                  torch::Tensor context_lens, double scale) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k_cache.dtype() == torch::kFloat32 &&
                  v_cache.dtype() == torch::kFloat32,
              "paged_attention_cpu: fp32 only");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "paged_attention_cpu: contiguous q/k_cache/v_cache required");
  TORCH_CHECK(block_tables.dtype() == torch::kInt32 && query_start_loc.dtype() == torch::kInt32 &&
                  context_lens.dtype() == torch::kInt32,
              "paged_attention_cpu: int32 metadata required");
  auto bt = block_tables.contiguous();
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t BS = k_cache.size(1), Hk = k_cache.size(2);
  const int64_t B = context_lens.size(0), MB = bt.size(1);
  TORCH_CHECK(Hq % Hk == 0, "num_heads must be a multiple of num_kv_heads");
  const int64_t G = Hq / Hk;
  TORCH_CHECK(G <= kMaxGroup, "GQA group too large");
  auto out = torch::empty_like(q);
  const float* qp = q.data_ptr<float>();
  const float* kp = k_cache.data_ptr<float>();
  const float* vp = v_cache.data_ptr<float>();
  const int32_t* btp = bt.data_ptr<int32_t>();
  const int32_t* qsl = query_start_loc.data_ptr<int32_t>();
  const int32_t* ctx = context_lens.data_ptr<int32_t>();
  float* op = out.data_ptr<float>();

  // token -> sequence map, so work can be split over (token, kv head) pairs evenly
  std::vector<int32_t> seq_of(T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = qsl[b]; t < qsl[b + 1]; ++t) seq_of[t] = static_cast<int32_t>(b);
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, T * Hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(kMaxGroup * D);
    std::vector<float> scores(kMaxGroup * BS);
    float m[kMaxGroup], l[kMaxGroup];
    for (int64_t w = begin; w < end; ++w) {
      const int64_t t = w / Hk, h = w % Hk;
      const int64_t b = seq_of[t];
      const int64_t n = qsl[b + 1] - qsl[b];
      const int64_t limit = ctx[b] - n + (t - qsl[b]) + 1;  // keys [0, limit)
      const float* qrow = qp + (t * Hq + h * G) * D;
      std::fill(acc.begin(), acc.begin() + G * D, 0.f);
      for (int g = 0; g < G; ++g) {
        m[g] = -std::numeric_limits<float>::infinity();
        l[g] = 0.f;
      }
      const int64_t nblocks = (limit + BS - 1) / BS;
      for (int64_t jb = 0; jb < nblocks; ++jb) {
        const int64_t blk = btp[b * MB + jb];
        const int64_t nk = std::min<int64_t>(BS, limit - jb * BS);
        const float* kb = kp + (blk * BS * Hk + h) * D;
        const float* vb = vp + (blk * BS * Hk + h) * D;
        // scores for the block, key-major so each K row is loaded once for all G heads
        for (int64_t j = 0; j < nk; ++j) {
          const float* krow = kb + j * Hk * D;
          for (int g = 0; g < G; ++g) scores[g * BS + j] = dot(qrow + g * D, krow, D) * fscale;
        }
        for (int g = 0; g < G; ++g) {
          float* sg = scores.data() + g * BS;
          float bmax = -std::numeric_limits<float>::infinity();
          for (int64_t j = 0; j < nk; ++j) bmax = std::max(bmax, sg[j]);
          const float new_m = std::max(m[g], bmax);
          const float corr = std::exp(m[g] - new_m);  // 0 on the first block (m = -inf)
          l[g] *= corr;
          scale_vec(acc.data() + g * D, corr, D);
          m[g] = new_m;
          float lsum = 0.f;
#pragma omp simd reduction(+ : lsum)
          for (int64_t j = 0; j < nk; ++j) {
            sg[j] = std::exp(sg[j] - new_m);
            lsum += sg[j];
          }
          l[g] += lsum;
        }
        for (int64_t j = 0; j < nk; ++j) {
          const float* vrow = vb + j * Hk * D;
          for (int g = 0; g < G; ++g) axpy(acc.data() + g * D, scores[g * BS + j], vrow, D);
        }
      }
      for (int g = 0; g < G; ++g) {
        float* o = op + (t * Hq + h * G + g) * D;
        const float inv = l[g] > 0.f ? 1.f / l[g] : 0.f;
        for (int64_t i = 0; i < D; ++i) o[i] = acc[g * D + i] * inv;
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("paged_attention_fwd", &paged_attention_fwd, "paged causal attention (CPU, fp32)");
}
