// Paged attention for CPU (fp32): every query token of every sequence attends, causally,
// to its sequence's cached keys, read in place from the block-table KV cache.
//
// Why a kernel: in torch, decode attention must gather each sequence's blocks into a padded
// dense tensor (and expand GQA heads) before SDPA, moving several times the KV bytes. Here
// each K/V block is read once per (token, kv head), the G query heads sharing it are
// processed together, and softmax is online per block (flash-decoding style).
//
// Cache layout (chosen so the inner loops are unit-stride SIMD with no horizontal sums):
//   k_cache [NB, Hk, D, BS]  (keys transposed within a block: scores for BS keys = BS lanes)
//   v_cache [NB, Hk, BS, D]
// q, out [T, Hq, D]; block_tables int32 [B, MB]; query_start_loc int32 [B+1];
// context_lens int32 [B] (cached + new tokens). Query i of sequence b (0-based among its n
// new tokens) sits at position c - n + i and sees keys 0..c-n+i.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace {

constexpr int kMaxGroup = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

void check_common(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k_cache.dtype() == torch::kFloat32 &&
                  v_cache.dtype() == torch::kFloat32,
              "paged_attention_cpu: fp32 only");
  TORCH_CHECK(q.is_contiguous() && k_cache.is_contiguous() && v_cache.is_contiguous(),
              "paged_attention_cpu: contiguous tensors required");
}

}  // namespace

// Write k/v [T, Hk, D] into their slots (slot = block * BS + offset; < 0 = skip).
void store_kv_fwd(torch::Tensor k, torch::Tensor v, torch::Tensor k_cache, torch::Tensor v_cache,
                  torch::Tensor slot_mapping) {
  k = k.contiguous();
  v = v.contiguous();
  check_common(k, k_cache, v_cache);
  TORCH_CHECK(slot_mapping.dtype() == torch::kInt64, "slot_mapping must be int64");
  const int64_t T = k.size(0), Hk = k.size(1), D = k.size(2), BS = k_cache.size(3);
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const int64_t* sm = slot_mapping.data_ptr<int64_t>();
  for (int64_t t = 0; t < T; ++t) {
    const int64_t slot = sm[t];
    if (slot < 0) continue;
    const int64_t blk = slot / BS, off = slot % BS;
    for (int64_t h = 0; h < Hk; ++h) {
      const float* ks = kp + (t * Hk + h) * D;
      float* kd = kc + ((blk * Hk + h) * D) * BS + off;
      for (int64_t d = 0; d < D; ++d) kd[d * BS] = ks[d];
      std::copy(vp + (t * Hk + h) * D, vp + (t * Hk + h + 1) * D, vc + ((blk * Hk + h) * BS + off) * D);
    }
  }
}

torch::Tensor paged_attention_fwd(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                  torch::Tensor block_tables, torch::Tensor query_start_loc,
                                  torch::Tensor context_lens, double scale) {
  check_common(q, k_cache, v_cache);
  TORCH_CHECK(block_tables.dtype() == torch::kInt32 && query_start_loc.dtype() == torch::kInt32 &&
                  context_lens.dtype() == torch::kInt32,
              "paged_attention_cpu: int32 metadata required");
  auto bt = block_tables.contiguous();
  const int64_t T = q.size(0), Hq = q.size(1), D = q.size(2);
  const int64_t Hk = k_cache.size(1), BS = k_cache.size(3);
  TORCH_CHECK(k_cache.size(2) == D, "k_cache must be [NB, Hk, D, BS]");
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

  // token -> sequence map, so work splits evenly over (token, kv head) pairs
  std::vector<int32_t> seq_of(T);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = qsl[b]; t < qsl[b + 1]; ++t) seq_of[t] = static_cast<int32_t>(b);
  const float fscale = static_cast<float>(scale);

  at::parallel_for(0, T * Hk, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(kMaxGroup * D), qs(kMaxGroup * D), s(kMaxGroup * BS);
    float m[kMaxGroup], l[kMaxGroup];
    for (int64_t w = begin; w < end; ++w) {
      const int64_t t = w / Hk, h = w % Hk;
      const int64_t b = seq_of[t];
      const int64_t n = qsl[b + 1] - qsl[b];
      const int64_t limit = ctx[b] - n + (t - qsl[b]) + 1;  // keys [0, limit)
      const float* qrow = qp + (t * Hq + h * G) * D;
      for (int64_t i = 0; i < G * D; ++i) qs[i] = qrow[i] * fscale;
      std::fill(acc.begin(), acc.begin() + G * D, 0.f);
      for (int g = 0; g < G; ++g) {
        m[g] = kNegInf;
        l[g] = 0.f;
      }
      const int64_t nblocks = (limit + BS - 1) / BS;
      for (int64_t jb = 0; jb < nblocks; ++jb) {
        const int64_t blk = btp[b * MB + jb];
        const int64_t nk = std::min<int64_t>(BS, limit - jb * BS);
        const float* kt = kp + (blk * Hk + h) * D * BS;  // [D][BS]
        const float* vb = vp + (blk * Hk + h) * BS * D;  // [BS][D]
        // scores: s[g][j] = sum_d q[g][d] * K^T[d][j], vectorized over the BS keys
        std::fill(s.begin(), s.begin() + G * BS, 0.f);
        for (int64_t d = 0; d < D; ++d) {
          const float* kd = kt + d * BS;
          for (int g = 0; g < G; ++g) {
            const float qv = qs[g * D + d];
            float* sg = s.data() + g * BS;
#pragma omp simd
            for (int64_t j = 0; j < BS; ++j) sg[j] += qv * kd[j];
          }
        }
        for (int g = 0; g < G; ++g) {
          float* sg = s.data() + g * BS;
          float bmax = kNegInf;
          for (int64_t j = 0; j < nk; ++j) bmax = std::max(bmax, sg[j]);
          const float new_m = std::max(m[g], bmax);
          const float corr = std::exp(m[g] - new_m);  // 0 on the first block (m = -inf)
          l[g] *= corr;
          float* ag = acc.data() + g * D;
#pragma omp simd
          for (int64_t i = 0; i < D; ++i) ag[i] *= corr;
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
          const float* vrow = vb + j * D;
          for (int g = 0; g < G; ++g) {
            const float p = s[g * BS + j];
            float* ag = acc.data() + g * D;
#pragma omp simd
            for (int64_t i = 0; i < D; ++i) ag[i] += p * vrow[i];
          }
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
  m.def("store_kv_fwd", &store_kv_fwd, "write k/v into the transposed-K paged cache (CPU, fp32)");
}
