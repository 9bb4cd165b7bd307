"""Loader for the CPU weight-only quantized linear extension (csrc/quant_linear_cpu.cpp).

Built once with the system C++ compiler through torch.utils.cpp_extension and cached under
$INFER_CACHE_DIR/torch_extensions (keyed by torch version and the CPU's vector flags, since
it is compiled with -march=native). If the build fails (no compiler), ``load()`` returns None
and the quant methods use their torch paths (dequantize, then F.linear).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from infer.models.sources import default_cache_dir

_SRC = Path(__file__).parent / "csrc" / "quant_linear_cpu.cpp"


def _cpu_tag() -> str:
    """Short hash of the CPU flags (the build uses -march=native)."""
    try:
        flags = next(
            (ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("flags")), ""
        )
    except OSError:
        flags = ""
    return hashlib.sha1(flags.encode()).hexdigest()[:8]


@lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """Compile (first time) and import the extension; None if that is impossible or disabled
    (INFER_DISABLE_CPU_KERNEL set)."""
    if os.environ.get("INFER_DISABLE_CPU_KERNEL"):
        return None
    from torch.utils.cpp_extension import load as load_ext

    build = default_cache_dir() / "torch_extensions" / f"torch{torch.__version__}-quant-{_cpu_tag()}"
    build.mkdir(parents=True, exist_ok=True)
    try:
        return load_ext(
            name="infer_quant_linear_cpu",
            sources=[str(_SRC)],
            extra_cflags=["-O3", "-march=native", "-fopenmp-simd"],
            build_directory=str(build),
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 (no compiler, unsupported platform ...)
        warnings.warn(f"CPU quantized-linear kernel unavailable, using torch ops: {e}", stacklevel=2)
        return None


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
