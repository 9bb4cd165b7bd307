"""Fast unquantized linear on CPU (csrc/dense_linear_cpu.cpp): ``x @ W.T + bias`` for fp32 and
bf16 on weights packed once into 64-column k-major panels (``pack``), so decode streams each
matrix as one sequential read and prefill runs a register-blocked GEMM without reductions.
The same panels of int8 codes with per-column scales serve weight-only int8 on fp32
activations (``packed_linear_int8``; quant=int8), and panels of int4 codes (two k per byte)
with per-(column, group) scale and offset serve int4 / awq / gptq (``packed_linear_int4``).

Built once with the system C++ compiler through torch.utils.cpp_extension and cached under
$INFER_CACHE_DIR/torch_extensions (the name carries a hash of the source and of the CPU's
flags, since it is compiled with -march=native). If the build fails (no compiler) or
INFER_DISABLE_CPU_KERNEL is set, ``usable`` is False and callers keep F.linear on [N, K].

Numbers against F.linear and the memory / compute rooflines: scripts/bench_linear.py.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import ModuleType

import torch

from infer import hugepages
from infer.cpp_ext import load_cpp_extension

_SRC = Path(__file__).parent / "csrc" / "dense_linear_cpu.cpp"
DTYPES = (torch.float32, torch.bfloat16)
PANEL = 64  # output columns per packed panel (the kernel's kPanel)
_EMPTY = {dt: torch.empty(0, dtype=dt) for dt in DTYPES}


@lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """Compile (first time) and import the extension; None if impossible or disabled."""
    return load_cpp_extension("infer_dense_linear_cpu", _SRC, ["-O3", "-march=native"], "CPU dense-linear kernel")


def usable(w: torch.Tensor) -> bool:
    """Whether weight ``w`` [N, K] can be packed for the kernel: on CPU, fp32 or bf16, and the
    extension built."""
    return w.device.type == "cpu" and w.dtype in DTYPES and w.dim() == 2 and load() is not None


def pack(w: torch.Tensor) -> torch.Tensor:
    """W [N, K] -> the kernel's panels (a new contiguous tensor; N padded to 64 with zeros; on
    CPU placed on transparent huge pages where the OS allows, see ``infer.hugepages``).

    fp32 (and int8 codes): [ceil(N/64), K, 64], element [p, k, j] = W[64p + j, k].
    bf16: [ceil(N/64), ceil(K/2), 64, 2], element [p, i, j, t] = W[64p + j, 2i + t] (K padded
    to even with zeros).
    """
    n, k = w.shape
    np_ = -(-n // PANEL)
    pairs = w.dtype == torch.bfloat16
    kp = k + (k & 1) if pairs else k
    padded = torch.zeros(np_ * PANEL, kp, dtype=w.dtype, device=w.device)
    padded[:n, :k] = w
    if not pairs:
        panels = padded.view(np_, PANEL, kp).transpose(1, 2)
    else:
        panels = padded.view(np_, PANEL, kp // 2, 2).permute(0, 2, 1, 3)
    if w.device.type != "cpu":
        return panels.contiguous()
    # decode streams these once per token: on huge pages the stream is not TLB-bound
    return hugepages.empty(tuple(panels.shape), w.dtype).copy_(panels)


def unpack_rows(wp: torch.Tensor, rows: torch.Tensor, k: int) -> torch.Tensor:
    """Rows ``rows`` (int64 [T]) of the W [N, K] that ``wp = pack(W)`` holds -> [T, K] in W's
    dtype: the token lookup of a tied embedding whose only copy is the packed LM head."""
    p, j = rows // PANEL, rows % PANEL
    if wp.dim() == 3:  # fp32 / int8 [Np, K, 64]: advanced indices around a slice land first -> [T, K]
        return wp[p, :, j]
    return wp[p, :, j, :].reshape(rows.shape[0], -1)[:, :k]  # bf16 [T, K2, 2] -> [T, K]


def packed_linear(
    x: torch.Tensor, wp: torch.Tensor, n: int, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ W.T + bias`` with ``wp = pack(W)``, W [n, K].

    x: [..., K] in W's dtype (fp32 | bf16); bias: [n] or None -> [..., n] in that dtype.
    Uses every thread torch is set to (``torch.set_num_threads``).
    """
    mod = load()
    assert mod is not None, "dense_cpu.packed_linear called without the extension"
    b = bias.contiguous() if bias is not None else _EMPTY[x.dtype]
    if x.dim() == 2 and x.is_contiguous():
        # the model's case: no reshape/view round trip (each is an op on the per-token path)
        return mod.packed_linear(x, wp, n, b)
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    return mod.packed_linear(x2, wp, n, b).view(*x.shape[:-1], n)


