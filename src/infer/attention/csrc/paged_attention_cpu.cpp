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
// and neighbouring prompt tokens share it). Keys go in blocks of kSlices slices: per d, one K
// vector load per slice and one q broadcast per row feed rows x kSlices FMAs (each score one
// chain over d, in order), then one flash-style online-softmax update per block and row, and
// PV with the rows' accumulators in registers. The next block's K lines are prefetched during
// QK and its V lines during PV. A row's bits depend only on its own keys and the block
// boundaries (multiples of kBlockKeys from key 0), never on the other rows of its tile: a
// decode alone equals the same row inside a verify or prefill chunk (keys past a row's limit
// enter as p = 0 exactly, which leaves every sum unchanged, up to the sign of a zero sum).
// Causal tiles stop at their last key.
// Tiles go to threads through a shared counter, longest first (causal tiles differ in cost).
// Other head dims (not 32/64/128/256) or cache blocks that are not a multiple of kLanes keys take a
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

constexpr int kRows = 12;   // rows per tile (measured: 12 beat 8 on prefill; e.g. 4 tokens x 3 GQA heads)
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// x in every lane (splat's 0 + x costs a scalar add before the broadcast: -0 becomes +0)
inline vf bcast(float x) {
#if defined(__AVX512F__)
  const __m512 v = _mm512_set1_ps(x);
#elif defined(__AVX__)
  const __m256 v = _mm256_set1_ps(x);
#else
  vf v;
  for (int i = 0; i < kLanes; ++i) v[i] = x;
#endif
  return reinterpret_cast<const vf&>(v);
}

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

// Keys go in blocks of kSlices slices of kLanes keys (64 keys on AVX-512): a block's scores
// are computed together (each q broadcast feeds kSlices FMAs, so the QK loop is bound by
// the FMAs, not by the loads), and the online softmax (max, exp, rescale of the
// accumulators) runs once per block rather than once per slice.
constexpr int kSlices = 4;
static_assert(kSlices == 4, "a block's maxima and sums are taken as (0, 1) with (2, 3)");
constexpr int kBlockKeys = kSlices * kLanes;

