"""``quant=gptq``: 4-bit group-wise weights rounded by GPTQ (Frantar et al., ICLR 2023).

Same grid, storage and kernels as ``quant=int4`` (asymmetric int4 per group of
``group_size`` inputs, AutoAWQ-compatible canonical form): each group's scale and zero point
come from the full-precision weights, as round-to-nearest sets them ("static groups", so
act-order can visit columns in any order), and GPTQ then chooses every weight's 4-bit code
with error feedback on calibration text (gptq.py). Against ``int4`` (round to nearest) and
``awq`` (scaling + clipping, then round to nearest) at the same group size this isolates what
the rounding itself is worth.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from infer.quant.base import QuantContext
from infer.quant.gptq import ColumnQuantizer, GPTQSettings, gptq_model, take_result
from infer.quant.int4 import Int4WeightOnly
from infer.quant.quantize import int4_groups


def int4_grid(w: torch.Tensor, group_size: int) -> tuple[ColumnQuantizer, Any]:
    """GPTQ grid of ``w [N, K]``: round-to-nearest's int4 groups (scales fp32 [N, K/G],
    zeros [N, K/G]); stored as (codes uint8 [N, K], scales, zeros uint8)."""
    _, scales, zeros = int4_groups(w, group_size)
    zf = zeros.float()

    def to_grid(col: torch.Tensor, j: int) -> torch.Tensor:
        s, z = scales[:, j // group_size], zf[:, j // group_size]
        return ((torch.round(col / s) + z).clamp(0, 15) - z) * s

    def encode(q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        n, k = q.shape
        g = q.float().reshape(n, k // group_size, group_size)
        codes = (torch.round(g / scales.unsqueeze(-1)) + zf.unsqueeze(-1)).clamp(0, 15)
        return codes.reshape(n, k).to(torch.uint8), scales, zeros

    return to_grid, encode


class GPTQInt4(Int4WeightOnly):
    """GPTQ int4 weight-only quantization.

    Args:
        group_size: inputs per (scale, zero) group (SmolLM2: 64 or 32).
        damp, block_size, act_order: GPTQ settings (gptq.gptq_round).
        calib: calibration text settings (``CalibConfig`` fields).
        cache_dir: where the calibration text is cached (None = the default cache dir).
    """

    name = "gptq"
    shard_local = False  # the rounding (prepare_model) saw the whole layer: shard its result
    calibrates = True  # GPTQ rounding runs on calibration activations

    def __init__(
        self,
        group_size: int = 64,
        damp: float = 0.01,
        block_size: int = 128,
        act_order: bool = True,
        calib: Any = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(group_size)
        self.gptq = GPTQSettings.build(damp, block_size, act_order, calib, cache_dir)

    def prepare_model(self, model: nn.Module, ctx: QuantContext) -> None:
        super().prepare_model(model, ctx)
        g = self.group_size
        gptq_model(model, ctx, self.gptq, lambda w: int4_grid(w, g))

    def canonical(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes, scales, zeros = take_result(layer, self.name)
        return codes, scales, zeros
