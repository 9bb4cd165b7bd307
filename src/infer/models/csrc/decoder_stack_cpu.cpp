// The Llama decoder layers of one step as ONE C++ call (CPU, kernel attention).
//
// The eager model calls ~12 kernels per layer from Python (norms, fused qkv, rope, KV store,
// attention, o, norm, gate|up, SiLU-mul, down); in single-stream decode each call's Python,
// module and pybind overhead (~10-20 us) is paid 30 times per token, several ms against a
// weight pass of a few tens of ms. This stack holds the layers' tensors once and calls the
// same kernels, in the same order and with the same arguments, through the extensions'
// entry-point tables (entry_points.h): its outputs equal the eager path's bit for bit, which
// stays the oracle (kernels.decoder_stack=off).
//
// Per layer (mirrors models/llama.py):
//   x, res = rms_norm(x) | fused_add_rms_norm(x, res)     (input_layernorm)
//   qkv = linear(x, qkv_proj)                              [T, nq + 2 nk]
//   q, k = rotary(q_norm/k_norm(...)) or rotary of q|k together (adjacent in qkv)
//   store_kv(k, v); o = paged_attention(q, ...)            [T, Hq, D]
//   x = linear(o, o_proj); x, res = fused_add_rms_norm(x, res)
//   x = linear(silu_and_mul(linear(x, gate_up_proj)), down_proj)
//
// Few-row steps (decode) with fp32 projections and two or more threads run all the layers in
// ONE OpenMP team (run_team): thread 0 runs the layer as above, the projections are split
// over the team as packed_linear splits them, and between projections the other threads
// prefetch their part of the next one instead of idling. Measured on SmolLM2 single-stream
// decode at two threads: 1.037x (median of 10 alternating rounds), same tokens.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "entry_points.h"

// the team path on (default) or off: an A/B switch for benchmarks (set_team_decode); both
// paths give the same bits
static bool g_team_on = true;
namespace {

// How a projection's weights are stored (quant method) -> which packed kernel runs it.
enum LinearKind : int64_t { kDense = 0, kInt8 = 1, kInt4 = 2 };

struct Linear {
  int64_t kind = kDense;
  torch::Tensor wp;      // packed weight (dense_cpu.pack / pack_int4 layouts)
  int64_t n = 0;         // output features
  int64_t k = 0;         // input features (dense kinds)
  torch::Tensor scale;   // int8: [>= n]; int4: [Np, K/G, 64]; dense: unused
  torch::Tensor offset;  // int4 only
  int64_t group = 0;     // int4 group size
  torch::Tensor bias;    // [n] or empty
};

struct Layer {
  torch::Tensor in_norm, post_norm;  // [hidden]
  torch::Tensor q_norm, k_norm;      // [D] or undefined (Qwen3-style q/k RMSNorm)
  Linear qkv, o, gate_up, down;
};

template <class T>
const T& table(int64_t addr, const char* what) {
  TORCH_CHECK(addr != 0, "decoder stack: no entry points for ", what);
  const T& t = *reinterpret_cast<const T*>(addr);
  TORCH_CHECK(t.version == infer_ep::kVersion, "decoder stack: ", what, " entry points are version ",
              t.version, ", expected ", infer_ep::kVersion, " (a stale build)");
  return t;
}

}  // namespace

