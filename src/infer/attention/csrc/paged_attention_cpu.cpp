// Paged attention for CPU (fp32): every query token of every sequence attends, causally,
// to its sequence's cached keys, read in place from the block-table KV cache. One call
// serves a whole step: decodes, verify rows, prefix extensions and fresh prompts.
//
// Cache layout (chosen so the inner loops are unit-stride SIMD with no horizontal sums):
//   k_cache [NB, Hk, D, BS]  (keys transposed within a block: scores for kLanes keys = 1 vector;
//                            kLanes = 16 on AVX-512, 8 on AVX2, see vec_math.h)
//   v_cache [NB, Hk, BS, D]
// q, out [T, Hq, D]; block_tables int32 [B, MB]; query_start_loc int32 [B+1];
// context_lens int32 [B] (cached + new tokens). Query i of sequence b (0-based among its n
// new tokens) sits at position c - n + i and sees keys 0..c-n+i.
//
// Work: the rows (query token, query head) of one (sequence, kv head) are cut into tiles of
// up to kRows rows; a tile reads each kLanes-key slice of K/V once for all its rows (GQA heads
// and neighbouring prompt tokens share it), with the scores in registers (QK: one K vector
// load, one broadcast FMA per row and d) and flash-style online softmax per slice. Prefill
// is then FMA-bound instead of load/store-bound, and causal tiles stop at their last key.
// Tiles go to threads through a shared counter, longest first (causal tiles differ in cost).
// Other head dims (not 32/64/128/256) or blocks that are not a multiple of kLanes keys take a
// scalar loop, one row and one key at a time.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "entry_points.h"
#include "vec_math.h"

namespace {

using infer_vec::hmax;
using infer_vec::hsum;
using infer_vec::kLanes;
using infer_vec::kVecRegs;
using infer_vec::load;
using infer_vec::splat;
using infer_vec::store;
using infer_vec::vexp;
using infer_vec::vf;
using infer_vec::vi;

constexpr int kRows = 8;    // rows per tile: their score vectors stay in registers
constexpr int kPrefetch = 2;  // slices ahead whose K/V lines are prefetched (into L2)
constexpr int kChains = 4;    // score sums per row over d (d mod 4), added in a fixed order
constexpr int kQKRows = kVecRegs / 8;  // rows whose kChains score sums share the registers
static_assert(kChains == 4, "the score chains are added as (0 + 1) + (2 + 3)");
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

struct Row {
  const float* q;  // [D]
  float* out;      // [D]
  int32_t limit;   // keys [0, limit) are visible
};

struct Tile {
  int32_t seq, head, first, count;  // rows [first, first + count) of (seq, kv head)
  int64_t cost;
};

struct Ctx {
  const float* q;  // [T, Hq, D] with strides (qs0, qs1, 1): a view into the fused qkv row
  float* out;      // [T, Hq, D] contiguous
  const float* k;
  const float* v;
  const int32_t* bt;
  const int32_t* qsl;
  const int32_t* ctx;
  int64_t Hq, Hk, G, D, BS, MB, qs0, qs1;
  float scale;

