"""A layer-skipping view of a target model: the draft of ``spec=self spec.mode=layers``.

It runs the target's own embedding, a subset of its decoder layers, its final norm and LM
head (weights shared read-only), so it costs no extra weight memory. Its KV differs from the
target's (the hidden states entering each kept layer differ), so it runs with its own cache.
"""

from __future__ import annotations

import torch
from torch import nn

from infer.forward_context import ForwardContext


class LayerSkipModel(nn.Module):
    """``target`` with only ``keep`` (sorted layer indices) run.

    forward(input_ids int64 [T], positions int64 [T], ctx) -> hidden [T, hidden];
    compute_logits(hidden [N, hidden]) -> fp32 [N, vocab] (the target's LM head). Layers keep
    their original indices, so ``ctx.kv_caches`` is indexed like the target's (entries of
    skipped layers are never read)."""

    def __init__(self, target: nn.Module, keep: list[int]) -> None:
        super().__init__()
        n = len(target.layers)  # type: ignore[arg-type]
        bad = [i for i in keep if not 0 <= i < n]
        if bad or not keep:
            raise ValueError(f"layer-skip draft: layers to keep {keep} must be a non-empty subset of 0..{n - 1}")
        # a plain attribute, not a submodule: the target's parameters are not re-registered
        object.__setattr__(self, "target", target)
        self.keep = sorted(set(keep))

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, ctx: ForwardContext) -> torch.Tensor:
        t = self.target
        x, residual = t.run_layer_list(self.keep, t.embed(input_ids), None, positions, ctx)
        x, _ = t.norm(x, residual)
        return x

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.target.compute_logits(hidden)  # type: ignore[operator]
