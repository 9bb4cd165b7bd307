"""RMSNorm and fused residual-add + RMSNorm, one program per token row (fp32 math)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checks import check_last_dim_contiguous, check_tensor
from ._triton_utils import next_pow2
from .reference.norm import check_norm_args, fused_add_rms_norm_ref, rms_norm_ref

__all__ = ["fused_add_rms_norm", "fused_add_rms_norm_ref", "rms_norm", "rms_norm_ref"]

MAX_HIDDEN = 65536  # one row must fit one program's registers


@triton.jit
def _rms_norm_kernel(
    x_ptr, residual_ptr, weight_ptr, out_ptr, residual_out_ptr, eps, stride_xt, stride_rt,
    stride_ot, stride_rot,
    HIDDEN: tl.constexpr, BLOCK_H: tl.constexpr, ADD_RESIDUAL: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_H)
    mask = offs < HIDDEN
    x = tl.load(x_ptr + row * stride_xt + offs, mask=mask, other=0.0)
    if ADD_RESIDUAL:
        r = tl.load(residual_ptr + row * stride_rt + offs, mask=mask, other=0.0)
        # Round the sum to the activation dtype first (as HF does), then normalize that.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(residual_out_ptr.dtype.element_ty)
        tl.store(residual_out_ptr + row * stride_rot + offs, x, mask=mask)
    h = x.to(tl.float32)
    inv_rms = tl.rsqrt(tl.sum(h * h, axis=0) / HIDDEN + eps)
    w = tl.load(weight_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(
        out_ptr + row * stride_ot + offs, (h * inv_rms * w).to(out_ptr.dtype.element_ty), mask=mask
    )


def _launch(x, residual, weight, eps, out, residual_out) -> None:
    num_tokens, hidden = x.shape
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden size {hidden} > {MAX_HIDDEN} is not supported by this kernel")
    if num_tokens == 0:
        return
    block_h = next_pow2(hidden)
    add = residual is not None
    if not add:
        residual = residual_out = x  # placeholders
    _rms_norm_kernel[(num_tokens,)](
        x, residual, weight, out, residual_out, float(eps), x.stride(0), residual.stride(0),
        out.stride(0), residual_out.stride(0), HIDDEN=hidden, BLOCK_H=block_h, ADD_RESIDUAL=add,
        num_warps=min(16, max(1, block_h // 256)),  # ~8 elements per thread
    )  # fmt: skip


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out: torch.Tensor | None = None
) -> torch.Tensor:
    """x [T, hidden] fp32/fp16/bf16, weight [hidden] -> x * rsqrt(mean(x^2) + eps) * weight.

    Output in x's dtype; ``out`` may alias ``x`` (each row is read fully before it is written).
    """
    check_norm_args(x, weight, eps, out)
    if out is None:
        out = torch.empty_like(x)
    _launch(x, None, weight, eps, out, None)
    return out


def fused_add_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    out: torch.Tensor | None = None,
    residual_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """new_residual = x + residual; out = rms_norm(new_residual) * weight. Returns both.

    x, residual [T, hidden] same dtype; weight [hidden]. ``out``/``residual_out`` may alias
    x/residual for an in-place update (one read, two writes per element: the fusion's point).
    """
    check_norm_args(x, weight, eps, out)
    check_tensor("residual", residual, shape=tuple(x.shape), dtypes=(x.dtype,))
    check_last_dim_contiguous("residual", residual)
    if residual_out is None:
        residual_out = torch.empty_like(residual)
    check_tensor("residual_out", residual_out, shape=tuple(x.shape), dtypes=(x.dtype,))
    check_last_dim_contiguous("residual_out", residual_out)
    if out is None:
        out = torch.empty_like(x)
    _launch(x, residual, weight, eps, out, residual_out)
    return out, residual_out