  Row row(int64_t b, int64_t h, int64_t i) const {  // i-th row of (b, h): token i / G, head i % G
    const int64_t n = qsl[b + 1] - qsl[b];
    const int64_t t = qsl[b] + i / G;
    const int64_t hq = h * G + i % G;
    return Row{q + t * qs0 + hq * qs1, out + (t * Hq + hq) * D,
               static_cast<int32_t>(ctx[b] - n + (t - qsl[b]) + 1)};
  }
  const float* kblock(int64_t b, int64_t h, int64_t jb) const {
    return k + (static_cast<int64_t>(bt[b * MB + jb]) * Hk + h) * D * BS;
  }
  const float* vblock(int64_t b, int64_t h, int64_t jb) const {
    return v + (static_cast<int64_t>(bt[b * MB + jb]) * Hk + h) * BS * D;
  }
};

// acc[r] = acc[r] * corr[r] + sum_{j < jmax} p[r][j] V[j] for R rows, in groups of G rows
// whose accumulators (G x DV vectors) stay in registers while V streams by once per group.
// G: rows whose DV accumulators fit in 3/4 of the registers (the rest: V and p).
template <int R, int DV, int G = (kVecRegs * 3 / 4 / DV > 0 ? kVecRegs * 3 / 4 / DV : 1)>
inline void pv_rows(float (*acc)[kLanes * DV], const float (*p)[kLanes], const float* corr, const float* vb,
                    int jmax) {
  constexpr int D = kLanes * DV;
  for (int r0 = 0; r0 < R; r0 += G) {
    constexpr int kG = G < R ? G : R;
    const int n = std::min(kG, R - r0);
    vf a[kG][DV];
    for (int r = 0; r < kG; ++r)
      if (r < n)
        for (int dv = 0; dv < DV; ++dv) a[r][dv] = load(acc[r0 + r] + kLanes * dv) * corr[r0 + r];
    for (int j = 0; j < jmax; ++j) {
      vf v[DV];
      for (int dv = 0; dv < DV; ++dv) v[dv] = load(vb + j * D + kLanes * dv);
      for (int r = 0; r < kG; ++r)
        if (r < n) {
          const float pj = p[r0 + r][j];
          for (int dv = 0; dv < DV; ++dv) a[r][dv] += pj * v[dv];
        }
    }
    for (int r = 0; r < kG; ++r)
      if (r < n)
        for (int dv = 0; dv < DV; ++dv) store(acc[r0 + r] + kLanes * dv, a[r][dv]);
  }
}

// One tile of R rows, head dim D = kLanes * DV, BS a multiple of kLanes.
template <int R, int DV>
void attend_tile(const Ctx& c, int64_t b, int64_t h, int64_t first) {
  constexpr int D = kLanes * DV;
  alignas(64) float qs[R][D];
  alignas(64) float acc[R][D];
  alignas(64) float p[R][kLanes];
  float m[R], l[R];
  int32_t lim[R];
  float* outp[R];
  int32_t max_lim = 0, min_lim = std::numeric_limits<int32_t>::max();
  for (int r = 0; r < R; ++r) {
    const Row row = c.row(b, h, first + r);
    for (int d = 0; d < D; ++d) qs[r][d] = row.q[d] * c.scale;
    std::fill(acc[r], acc[r] + D, 0.f);
    m[r] = kNegInf;
    l[r] = 0.f;
    lim[r] = row.limit;
    outp[r] = row.out;
    max_lim = std::max(max_lim, row.limit);
    min_lim = std::min(min_lim, row.limit);
  }
  const vi lane = infer_vec::lane_ids();
  const int64_t BS = c.BS;
  for (int64_t k0 = 0; k0 < max_lim; k0 += kLanes) {
    const int64_t jb = k0 / BS, j0 = k0 % BS;
    const float* kt = c.kblock(b, h, jb) + j0;  // [D][BS], this slice's kLanes columns
    const float* vb = c.vblock(b, h, jb) + j0 * D;
    // the slice kPrefetch slices ahead, one K line and one V line per d below: each block
    // (4 KiB per head) starts a stream the hardware prefetcher picks up late, and issuing
    // them spread over the loop keeps the miss buffers free for the demand loads
    const int64_t k1 = k0 + kPrefetch * kLanes;
    const bool pf = k1 < max_lim;
    const float* kn = pf ? c.kblock(b, h, k1 / BS) + k1 % BS : kt;
    const float* vn = pf ? c.vblock(b, h, k1 / BS) + (k1 % BS) * D : vb;
    // scores: kChains chains per row over d (d mod kChains), added in one fixed order, the
    // same for every tile size, so a row's bits do not depend on the rows beside it (a decode
    // alone vs in a verify or prefill chunk). Rows go kQKRows at a time (their chains fill the
    // registers; a second group re-reads the slice's K from L1). One chain per row made the
    // 3-row decode tile FMA-latency-bound (4 cycles per d): with the softmax it ran at ~12 GB/s
    // of K/V from cache, and memory and compute time added up to ~7 GB/s from DRAM
    vf s[R];
    for (int r0 = 0; r0 < R; r0 += kQKRows) {
      constexpr int kG = R < kQKRows ? R : kQKRows;
      vf ch[kG][kChains];
      for (int r = 0; r < kG; ++r)
        for (int i = 0; i < kChains; ++i) ch[r][i] = vf{};
      const bool fetch = pf && r0 == 0;
      const float* kd = kt;
      for (int64_t d = 0; d < D; d += kChains, kd += kChains * BS) {
        if (fetch) {
#pragma GCC unroll 4
          for (int64_t i = 0; i < kChains; ++i) {
            __builtin_prefetch(kn + (d + i) * BS, 0, 1);
            // V: the slice's kLanes x D floats, one prefetch per kLanes of them
            __builtin_prefetch(vn + (d + i) * kLanes, 0, 1);
          }
        }
#pragma GCC unroll 4
        for (int64_t i = 0; i < kChains; ++i) {
          const vf kv = load(kd + i * BS);
          for (int r = 0; r < kG; ++r)
            if (r0 + r < R) ch[r][i] += qs[r0 + r][d + i] * kv;
        }
      }
      for (int r = 0; r < kG; ++r)
        if (r0 + r < R) s[r0 + r] = (ch[r][0] + ch[r][1]) + (ch[r][2] + ch[r][3]);
    }
    // online softmax, row by row: p = exp(s - m), the old sums scaled by corr
    const bool masked = k0 + kLanes > min_lim;
    float corr[R];
    // keys of this slice that some row of the tile sees (V rows past them are never read)
    int jmax = masked ? 0 : kLanes;
    for (int r = 0; r < R; ++r) {
      if (masked) {
        const int64_t nk = std::clamp<int64_t>(lim[r] - k0, 0, kLanes);
        if (nk == 0) {  // past this row's causal limit: nothing to add
          store(p[r], vf{});
          corr[r] = 1.f;
          continue;
        }
        jmax = std::max<int>(jmax, static_cast<int>(nk));
        const vi hide = (lane + static_cast<int32_t>(k0)) >= lim[r];
        s[r] = hide ? splat(kNegInf) : s[r];  // -> p = 0 exactly
      }
      const float new_m = std::max(m[r], hmax(s[r]));
      corr[r] = std::exp(m[r] - new_m);  // 0 on the first slice (m = -inf)
      const vf e = vexp(s[r] - new_m);
      l[r] = l[r] * corr[r] + hsum(e);
      m[r] = new_m;
      store(p[r], e);
    }
    // PV: rows in register groups, each V row loaded once per group. Keys below jmax are
    // stored context for some row of the tile (finite); a row that must not see one has p = 0
    pv_rows<R, DV>(acc, p, corr, vb, jmax);
  }
  for (int r = 0; r < R; ++r) {
    const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
    for (int d = 0; d < D; ++d) outp[r][d] = acc[r][d] * inv;
  }
}

template <int DV>
void attend_tile_dv(const Ctx& c, int64_t b, int64_t h, int64_t first, int count) {
  switch (count) {
    case 1: return attend_tile<1, DV>(c, b, h, first);
    case 2: return attend_tile<2, DV>(c, b, h, first);
    case 3: return attend_tile<3, DV>(c, b, h, first);
    case 4: return attend_tile<4, DV>(c, b, h, first);
    case 5: return attend_tile<5, DV>(c, b, h, first);
    case 6: return attend_tile<6, DV>(c, b, h, first);
    case 7: return attend_tile<7, DV>(c, b, h, first);
    default: return attend_tile<8, DV>(c, b, h, first);
  }
}

// Any D / BS: one row at a time, one key at a time (rarely used head sizes).
void attend_rows_generic(const Ctx& c, int64_t b, int64_t h, int64_t first, int count) {
  const int64_t D = c.D, BS = c.BS;
  std::vector<float> acc(D), qs(D);
  for (int r = 0; r < count; ++r) {
    const Row row = c.row(b, h, first + r);
    for (int64_t d = 0; d < D; ++d) qs[d] = row.q[d] * c.scale;
    std::fill(acc.begin(), acc.end(), 0.f);
    float m = kNegInf, l = 0.f;
    for (int64_t j = 0; j < row.limit; ++j) {
      const float* kt = c.kblock(b, h, j / BS) + j % BS;
      float s = 0.f;
      for (int64_t d = 0; d < D; ++d) s += qs[d] * kt[d * BS];
      const float new_m = std::max(m, s);
      const float corr = std::exp(m - new_m), e = std::exp(s - new_m);
      l = l * corr + e;
      m = new_m;
      const float* vrow = c.vblock(b, h, j / BS) + (j % BS) * D;
      for (int64_t d = 0; d < D; ++d) acc[d] = acc[d] * corr + e * vrow[d];
    }
    const float inv = l > 0.f ? 1.f / l : 0.f;
    for (int64_t d = 0; d < D; ++d) row.out[d] = acc[d] * inv;
  }
}

void check_common(const torch::Tensor& q, const torch::Tensor& k_cache, const torch::Tensor& v_cache) {
  TORCH_CHECK(q.dtype() == torch::kFloat32 && k_cache.dtype() == torch::kFloat32 &&
                  v_cache.dtype() == torch::kFloat32,
              "paged_attention_cpu: fp32 only");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, "paged_attention_cpu: q/k/v must be [T, H, D] with a unit last stride");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_attention_cpu: contiguous caches required");
}

}  // namespace

