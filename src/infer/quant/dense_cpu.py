"""Fast unquantized linear on CPU (csrc/dense_linear_cpu.cpp): ``x @ w.T + bias`` for fp32 and
bf16 with the weight in its checkpoint layout (row-major [N, K], nothing repacked).

Built once with the system C++ compiler through torch.utils.cpp_extension and cached under
$INFER_CACHE_DIR/torch_extensions (the name carries a hash of the source and of the CPU's
flags, since it is compiled with -march=native). If the build fails (no compiler) or
INFER_DISABLE_CPU_KERNEL is set, ``usable`` is False and callers use ``F.linear``.

Where it stands against ``F.linear`` (scripts/bench_linear.py): it streams the weights at close
to the memory read bandwidth for a few activation rows (decode), where the BLAS GEMV reaches
about half; for many rows (prefill) both are compute-bound and the BLAS GEMM is used.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch
import torch.nn.functional as F

from infer.models.sources import default_cache_dir
from infer.quant.cpu_kernel import _cpu_tag

_SRC = Path(__file__).parent / "csrc" / "dense_linear_cpu.cpp"
DTYPES = (torch.float32, torch.bfloat16)
# activation rows above which F.linear (the BLAS GEMM) takes over; set from
# scripts/bench_linear.py on the 2-core EPYC machines (see ``linear``)
MAX_ROWS = {torch.float32: 32, torch.bfloat16: 1 << 30}
_EMPTY = {dt: torch.empty(0, dtype=dt) for dt in DTYPES}


@lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """Compile (first time) and import the extension; None if impossible or disabled."""
    if os.environ.get("INFER_DISABLE_CPU_KERNEL"):
        return None
    from torch.utils.cpp_extension import load as load_ext

    # source + CPU-flag hash in the name: an edited kernel never meets a stale build
    digest = hashlib.sha256(_SRC.read_bytes()).hexdigest()[:10]
    name = f"infer_dense_linear_cpu_{digest}_{_cpu_tag()}"
    build = default_cache_dir() / "torch_extensions" / f"torch{torch.__version__}" / name
    build.mkdir(parents=True, exist_ok=True)
    try:
        return load_ext(
            name=name,
            sources=[str(_SRC)],
            extra_cflags=["-O3", "-march=native"],
            build_directory=str(build),
            verbose=False,
        )
    except Exception as e:  # noqa: BLE001 (no compiler, unsupported platform ...)
        warnings.warn(f"CPU dense-linear kernel unavailable, using F.linear: {e}", stacklevel=2)
        return None


def usable(x: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether ``kernel`` can take ``x`` and ``w``: both on CPU, one dtype (fp32 or bf16),
    and the extension built."""
    return (
        x.device.type == "cpu"
        and w.device.type == "cpu"
        and x.dtype == w.dtype
        and x.dtype in DTYPES
        and w.dim() == 2
        and load() is not None
    )


def kernel(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The C++ kernel alone, any number of rows (tests and benchmarks; needs ``usable``).

    x: [..., K], w: [N, K], bias: [N] or None, one dtype (fp32 | bf16) -> [..., N] in it.
    """
    mod = load()
    assert mod is not None, "dense_cpu.kernel called without the extension"
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    b = bias.contiguous() if bias is not None else _EMPTY[x.dtype]
    out = mod.dense_linear(x2, w.contiguous(), b)
    return out.view(*x.shape[:-1], w.shape[0])


def linear(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, w, bias)``, through the kernel where it is faster (CPU, fp32/bf16, up to
    ``MAX_ROWS[dtype]`` rows), else F.linear itself. Shapes as ``kernel``."""
    rows = x.numel() // max(x.shape[-1], 1)
    if usable(x, w) and rows <= MAX_ROWS[x.dtype]:
        return kernel(x, w, bias)
    return F.linear(x, w, bias)
