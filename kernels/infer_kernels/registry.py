"""Pick an op's implementation by name: ``get_op("paged_decode_attention", "triton")``.

"torch" returns the reference (runs anywhere; the CPU path); "triton" returns the launcher.
Triton modules are imported only when a Triton op is requested, so a CPU-only caller never
imports Triton (and TRITON_INTERPRET can still be set before the first Triton import).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

IMPLS = ("torch", "triton")

# op name -> module that defines both `<name>` (Triton launcher) and `<name>_ref`.
_OPS: dict[str, str] = {
    "store_kvcache": "store_kvcache",
    "paged_decode_attention": "decode_attention",
    "paged_prefill_attention": "prefill_attention",
    "rms_norm": "rms_norm",
    "fused_add_rms_norm": "rms_norm",
    "rotary_embedding": "rotary",
    "silu_and_mul": "silu_and_mul",
    "w8a8_int8_gemm": "scaled_gemm",
    "fp8_scaled_gemm": "scaled_gemm",
    "awq_gemm": "awq_gemm",
    "quantize_per_token_int8": "quantize",
    "quantize_per_token_fp8": "quantize",
}


def op_names() -> list[str]:
    """All registered op names, sorted."""
    return sorted(_OPS)


def get_op(name: str, impl: str) -> Callable:
    """Return the ``impl`` ("torch" | "triton") implementation of op ``name``.

    Both implementations of an op share one signature. Raises ValueError naming the valid
    ops / impls on a bad argument.
    """
    if name not in _OPS:
        raise ValueError(f"unknown kernel op {name!r}; valid ops: {', '.join(op_names())}")
    if impl not in IMPLS:
        raise ValueError(f"unknown impl {impl!r} for op {name!r}; valid impls: {', '.join(IMPLS)}")
    if impl == "torch":
        module = importlib.import_module(".reference", __package__)
        return getattr(module, f"{name}_ref")
    module = importlib.import_module(f".{_OPS[name]}", __package__)
    return getattr(module, name)
