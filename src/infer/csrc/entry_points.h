// Tables of C++ entry points that the CPU extensions hand to each other.
//
// Each extension is its own shared object built with its own flags (the model ops keep
// -ffp-contract=off so their roundings equal the torch path's; the GEMMs do not), so the
// decoder stack (models/csrc/decoder_stack_cpu.cpp) cannot simply compile their sources in.
// Instead every extension exposes `entry_points()`: the address of a static table of its
// functions, typed below. The stack calls them directly, without Python or pybind in
// between. All extensions link the same libtorch, so at::Tensor crosses the boundary as is.
// This header is hashed into every extension's build key (cpp_ext.INCLUDE): changing a table
// rebuilds all of them together, and `version` catches a table from a stale build.
#pragma once

#include <torch/extension.h>

#include <atomic>
#include <cstdint>
#include <tuple>

namespace infer_ep {

constexpr int64_t kVersion = 2;

// bytes per thread of the band state team_init writes (one cache line each)
constexpr int64_t kTeamBandBytes = 64;

// quant/csrc/dense_linear_cpu.cpp
struct DenseLinear {
  int64_t version;
  // (x [M, K], packed W, N, bias [N] or empty) -> [M, N]
  torch::Tensor (*packed_linear)(torch::Tensor, torch::Tensor, int64_t, torch::Tensor);
  // (x, packed int8 codes, N, scale, bias) -> [M, N] fp32
  torch::Tensor (*packed_linear_int8)(torch::Tensor, torch::Tensor, int64_t, torch::Tensor,
                                      torch::Tensor);
  // (x, packed int4 codes, N, scale, offset, group size, bias) -> [M, N] fp32
  torch::Tensor (*packed_linear_int4)(torch::Tensor, torch::Tensor, int64_t, torch::Tensor,
                                      torch::Tensor, int64_t, torch::Tensor);
  // team decode on fp32 packed W (the decoder stack's one-team steps):
  // (bands, N, threads) -> bands used
  int64_t (*team_init)(void*, int64_t, int64_t);
  // (x, wp, bias or null, out, M, K, N, bands, bands used, thread id): one thread's part
  void (*team_linear)(const float*, const float*, const float*, float*, int64_t, int64_t,
                      int64_t, void*, int64_t, int64_t);
  // (wp, K, N, thread id, threads, max bytes, flag, until): prefetch the thread's first lines
  void (*team_preload)(const float*, int64_t, int64_t, int64_t, int64_t, int64_t,
                       const std::atomic<int64_t>*, int64_t);
};

// layers/csrc/cpu_model_ops.cpp
struct ModelOps {
  int64_t version;
  at::Tensor (*rms_norm)(const at::Tensor&, const at::Tensor&, double);
  std::tuple<at::Tensor, at::Tensor> (*fused_add_rms_norm)(const at::Tensor&, const at::Tensor&,
                                                           const at::Tensor&, double);
  at::Tensor (*silu_and_mul)(const at::Tensor&);
  at::Tensor (*rotary)(at::Tensor, const std::tuple<at::Tensor, at::Tensor>&);
};

// attention/csrc/paged_attention_cpu.cpp
struct PagedAttention {
  int64_t version;
  // (k, v [T, Hk, D], k_cache, v_cache, slot_mapping int64 [T])
  void (*store_kv)(torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor);
  // (q [T, Hq, D], k_cache, v_cache, block_tables, query_start_loc, context_lens, scale)
  torch::Tensor (*paged_attention)(torch::Tensor, torch::Tensor, torch::Tensor, torch::Tensor,
                                   torch::Tensor, torch::Tensor, double);
};

}  // namespace infer_ep