class DecoderStack {
 public:
  // Entry-point table addresses (each extension's entry_points()), the attention geometry and
  // the norms' epsilon. Layers are added with add_layer, in model order.
  DecoderStack(int64_t dense_ep, int64_t ops_ep, int64_t attn_ep, int64_t num_heads,
               int64_t num_kv_heads, int64_t head_dim, double eps, double scale)
      : dense_(table<infer_ep::DenseLinear>(dense_ep, "the dense-linear kernels")),
        ops_(table<infer_ep::ModelOps>(ops_ep, "the model ops")),
        attn_(table<infer_ep::PagedAttention>(attn_ep, "the paged attention")),
        nh_(num_heads), nkv_(num_kv_heads), hd_(head_dim), eps_(eps), scale_(scale) {
    TORCH_CHECK(nh_ > 0 && nkv_ > 0 && hd_ > 0 && nh_ % nkv_ == 0,
                "decoder stack: bad head geometry ", nh_, "/", nkv_, "/", hd_);
    // what a team thread prefetches of its next part: half its L2 (the lines must still be
    // there when the projection starts), within [256 KB, 1 MB]
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    preload_bytes_ = l2 > 0 ? std::clamp<int64_t>(l2 / 2, 256 << 10, 1 << 20) : 512 << 10;
  }

