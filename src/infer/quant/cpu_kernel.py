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
