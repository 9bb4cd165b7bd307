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
#include <torch/extension.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "entry_points.h"

namespace {

// How a projection's weights are stored (quant method) -> which packed kernel runs it.
enum LinearKind : int64_t { kDense = 0, kInt8 = 1, kInt4 = 2 };

struct Linear {
  int64_t kind = kDense;
  torch::Tensor wp;      // packed weight (dense_cpu.pack / pack_int4 layouts)
  int64_t n = 0;         // output features
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
      *dst[i] = Linear{kind, wp, n, scale, offset, group, bias};
    }
    layers_.push_back(std::move(l));
  }

  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }

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
    TORCH_CHECK(k_caches.size() == which.size() && v_caches.size() == which.size(),
                "decoder stack: one (k, v) cache per layer run");
    TORCH_CHECK(x.dim() == 2, "decoder stack: x must be [T, hidden]");
    torch::Tensor res = residual.has_value() ? *residual : torch::Tensor();
    const std::tuple<torch::Tensor, torch::Tensor> rope{positions, cos_sin};
    const int64_t t = x.size(0), nq = nh_ * hd_, nk = nkv_ * hd_;
    for (size_t li = 0; li < which.size(); ++li) {
      const int64_t idx = which[li];
      TORCH_CHECK(idx >= 0 && idx < num_layers(), "decoder stack: layer ", idx, " not added");
      const Layer& l = layers_[idx];
      if (!res.defined()) {
        res = x;
        x = ops_.rms_norm(x, l.in_norm, eps_);
      } else {
        std::tie(x, res) = ops_.fused_add_rms_norm(x, res, l.in_norm, eps_);
      }
      const torch::Tensor qkv = linear(x, l.qkv);
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
      attn_.store_kv(k, v, k_caches[li], v_caches[li], slot_mapping);
      const torch::Tensor o = attn_.paged_attention(q, k_caches[li], v_caches[li], block_tables,
                                                    query_start_loc, context_lens, scale_);
      x = linear(o.view({t, nq}), l.o);
      std::tie(x, res) = ops_.fused_add_rms_norm(x, res, l.post_norm, eps_);
      x = linear(ops_.silu_and_mul(linear(x, l.gate_up)), l.down);
    }
    TORCH_CHECK(res.defined(), "decoder stack: run at least one layer");
    return {x, res};
  }

 private:
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
};

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  pybind11::class_<DecoderStack>(m, "DecoderStack")
      .def(pybind11::init<int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double, double>())
      .def("add_layer", &DecoderStack::add_layer)
      .def("num_layers", &DecoderStack::num_layers)
      .def("run", &DecoderStack::run);
}