  // norms: (input_layernorm, post_attention_layernorm, q_norm or None, k_norm or None);
  // linears: qkv, o, gate_up, down as (kind, packed, n, scale, offset, group, bias), with
  // empty tensors for the parts a kind does not use.
  void add_layer(const std::vector<std::optional<torch::Tensor>>& norms,
                 const std::vector<std::tuple<int64_t, torch::Tensor, int64_t, torch::Tensor,
                                              torch::Tensor, int64_t, torch::Tensor>>& linears) {
    TORCH_CHECK(norms.size() == 4 && linears.size() == 4,
                "decoder stack: add_layer takes 4 norms and 4 linears");
    TORCH_CHECK(norms[0].has_value() && norms[1].has_value(), "decoder stack: layer norms missing");
    Layer l;
    l.in_norm = *norms[0];
    l.post_norm = *norms[1];
    if (norms[2].has_value()) l.q_norm = *norms[2];
    if (norms[3].has_value()) l.k_norm = *norms[3];
    TORCH_CHECK(l.q_norm.defined() == l.k_norm.defined(), "decoder stack: q_norm and k_norm go together");
    Linear* dst[4] = {&l.qkv, &l.o, &l.gate_up, &l.down};
    for (int i = 0; i < 4; ++i) {
      const auto& [kind, wp, n, scale, offset, group, bias] = linears[i];
      TORCH_CHECK(kind == kDense || kind == kInt8 || kind == kInt4,
                  "decoder stack: unknown linear kind ", kind);
      *dst[i] = Linear{kind, wp, n, 0, scale, offset, group, bias};
      const int64_t cols = (n + 63) / 64 * 64;
      // the team path calls the kernel without packed_linear's checks: take it only for
      // contiguous fp32 panels and an fp32 [n] contiguous bias (others keep the checked path)
      const bool bias_ok = !bias.defined() || bias.numel() == 0 ||
                           (bias.scalar_type() == torch::kFloat32 && bias.numel() == n &&
                            bias.is_contiguous());
      if (kind == kDense && wp.scalar_type() == torch::kFloat32 && wp.is_contiguous() &&
          cols > 0 && wp.numel() % cols == 0 && bias_ok)
        dst[i]->k = wp.numel() / cols;
      else
        all_dense_fp32_ = false;
    }
    layers_.push_back(std::move(l));
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

  // steps that ran on the team path (run_team)
  int64_t team_steps() const { return team_steps_; }

  // Run layers `which` (indices into the added layers, in order) on x [T, hidden]; residual
  // None before the model's first layer. k_caches / v_caches: one per entry of `which`
  // (kernel layout). positions int64 [T], cos_sin fp32 [max_pos, rd]; the attention metadata
  // as the paged kernel takes it. Returns (x, residual) [T, hidden], as the eager loop does.
  std::tuple<torch::Tensor, torch::Tensor> run(
      torch::Tensor x, std::optional<torch::Tensor> residual, const std::vector<int64_t>& which,
      const torch::Tensor& positions, const torch::Tensor& cos_sin,
      const std::vector<torch::Tensor>& k_caches, const std::vector<torch::Tensor>& v_caches,
      const torch::Tensor& slot_mapping, const torch::Tensor& block_tables,
      const torch::Tensor& query_start_loc, const torch::Tensor& context_lens) const {
    check_run_args(x, which, k_caches, v_caches);
    if (team_ready(x))
      return run_team(x, residual, which, positions, cos_sin, k_caches, v_caches, slot_mapping,
                      block_tables, query_start_loc, context_lens);
    torch::Tensor res = residual.has_value() ? *residual : torch::Tensor();
    const auto lin = [this](const torch::Tensor& a, const Linear& w) { return linear(a, w); };
    for (size_t li = 0; li < which.size(); ++li)
      layer(layers_[which[li]], x, res, positions, cos_sin, k_caches[li], v_caches[li],
            slot_mapping, block_tables, query_start_loc, context_lens, lin);
    TORCH_CHECK(res.defined(), "decoder stack: run at least one layer");
    return {x, res};
  }

 private:
  void check_run_args(const torch::Tensor& x, const std::vector<int64_t>& which,
                      const std::vector<torch::Tensor>& k_caches,
                      const std::vector<torch::Tensor>& v_caches) const {
    TORCH_CHECK(k_caches.size() == which.size() && v_caches.size() == which.size(),
                "decoder stack: one (k, v) cache per layer run");
    TORCH_CHECK(x.dim() == 2, "decoder stack: x must be [T, hidden]");
    TORCH_CHECK(!which.empty(), "decoder stack: run at least one layer");
    for (const int64_t idx : which)
      TORCH_CHECK(idx >= 0 && idx < num_layers(), "decoder stack: layer ", idx, " not added");
  }

  // One decoder layer on (x, res) in place; lin(a, w) runs a projection.
  template <typename Lin>
  void layer(const Layer& l, torch::Tensor& x, torch::Tensor& res, const torch::Tensor& positions,
             const torch::Tensor& cos_sin, const torch::Tensor& k_cache,
             const torch::Tensor& v_cache, const torch::Tensor& slot_mapping,
             const torch::Tensor& block_tables, const torch::Tensor& query_start_loc,
             const torch::Tensor& context_lens, const Lin& lin) const {
    const std::tuple<torch::Tensor, torch::Tensor> rope{positions, cos_sin};
    const int64_t t = x.size(0), nq = nh_ * hd_, nk = nkv_ * hd_;
    if (!res.defined()) {
      res = x;
      x = ops_.rms_norm(x, l.in_norm, eps_);
    } else {
      std::tie(x, res) = ops_.fused_add_rms_norm(x, res, l.in_norm, eps_);
    }
    const torch::Tensor qkv = lin(x, l.qkv);
    const torch::Tensor v = qkv.narrow(1, nq + nk, nk).reshape({t, nkv_, hd_});
    torch::Tensor q, k;
    if (l.q_norm.defined()) {
      q = ops_.rotary(ops_.rms_norm(qkv.narrow(1, 0, nq).reshape({t, nh_, hd_}), l.q_norm, eps_), rope);
      k = ops_.rotary(ops_.rms_norm(qkv.narrow(1, nq, nk).reshape({t, nkv_, hd_}), l.k_norm, eps_), rope);
    } else {
      // q and k are adjacent in qkv: one rotary pass over both head groups, in place
      const torch::Tensor qk = ops_.rotary(qkv.narrow(1, 0, nq + nk).reshape({t, nh_ + nkv_, hd_}), rope);
      q = qk.narrow(1, 0, nh_);
      k = qk.narrow(1, nh_, nkv_);
    }
    attn_.store_kv(k, v, k_cache, v_cache, slot_mapping);
    const torch::Tensor o = attn_.paged_attention(q, k_cache, v_cache, block_tables,
                                                  query_start_loc, context_lens, scale_);
    x = lin(o.view({t, nq}), l.o);
    std::tie(x, res) = ops_.fused_add_rms_norm(x, res, l.post_norm, eps_);
    x = lin(ops_.silu_and_mul(lin(x, l.gate_up)), l.down);
  }

  // The team path applies: every projection fp32 dense, two or more threads, and few rows
  // (those the dense kernel splits dynamically: fewer than 6 per thread).
  bool team_ready(const torch::Tensor& x) const {
    const int64_t nt = at::get_num_threads();
    return g_team_on && all_dense_fp32_ && nt >= 2 && x.scalar_type() == torch::kFloat32 && x.size(0) >= 1 &&
           x.size(0) < 6 * nt && !at::in_parallel_region();
  }

  // Few-row steps in ONE OpenMP team (see dense_linear_cpu.cpp, "Team decode"): thread 0 runs
  // the layers as `run` does, each projection published to the team and split as
  // packed_linear splits it; between projections the other threads prefetch the first lines
  // of their part of the next one (the memory bus would otherwise idle through the small
  // ops). The same kernels on the same columns: bit-identical to `run`'s other path.
  std::tuple<torch::Tensor, torch::Tensor> run_team(
      torch::Tensor x, std::optional<torch::Tensor> residual, const std::vector<int64_t>& which,
      const torch::Tensor& positions, const torch::Tensor& cos_sin,
      const std::vector<torch::Tensor>& k_caches, const std::vector<torch::Tensor>& v_caches,
      const torch::Tensor& slot_mapping, const torch::Tensor& block_tables,
      const torch::Tensor& query_start_loc, const torch::Tensor& context_lens) const {
    // the projections in the order thread 0 runs them, as raw operands taken before the
    // region (nothing inside the workers' part can throw a torch error)
    struct Proj {
      const Linear* lin;
      const float* wp;
      const float* bias;
      int64_t k, n;
    };
    std::vector<Proj> seq;
    for (const int64_t idx : which) {
      const Layer& l = layers_[idx];
      for (const Linear* w : {&l.qkv, &l.o, &l.gate_up, &l.down})
        seq.push_back({w, w->wp.data_ptr<float>(), bias_ptr(*w), w->k, w->n});
    }
    const int64_t want = at::get_num_threads(), g_total = static_cast<int64_t>(seq.size());
    // shared state: the projection published last (go), parts finished, the published
    // operands, the bands (one line per thread), the first error of each thread
    alignas(64) std::atomic<int64_t> go{0};
    alignas(64) std::atomic<int64_t> finished{0};
    alignas(64) std::atomic<bool> abort{false};
    const float* pub_x = nullptr;
    float* pub_out = nullptr;
    int64_t pub_nb = 1;
    std::unique_ptr<char[]> band_mem(new char[(want + 1) * infer_ep::kTeamBandBytes]);
    void* bands = reinterpret_cast<void*>(
        (reinterpret_cast<uintptr_t>(band_mem.get()) + 63) & ~uintptr_t{63});
    std::vector<std::exception_ptr> errors(want);
    torch::Tensor res = residual.has_value() ? *residual : torch::Tensor();
    const int64_t t = x.size(0);
    team_steps_ += 1;
#pragma omp parallel num_threads(want)
    {
      const int64_t tid = omp_get_thread_num(), nt = omp_get_num_threads();
      if (tid == 0) {
        int64_t g = 0;
        const auto lin = [&](const torch::Tensor& a, const Linear& w) {
          // checked before publishing: a throw here leaves the others waiting on `go`
          TORCH_CHECK(g < g_total && seq[g].lin == &w, "decoder stack: team projection out of order");
          const Proj& pr = seq[g];
          TORCH_CHECK(a.dim() == 2 && a.size(0) == t && a.size(1) == pr.k &&
                          a.scalar_type() == torch::kFloat32,
                      "decoder stack: projection input must be fp32 [", t, ", ", pr.k, "]");
          const torch::Tensor xa = a.contiguous();
          torch::Tensor out = torch::empty({t, pr.n}, xa.options());
          pub_x = xa.data_ptr<float>();
          pub_out = out.data_ptr<float>();
          pub_nb = dense_.team_init(bands, pr.n, nt);
          go.store(++g, std::memory_order_release);
          // published: xa and out must outlive every thread's part, so no early exit from here
          std::exception_ptr err;
          try {
            dense_.team_linear(pub_x, pr.wp, pr.bias, pub_out, t, pr.k, pr.n, bands, pub_nb, 0);
          } catch (...) {
            err = std::current_exception();
          }
          finished.fetch_add(1, std::memory_order_acq_rel);
          // while the others finish: the front of this thread's part of the next projection
          if (g < g_total && finished.load(std::memory_order_acquire) < g * nt) {
            const Proj& nx = seq[g];
            dense_.team_preload(nx.wp, nx.k, nx.n, 0, nt, preload_bytes_, &finished, g * nt);
          }
          while (finished.load(std::memory_order_acquire) < g * nt) _mm_pause();
          if (err) std::rethrow_exception(err);
          return out;
        };
        try {
          for (size_t li = 0; li < which.size(); ++li)
            layer(layers_[which[li]], x, res, positions, cos_sin, k_caches[li], v_caches[li],
                  slot_mapping, block_tables, query_start_loc, context_lens, lin);
        } catch (...) {
          errors[0] = std::current_exception();
        }
        abort.store(true, std::memory_order_release);
      } else {
        for (int64_t g = 1; g <= g_total; ++g) {
          const Proj& pr = seq[g - 1];
          dense_.team_preload(pr.wp, pr.k, pr.n, tid, nt, preload_bytes_, &go, g);
          while (go.load(std::memory_order_acquire) < g && !abort.load(std::memory_order_acquire))
            _mm_pause();
          if (go.load(std::memory_order_acquire) < g) break;  // thread 0 stopped (an error)
          // an error (e.g. out of memory for a thread's buffer) must not leave the region;
          // the part still counts as finished so thread 0 does not wait forever
          try {
            dense_.team_linear(pub_x, pr.wp, pr.bias, pub_out, t, pr.k, pr.n, bands, pub_nb, tid);
          } catch (...) {
            if (!errors[tid]) errors[tid] = std::current_exception();
          }
          finished.fetch_add(1, std::memory_order_acq_rel);
        }
      }
    }
    for (const auto& e : errors)
      if (e) std::rethrow_exception(e);
    return {x, res};
  }

  static const float* bias_ptr(const Linear& w) {
    return w.bias.defined() && w.bias.numel() ? w.bias.data_ptr<float>() : nullptr;
  }

  torch::Tensor linear(const torch::Tensor& x, const Linear& w) const {
    switch (w.kind) {
      case kInt8:
        return dense_.packed_linear_int8(x, w.wp, w.n, w.scale, w.bias);
      case kInt4:
        return dense_.packed_linear_int4(x, w.wp, w.n, w.scale, w.offset, w.group, w.bias);
      default:
        return dense_.packed_linear(x, w.wp, w.n, w.bias);
    }
  }

  const infer_ep::DenseLinear& dense_;
  const infer_ep::ModelOps& ops_;
  const infer_ep::PagedAttention& attn_;
  int64_t nh_, nkv_, hd_;
  double eps_, scale_;
  std::vector<Layer> layers_;
  bool all_dense_fp32_ = true;   // every projection fp32 dense (the team path's kernels)
  int64_t preload_bytes_ = 0;    // bytes a team thread prefetches of its next part
  mutable int64_t team_steps_ = 0;
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<DecoderStack>(m, "DecoderStack")
      .def(pybind11::init<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double, double>())
      .def("add_layer", &DecoderStack::add_layer)
      .def("num_layers", &DecoderStack::num_layers)
      .def("run", &DecoderStack::run)
      .def("team_steps", &DecoderStack::team_steps);
  m.def("set_team_decode", [](bool on) { g_team_on = on; },
        "few-row steps in one OpenMP team (True, default) or a parallel region per projection");
}
