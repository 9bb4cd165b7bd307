"""RMSNorm and fused residual-add + RMSNorm (torch references, fp32 math).

Semantics follow HF Llama: the residual sum is rounded to the activation dtype first and the
variance is taken of that rounded sum. One difference, on purpose: we multiply by ``weight``
in fp32 and round once, where HF rounds the normalized value before the weight multiply
(at most 1 ulp apart in fp16/bf16; identical in fp32).
"""

from __future__ import annotations

import torch

from .._checks import FLOAT_DTYPES, check_last_dim_contiguous, check_same_device, check_tensor


def check_norm_args(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> None:
    check_tensor("x", x, ndim=2, dtypes=FLOAT_DTYPES)
    check_last_dim_contiguous("x", x)
    check_tensor("weight", weight, shape=(x.shape[1],), dtypes=FLOAT_DTYPES)
    if not isinstance(eps, (float, int)) or eps < 0:
        raise ValueError(f"eps must be a non-negative float, got {eps!r}")
    if out is not None:
        check_tensor("out", out, shape=tuple(x.shape), dtypes=(x.dtype,))
        check_last_dim_contiguous("out", out)
    check_same_device(x=x, weight=weight, out=out)


def _rms(h: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    hf = h.float()
    inv = torch.rsqrt(hf.pow(2).mean(dim=-1, keepdim=True) + eps)
    return hf * inv * weight.float()


def rms_norm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``x [T, hidden]`` -> ``x / sqrt(mean(x^2) + eps) * weight`` in x's dtype."""
    check_norm_args(x, weight, eps, out)
    y = _rms(x, weight, eps).to(x.dtype)
    if out is None:
        return y
    return out.copy_(y)


def fused_add_rms_norm_ref(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``new_residual = x + residual``; ``out = rms_norm(new_residual) * weight``.

    x, residual [T, hidden] same dtype -> (out, new_residual), both in x's dtype. Inputs are
    not modified; pass ``out``/``residual_out`` (may alias x/residual) to reuse buffers.
    """
    check_norm_args(x, weight, eps, out)
    check_tensor("residual", residual, shape=tuple(x.shape), dtypes=(x.dtype,))
    check_last_dim_contiguous("residual", residual)
    if residual_out is not None:
        check_tensor("residual_out", residual_out, shape=tuple(x.shape), dtypes=(x.dtype,))
    new_res = (x.float() + residual.float()).to(x.dtype)
    y = _rms(new_res, weight, eps).to(x.dtype)
    if residual_out is not None:
        new_res = residual_out.copy_(new_res)
    if out is not None:
        y = out.copy_(y)
    return y, new_res