// Write k/v [T, Hk, D] (any strides with a unit last stride) into their slots (slot = block * BS + offset; < 0 = skip).
void store_kv_fwd(torch::Tensor k, torch::Tensor v, torch::Tensor k_cache, torch::Tensor v_cache,
                  torch::Tensor slot_mapping) {
  check_common(k, k_cache, v_cache);
  check_common(v, k_cache, v_cache);
  TORCH_CHECK(slot_mapping.dtype() == torch::kInt64, "slot_mapping must be int64");
  const int64_t T = k.size(0), Hk = k.size(1), D = k.size(2), BS = k_cache.size(3);
  const float* kp = k.data_ptr<float>();
  const float* vp = v.data_ptr<float>();
  const int64_t ks0 = k.stride(0), ks1 = k.stride(1), vs0 = v.stride(0), vs1 = v.stride(1);
  float* kc = k_cache.data_ptr<float>();
  float* vc = v_cache.data_ptr<float>();
  const int64_t* sm = slot_mapping.data_ptr<int64_t>();
  // tokens own distinct slots, so chunks of tokens go to threads independently (a prompt's
  // transposed K writes touch 64 lines per head and token: worth splitting for prefill)
  at::parallel_for(0, T, 256, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t slot = sm[t];
      if (slot < 0) continue;
      const int64_t blk = slot / BS, off = slot % BS;
      for (int64_t h = 0; h < Hk; ++h) {
        const float* ks = kp + t * ks0 + h * ks1;
        const float* vs = vp + t * vs0 + h * vs1;
        float* kd = kc + ((blk * Hk + h) * D) * BS + off;
        for (int64_t d = 0; d < D; ++d) kd[d * BS] = ks[d];
        std::copy(vs, vs + D, vc + ((blk * Hk + h) * BS + off) * D);
      }
    }
  });
}

