"""Loader for the CPU weight-only quantized linear extension (csrc/quant_linear_cpu.cpp).

Built once with the system C++ compiler through torch.utils.cpp_extension and cached under
$INFER_CACHE_DIR/torch_extensions (keyed by torch version and the CPU's vector flags, since
it is compiled with -march=native). If the build fails (no compiler), ``load()`` returns None
and the quant methods use their torch paths (dequantize, then F.linear).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from infer.cpp_ext import load_cpp_extension

_SRC = Path(__file__).parent / "csrc" / "quant_linear_cpu.cpp"


@lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """Compile (first time) and import the extension; None if that is impossible or disabled
    (INFER_DISABLE_CPU_KERNEL set)."""
    return load_cpp_extension(
        "infer_quant_linear_cpu", _SRC, ["-O3", "-march=native", "-fopenmp-simd"],
        "CPU quantized-linear kernel",
    )


def usable(x: torch.Tensor) -> bool:
    """Whether the kernel can take activations ``x`` (fp32 on CPU, extension built)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and load() is not None


# activation rows up to which the GEMV kernels beat chunked dequantize + GEMM on the 2-core
# Xeon/EPYC machines (scripts/bench_quant.py, /tmp-free microbenchmarks in its docstring)
KERNEL_MAX_ROWS = 8
INT8, FP8, INT4 = 0, 1, 2
_EMPTY = torch.empty(0)


def linear(
    x: torch.Tensor,
    w: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor | None,
    kind: int,
    offset: torch.Tensor | None = None,
    group_size: int = 0,
) -> torch.Tensor:
    """``x [M, K] @ dequant(w).T + bias`` on CPU fp32 (call only when ``usable(x)``).

    kind INT8 / FP8: ``w`` [N, K] 1-byte codes (fp8 viewed as uint8), ``scale`` [N].
    kind INT4: ``w`` uint8 [N, K/2] (pack_int4_cpu layout), ``scale``/``offset`` [N, K/G].
    Up to KERNEL_MAX_ROWS rows: the GEMV kernels (weights decoded in registers); beyond:
    chunks of weight rows dequantized into an L2-sized fp32 buffer and fed to the BLAS GEMM.
    """
    mod = load()
    assert mod is not None, "cpu_kernel.linear called without the extension"
    x = x.contiguous()
    b = bias if bias is not None else _EMPTY
    if x.shape[0] <= KERNEL_MAX_ROWS:
        if kind == INT8:
            return mod.int8_linear(x, w, scale, b)
        if kind == FP8:
            return mod.fp8_linear(x, w, scale, b)
        return mod.int4_linear(x, w, scale, offset, group_size, b)
    return mod.dequant_linear(x, w, scale, offset if offset is not None else _EMPTY, kind, group_size, b)
