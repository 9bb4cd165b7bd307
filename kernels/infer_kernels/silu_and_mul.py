"""SwiGLU: silu(gate) * up for x = [gate | up] (Llama MLP activation)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .reference.activation import check_silu_and_mul_args, silu_and_mul_ref

__all__ = ["silu_and_mul", "silu_and_mul_ref"]

BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(
    x_ptr, out_ptr, stride_xt, stride_ot, D: tl.constexpr, BLOCK_D: tl.constexpr
):  # fmt: skip
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = offs < D
    gate = tl.load(x_ptr + row * stride_xt + offs, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * stride_xt + D + offs, mask=mask, other=0.0).to(tl.float32)
    y = gate * tl.sigmoid(gate) * up
    tl.store(out_ptr + row * stride_ot + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, 2d] fp32/fp16/bf16 (gate first, up second) -> [T, d] in x's dtype, fp32 math."""
    d = check_silu_and_mul_args(x, out)
    if out is None:
        out = torch.empty((x.shape[0], d), device=x.device, dtype=x.dtype)
    if x.shape[0] == 0 or d == 0:
        return out
    _silu_and_mul_kernel[(x.shape[0], triton.cdiv(d, BLOCK))](
        x, out, x.stride(0), out.stride(0), D=d, BLOCK_D=BLOCK
    )  # fmt: skip
    return out
