"""GPTQ rounding (Frantar et al., ICLR 2023): choose each weight's code so the layer's output
error on calibration inputs is small, not each weight's own error.

Round-to-nearest minimizes ``|W - Q|`` entry by entry. GPTQ minimizes ``||X W.T - X Q.T||^2``
over the calibration tokens ``X [T, K]``, whose curvature is ``H = X.T X [K, K]``: it rounds
one input column at a time and spreads that column's rounding error over the columns not yet
rounded, weighted by the inverse Hessian (Optimal Brain Surgeon's update), so correlated
inputs cancel each other's error. The grid is unchanged (any per-column quantizer works:
quant=fp8 passes e4m3 with fixed per-row scales), so storage and kernels are unchanged.

Implementation notes (the paper's, all standard):
  * dampening: ``H += damp * mean(diag H) * I`` keeps the Cholesky stable;
  * dead inputs (``H[j, j] == 0``: never active in calibration) are zeroed, as they
    contribute nothing to the loss;
  * act_order: columns go in decreasing ``H[j, j]`` so the most active inputs are rounded
    while the most freedom to compensate remains;
  * lazy batch updates: errors within a block of ``block_size`` columns are applied in place,
    the rest of the matrix is updated once per block (one GEMM).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from infer.quant import calibration as cal
from infer.quant.base import QuantContext

# (column [N] fp32, index of the column in the ORIGINAL order) -> rounded column [N] fp32
ColumnQuantizer = Callable[[torch.Tensor, int], torch.Tensor]
# a layer's weight [N, K] -> (its column quantizer, encode: rounded fp32 [N, K] -> the stored
# form, e.g. (codes, scales)); the grid is fixed from the weight before any rounding
GridFactory = Callable[[torch.Tensor], tuple[ColumnQuantizer, Callable[[torch.Tensor], Any]]]
RESULT_ATTR = "gptq_result"


def hessian(x: torch.Tensor) -> torch.Tensor:
    """``x [T, K]`` -> ``X.T X / T`` fp32 [K, K] (the loss's curvature up to a factor 2)."""
    xf = x.reshape(-1, x.shape[-1]).float()
    return (xf.T @ xf) / max(1, xf.shape[0])


@torch.no_grad()
def gptq_round(
    w: torch.Tensor,
    h: torch.Tensor,
    quantize: ColumnQuantizer,
    damp: float = 0.01,
    block_size: int = 128,
    act_order: bool = True,
) -> torch.Tensor:
    """Round ``w [N, K]`` column by column with GPTQ's error feedback.

    Args:
        w: weights [N, K] (any float dtype; the work is fp32).
        h: input Hessian [K, K] (``hessian(x)``: any positive multiple works, ``damp`` is
            relative).
        quantize: rounds one column onto the target grid (see ``ColumnQuantizer``).
        damp: relative dampening added to the diagonal (fraction of its mean).
        block_size: columns per lazy-update block.
        act_order: process columns in decreasing ``diag(h)`` order.
    Returns:
        fp32 [N, K]: the rounded weights, every column an output of ``quantize``.
    """
    if w.dim() != 2 or h.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"gptq_round: w [N, K] and h [K, K] needed, got {tuple(w.shape)} and {tuple(h.shape)}")
    if damp <= 0:
        raise ValueError(f"gptq damp must be > 0, got {damp}")
    k = w.shape[1]
    wk = w.float().clone()
    hk = h.float().clone().to(wk.device)
    dead = hk.diagonal() == 0
    hk[dead, dead] = 1.0
    wk[:, dead] = 0.0
    perm = torch.argsort(hk.diagonal(), descending=True) if act_order else torch.arange(k, device=wk.device)
    wk, hk = wk[:, perm], hk[perm[:, None], perm]
    hinv = _inverse_cholesky(hk, damp)
    del hk
    order = perm.tolist()  # host copy: no device sync per column
    q = torch.empty_like(wk)
    for b0 in range(0, k, block_size):
        b1 = min(b0 + block_size, k)
        blk = wk[:, b0:b1].clone()
        err = torch.empty_like(blk)
        hb = hinv[b0:b1, b0:b1]
        for i in range(b1 - b0):
            col = quantize(blk[:, i], order[b0 + i])
            q[:, b0 + i] = col
            e = (blk[:, i] - col) / hb[i, i]
            blk[:, i + 1 :] -= e[:, None] * hb[i, i + 1 :][None, :]
            err[:, i] = e
        wk[:, b1:] -= err @ hinv[b0:b1, b1:]
    return q[:, torch.argsort(perm)]


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor of ``(h + damp * mean(diag h) * I)^-1`` (row i holds column i's
    error-propagation coefficients). ``h`` is dampened in place; a Hessian that is still not
    positive definite (fewer calibration tokens than inputs, or fp32 round-off) gets 10x the
    dampening, up to ``damp = 1`` (then H's own diagonal no longer dominates: an error)."""
    mean_diag = float(h.diagonal().mean())
    added = 0.0
    while True:
        h.diagonal().add_(damp * mean_diag - added)
        added = damp * mean_diag
        chol, info = torch.linalg.cholesky_ex(h)
        if int(info) == 0:  # H^-1 can still be too ill-conditioned for its own factor
            hinv, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
            if int(info) == 0:
                return hinv
        if damp >= 1.0:
            raise RuntimeError(
                f"GPTQ: the calibration Hessian [{h.shape[0]}, {h.shape[0]}] is not positive "
                f"definite even with dampening {damp:g}; use more calibration tokens "
                "(quant.method.calib.*)"
            )
        damp *= 10.0


@dataclass(frozen=True)
class GPTQSettings:
    """A method's GPTQ arguments (``quant.method.*``): ``damp``, ``block_size`` and
    ``act_order`` as in ``gptq_round``; the calibration text and where it is cached."""

    damp: float
    block_size: int
    act_order: bool
    calib: cal.CalibConfig
    cache_dir: Path

    @classmethod
    def build(cls, damp: float, block_size: int, act_order: bool, calib: Any,
              cache_dir: str | Path | None) -> GPTQSettings:
        if not float(damp) > 0 or int(block_size) < 1:
            raise ValueError(f"quant.method.damp must be > 0 and block_size >= 1, got {damp}, {block_size}")
        return cls(float(damp), int(block_size), bool(act_order), cal.CalibConfig.from_any(calib),
                   cal.resolve_cache_dir(cache_dir))


@torch.no_grad()
def gptq_model(model: nn.Module, ctx: QuantContext, settings: GPTQSettings, grid: GridFactory) -> None:
    """Sequential GPTQ over every quantizable Linear in one calibration forward.

    A forward pre-hook rounds each layer before it runs, so later layers calibrate on the
    outputs the quantized model will produce. The rounded weight (``code * scale`` in the
    model dtype) replaces ``weight``; the exact stored form (``encode``'s result) is left on
    the layer for ``take_result`` in ``process_weights_after_loading``, because code * scale
    need not survive a copy into fp16 / bf16.
    """
    st = settings

    def round_layer(_name: str, lin: nn.Module, x: torch.Tensor) -> None:
        w = lin.weight.data
        quantize, encode = grid(w)
        q = gptq_round(w, hessian(x), quantize, st.damp, st.block_size, st.act_order)
        setattr(lin, RESULT_ATTR, encode(q))
        w.copy_(q)

    seqs = cal.calibration_sequences(st.calib, ctx.tokenizer(), st.cache_dir)
    cal.run_with_hooks(model, ctx, seqs, round_layer)


def take_result(layer: nn.Module, method: str) -> tuple[torch.Tensor, ...]:
    """The stored form ``gptq_model`` left on ``layer`` (removed from it, cloned out of
    inference mode); a clear error if the layer was never calibrated."""
    found = layer.__dict__.pop(RESULT_ATTR, None)
    if found is None:
        raise RuntimeError(
            f"quant={method} with GPTQ rounding: this layer was not calibrated (prepare_model "
            "runs GPTQ over the whole model first); round-to-nearest quantizes a layer on its own"
        )
    return tuple(t.clone() for t in found)
