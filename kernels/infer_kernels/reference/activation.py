"""SwiGLU activation (torch reference)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._checks import FLOAT_DTYPES, check_last_dim_contiguous, check_tensor


def check_silu_and_mul_args(x: torch.Tensor, out: torch.Tensor | None) -> int:
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    if x.shape[1] % 2:
        raise ValueError(f"x last dim must be even (gate | up), got {x.shape[1]}")
    d = x.shape[1] // 2
    if out is not None:
        check_tensor("out", out, shape=(x.shape[0], d), dtypes=(x.dtype,))
        check_last_dim_contiguous("out", out)
    return d


def silu_and_mul_ref(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x [T, 2d]`` (gate first, up second) -> ``silu(gate) * up`` ``[T, d]``, fp32 math."""
    d = check_silu_and_mul_args(x, out)
    y = (F.silu(x[:, :d].float()) * x[:, d:].float()).to(x.dtype)
    return y if out is None else out.copy_(y)