def quant_usable(x: torch.Tensor) -> bool:
    """Whether ``packed_linear_int8`` / ``packed_linear_int4`` can take activations ``x``
    (fp32 on CPU, extension built)."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and load() is not None


def packed_linear_int8(
    x: torch.Tensor, wp: torch.Tensor, n: int, scale: torch.Tensor, bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``x @ (Q * scale[:, None]).T + bias`` with ``wp = pack(Q)``, Q int8 [n, K].

    x: [..., K] fp32; scale: fp32 [n] contiguous (lanes past n are never read); bias: [n]
    fp32 or None -> [..., n] fp32. The sums are fp32 (codes widened exactly), scaled per
    column, then the bias added: the torch reference up to summation order.
    """
    mod = load()
    assert mod is not None, "dense_cpu.packed_linear_int8 called without the extension"
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    b = bias.contiguous() if bias is not None else _EMPTY[torch.float32]
    return mod.packed_linear_int8(x2, wp, n, scale, b).view(*x.shape[:-1], n)


def pack_int4(
    codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Group-wise int4 (codes uint8 0..15 [N, K], scale / offset fp32 [N, K/G]; W = code *
    scale + offset) -> the kernel's panels, N padded to 64 with zeros:

    codes [ceil(N/64), K/2, 64] uint8, element [p, i, j] = Q[64p + j, 2i] | Q[64p + j, 2i+1] << 4;
    scale, offset [ceil(N/64), K/G, 64] fp32, element [p, g, j] = scale[64p + j, g].
    """
    n, k = codes.shape
    if k % 2:
        raise ValueError(f"pack_int4: K must be even, got {k}")
    np_ = -(-n // PANEL)
    c = torch.zeros(np_ * PANEL, k, dtype=torch.uint8, device=codes.device)
    c[:n] = codes
    c = c.view(np_, PANEL, k // 2, 2)
    wp = (c[..., 0] | (c[..., 1] << 4)).transpose(1, 2).contiguous()

    def panels(t: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(np_ * PANEL, t.shape[1], dtype=torch.float32, device=t.device)
        out[:n] = t
        return out.view(np_, PANEL, t.shape[1]).transpose(1, 2).contiguous()

    return wp, panels(scale), panels(offset)


def unpack_int4(wp: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, n: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inverse of :func:`pack_int4`: (codes uint8 [n, K], scale [n, K/G], offset [n, K/G])."""
    np_, half, _ = wp.shape
    pairs = torch.stack([wp & 0xF, wp >> 4], dim=-1)  # [Np, K/2, 64, 2]
    codes = pairs.permute(0, 2, 1, 3).reshape(np_ * PANEL, half * 2)[:n]

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(1, 2).reshape(np_ * PANEL, t.shape[1])[:n]

    return codes, rows(scale), rows(offset)


def packed_linear_int4(
    x: torch.Tensor, wp: torch.Tensor, n: int, scale: torch.Tensor, offset: torch.Tensor,
    group_size: int, bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x @ W.T + bias`` with ``(wp, scale, offset) = pack_int4(...)`` of W [n, K] (group-wise).

    x: [..., K] fp32; bias: [n] fp32 or None -> [..., n] fp32. Up to 2 rows the codes are
    decoded in registers (y = sum over groups of scale * (x . Q) + offset * sum(x)); more rows
    dequantize one panel at a time (Q * scale + offset) and run the fp32 panel GEMM.
    """
    mod = load()
    assert mod is not None, "dense_cpu.packed_linear_int4 called without the extension"
    x2 = x.reshape(-1, x.shape[-1]).contiguous()
    b = bias.contiguous() if bias is not None else _EMPTY[torch.float32]
    return mod.packed_linear_int4(x2, wp, n, scale, offset, group_size, b).view(*x.shape[:-1], n)


def kernel(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Pack ``w`` [N, K] and run the kernel (tests and benchmarks; shapes as ``packed_linear``)."""
    return packed_linear(x, pack(w), w.shape[0], bias)