// acc[r] = acc[r] * corr[r] + sum_{j < jmax} p[r][j] V[j] for R rows, in groups of G rows
// whose accumulators (G x DV vectors) stay in registers while V streams by once per group;
// key j of the block is row j % kLanes of slice vb[j / kLanes]. While the first group runs,
// the next block's V lines (vn[s], null: none) are prefetched, spread over the keys.
// G: rows whose DV accumulators fit in 3/4 of the registers (the rest: V and p); at least 1
// (AVX2 with D >= 128: that row's accumulators spill).
template <int R, int DV, int G = (kVecRegs * 3 / 4 / DV > 0 ? kVecRegs * 3 / 4 / DV : 1)>
inline void pv_block(float (*acc)[kLanes * DV], const float (*p)[kBlockKeys], const float* corr,
                     const float* const* vb, int jmax, const float* const* vn) {
  constexpr int D = kLanes * DV;
  for (int r0 = 0; r0 < R; r0 += G) {
    constexpr int kG = G < R ? G : R;
    const int n = std::min(kG, R - r0);
    vf a[kG][DV];
    for (int r = 0; r < kG; ++r)
      if (r < n)
        for (int dv = 0; dv < DV; ++dv) a[r][dv] = load(acc[r0 + r] + kLanes * dv) * corr[r0 + r];
    for (int j = 0; j < jmax; ++j) {
      const float* vj = vb[j / kLanes] + (j % kLanes) * D;
      if (r0 == 0)  // DV of the next block's kSlices x D lines of V per key (all over kBlockKeys keys)
        for (int t = 0; t < DV; ++t) {
          const int f = j * DV + t;
          if (vn[f / D]) __builtin_prefetch(vn[f / D] + (f % D) * kLanes, 0, 1);
        }
      vf v[DV];
      for (int dv = 0; dv < DV; ++dv) v[dv] = load(vj + kLanes * dv);
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

// Scores of rows [r0, r0 + kG) against the block's kSlices K slices (kt[s]: [D][BS] columns
// of slice s; BS: the K rows' stride), one chain per (row, slice) over d in order, into
// sc[r][s * kLanes + i]. With fetch, the next block's K lines (kn[s], null: none) are
// prefetched, one line per slice and d.
template <int kG, int D>
inline void qk_block(const float (*qs)[D], const float* const* kt, int64_t BS, float (*sc)[kBlockKeys],
                     int n, bool fetch, const float* const* kn) {
  vf a[kG][kSlices];
  for (int r = 0; r < kG; ++r)
    for (int sl = 0; sl < kSlices; ++sl) a[r][sl] = vf{};
  for (int64_t d = 0; d < D; ++d) {
    if (fetch)
      for (int sl = 0; sl < kSlices; ++sl)
        if (kn[sl]) __builtin_prefetch(kn[sl] + d * BS, 0, 1);
    vf kv[kSlices];
    for (int sl = 0; sl < kSlices; ++sl) kv[sl] = load(kt[sl] + d * BS);
    for (int r = 0; r < kG; ++r)
      if (r < n) {
        const vf qb = bcast(qs[r][d]);
        for (int sl = 0; sl < kSlices; ++sl) a[r][sl] += qb * kv[sl];
      }
  }
  for (int r = 0; r < kG; ++r)
    if (r < n)
      for (int sl = 0; sl < kSlices; ++sl) store(sc[r] + sl * kLanes, a[r][sl]);
}

// One tile of R rows, head dim D = kLanes * DV, BS a multiple of kLanes.
template <int R, int DV>
void attend_tile(const Ctx& c, int64_t b, int64_t h, int64_t first) {
  constexpr int D = kLanes * DV;
  constexpr int kQK = kVecRegs / 8;  // rows per QK group: kQK x kSlices chains in registers
  alignas(64) float qs[R][D];
  alignas(64) float acc[R][D];
  alignas(64) float sc[R][kBlockKeys];  // a block's scores, then its probabilities
  float m[R], l[R];
  int32_t lim[R];
  float* outp[R];
  int32_t max_lim = 0;
  for (int r = 0; r < R; ++r) {
    const Row row = c.row(b, h, first + r);
    for (int d = 0; d < D; ++d) qs[r][d] = row.q[d] * c.scale;
    std::fill(acc[r], acc[r] + D, 0.f);
    m[r] = kNegInf;
    l[r] = 0.f;
    lim[r] = row.limit;
    outp[r] = row.out;
    max_lim = std::max(max_lim, row.limit);
  }
  const vi lane = infer_vec::lane_ids();
  const int64_t BS = c.BS;
  // slice pointers of the block starting at key k0 (null past max_lim: such slices are never
  // read for a result; QK reads slice 0 in their place)
  auto slices = [&](int64_t k0, const float** kt, const float** vb) {
    for (int sl = 0; sl < kSlices; ++sl) {
      const int64_t key = k0 + sl * kLanes;
      const bool in = key < max_lim;
      kt[sl] = in ? c.kblock(b, h, key / BS) + key % BS : nullptr;
      vb[sl] = in ? c.vblock(b, h, key / BS) + (key % BS) * D : nullptr;
    }
  };
  const float *kt[kSlices], *vb[kSlices], *kn[kSlices], *vn[kSlices];
  slices(0, kt, vb);
  for (int64_t k0 = 0; k0 < max_lim; k0 += kBlockKeys) {
    slices(k0 + kBlockKeys, kn, vn);
    const float* kq[kSlices];
    for (int sl = 0; sl < kSlices; ++sl) kq[sl] = kt[sl] ? kt[sl] : kt[0];
    for (int r0 = 0; r0 < R; r0 += kQK) {
      constexpr int kG = R < kQK ? R : kQK;
      qk_block<kG, D>(qs + r0, kq, BS, sc + r0, std::min(kG, R - r0), r0 == 0, kn);
    }
    // online softmax, row by row: p = exp(s - m), the old sums scaled by corr. Keys at or past
    // a row's limit get p = 0 exactly (the -inf select; an unused slot's garbage never enters
    // arithmetic that reaches the row)
    float corr[R];
    int jmax = 0;  // keys of this block that some row of the tile sees
    for (int r = 0; r < R; ++r) {
      const int64_t nk = std::clamp<int64_t>(lim[r] - k0, 0, kBlockKeys);
      if (nk == 0) {  // past this row's causal limit: nothing to add
        std::fill(sc[r], sc[r] + kBlockKeys, 0.f);
        corr[r] = 1.f;
        continue;
      }
      jmax = std::max<int>(jmax, static_cast<int>(nk));
      vf s[kSlices];
      for (int sl = 0; sl < kSlices; ++sl) {
        const vi hide = (lane + static_cast<int32_t>(k0 + sl * kLanes)) >= lim[r];
        s[sl] = hide ? splat(kNegInf) : load(sc[r] + sl * kLanes);
      }
      const vf mx = vmax(vmax(s[0], s[1]), vmax(s[2], s[3]));
      const float new_m = std::max(m[r], hmax(mx));
      corr[r] = std::exp(m[r] - new_m);  // 0 on the first block (m = -inf)
      vf e[kSlices];
      for (int sl = 0; sl < kSlices; ++sl) {
        e[sl] = vexp(s[sl] - new_m);
        store(sc[r] + sl * kLanes, e[sl]);
      }
      l[r] = l[r] * corr[r] + hsum((e[0] + e[1]) + (e[2] + e[3]));
      m[r] = new_m;
    }
    // PV: keys below jmax are stored context for some row of the tile (finite); a row that
    // must not see one has p = 0
    pv_block<R, DV>(acc, sc, corr, vb, jmax, vn);
    for (int sl = 0; sl < kSlices; ++sl) {
      kt[sl] = kn[sl];
      vb[sl] = vn[sl];
    }
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
    case 8: return attend_tile<8, DV>(c, b, h, first);
    case 9: return attend_tile<9, DV>(c, b, h, first);
    case 10: return attend_tile<10, DV>(c, b, h, first);
    case 11: return attend_tile<11, DV>(c, b, h, first);
    default: return attend_tile<12, DV>(c, b, h, first);
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
  // 4), the 4 standing for a block's per-tile work that does not scale with rows (K/V loads)
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