torch::Tensor paged_attention_fwd(torch::Tensor q, torch::Tensor k_cache, torch::Tensor v_cache,
                                  torch::Tensor block_tables, torch::Tensor query_start_loc,
                                  torch::Tensor context_lens, double scale) {
  check_common(q, k_cache, v_cache);
  TORCH_CHECK(block_tables.dtype() == torch::kInt32 && query_start_loc.dtype() == torch::kInt32 &&
                  context_lens.dtype() == torch::kInt32,
              "paged_attention_cpu: int32 metadata required");
  auto bt = block_tables.contiguous();
  auto qsl_t = query_start_loc.contiguous();
  auto ctx_t = context_lens.contiguous();
  const int64_t Hq = q.size(1), D = q.size(2);
  const int64_t Hk = k_cache.size(1), BS = k_cache.size(3);
  TORCH_CHECK(k_cache.size(2) == D, "k_cache must be [NB, Hk, D, BS]");
  TORCH_CHECK(Hq % Hk == 0, "num_heads must be a multiple of num_kv_heads");
  const int64_t B = ctx_t.size(0);
  TORCH_CHECK(qsl_t.size(0) == B + 1, "query_start_loc must have B + 1 entries");
  auto out = torch::empty({q.size(0), Hq, D}, q.options());
  Ctx c{q.data_ptr<float>(), out.data_ptr<float>(), k_cache.data_ptr<float>(), v_cache.data_ptr<float>(),
        bt.data_ptr<int32_t>(), qsl_t.data_ptr<int32_t>(), ctx_t.data_ptr<int32_t>(),
        Hq, Hk, Hq / Hk, D, BS, bt.size(1), q.stride(0), q.stride(1), static_cast<float>(scale)};
  TORCH_CHECK(c.qsl[B] == q.size(0), "query_start_loc[-1] must equal the number of query tokens");

  // tiles: consecutive rows of one (sequence, kv head); cost ~ keys of the last row x (rows +
  // 4), the 4 standing for a slice's per-tile work that does not scale with rows (K/V loads)
  std::vector<Tile> tiles;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t n = c.qsl[b + 1] - c.qsl[b];
    TORCH_CHECK(n >= 0 && n <= c.ctx[b], "each sequence needs 0 <= new tokens <= context length");
    TORCH_CHECK((c.ctx[b] + BS - 1) / BS <= c.MB, "block table too short for the context");
    const int64_t rows = n * c.G;
    for (int64_t h = 0; h < Hk; ++h)
      for (int64_t i = 0; i < rows; i += kRows) {
        const int32_t cnt = static_cast<int32_t>(std::min<int64_t>(kRows, rows - i));
        const int64_t last = c.ctx[b] - n + (i + cnt - 1) / c.G + 1;
        tiles.push_back({static_cast<int32_t>(b), static_cast<int32_t>(h), static_cast<int32_t>(i), cnt,
                         last * (cnt + 4)});
      }
  }
  std::sort(tiles.begin(), tiles.end(), [](const Tile& a, const Tile& b) { return a.cost > b.cost; });
  const bool fast = BS % kLanes == 0 && (D == 32 || D == 64 || D == 128 || D == 256);
  auto run = [&](const Tile& t) {
    if (!fast) return attend_rows_generic(c, t.seq, t.head, t.first, t.count);
    switch (D) {
      case 32: return attend_tile_dv<32 / kLanes>(c, t.seq, t.head, t.first, t.count);
      case 64: return attend_tile_dv<64 / kLanes>(c, t.seq, t.head, t.first, t.count);
      case 128: return attend_tile_dv<128 / kLanes>(c, t.seq, t.head, t.first, t.count);
      default: return attend_tile_dv<256 / kLanes>(c, t.seq, t.head, t.first, t.count);
    }
  };
  const int64_t nt = static_cast<int64_t>(tiles.size());
  const int64_t workers = std::min<int64_t>(at::get_num_threads(), nt);
  if (workers <= 1) {
    for (const Tile& t : tiles) run(t);
    return out;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1); i < nt; i = next.fetch_add(1)) run(tiles[i]);
  });
  return out;
}

// for the decoder stack (entry_points.h): the same functions, called without Python
const infer_ep::PagedAttention kEntryPoints{infer_ep::kVersion, &store_kv_fwd, &paged_attention_fwd};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("entry_points", [] { return reinterpret_cast<int64_t>(&kEntryPoints); },
        "address of this extension's infer_ep::PagedAttention table");
  m.def("paged_attention_fwd", &paged_attention_fwd, "paged causal attention (CPU, fp32)");
  m.def("store_kv_fwd", &store_kv_fwd, "write k/v into the transposed-K paged cache (CPU, fp32)");
}
