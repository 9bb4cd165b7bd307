"""Loader for the CPU model-ops extension (csrc/cpu_model_ops.cpp): RMSNorm, residual add +
RMSNorm, SwiGLU activation, neox rotary embedding and the greedy argmax, one C++ call each.

Built once with the system C++ compiler through ``infer.cpp_ext`` (cached under
$INFER_CACHE_DIR/torch_extensions). ``load()`` is None when the build fails or
INFER_DISABLE_CPU_KERNEL is set; ``kernels=auto`` then keeps the torch paths.

Functions of the loaded module (activations fp32 | bf16 | fp16, fp32 math inside):
  rms_norm(x [..., H], weight [H], eps) -> new [..., H]
  fused_add_rms_norm(x, residual [..., H], weight, eps) -> (normed, x + residual), both new
  silu_and_mul(x [..., 2I]) -> new [..., I]
  rotary(x [T, heads, D], (positions int64 [T], cos_sin fp32 [max_pos, rd])) -> x rotated in
      place (neox layout, first rd dims)
  argmax_rows(logits fp32 [N, V]) -> int64 [N]: torch.argmax(-1)'s indices (first maximum,
      NaN counts as the maximum); the greedy sampler's pick (``sampling.greedy_tokens``)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from infer.cpp_ext import load_cpp_extension

_SRC = Path(__file__).parent / "csrc" / "cpu_model_ops.cpp"
# -ffp-contract=off: no fused multiply-add, so the rope's roundings equal the torch path's;
# -fno-math-errno lets expf vectorize (libmvec); no other fast-math licence taken
_CFLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fno-math-errno", "-ffp-contract=off"]


@lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """Compile (first time) and import the extension; None if impossible or disabled."""
    return load_cpp_extension("infer_cpu_model_ops", _SRC, _CFLAGS, "CPU model-ops kernel")


def available() -> bool:
    """Whether the extension is built and importable."""
    return load() is not None


def rope_factors(
    positions: torch.Tensor, cos_sin: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-step rope state of the C++ ``rotary``: the kernel gathers cos/sin per token itself,
    so this is (positions int64 [T], the fp32 table) unchanged; ``dtype`` is unused."""
    return positions, cos_sin
