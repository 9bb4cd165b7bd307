"""``quant=awq``: activation-aware 4-bit weight quantization (Lin et al., MLSys 2024).

Same storage and kernels as ``quant=int4`` (group-wise asymmetric int4); what changes is the
full-precision weight handed to the rounding, prepared on calibration activations:

1. Scale search (per Linear with a foldable producer, fold.py): with ``x_mean[j] = mean|x_j|``
   (and, ``duo_scaling``, ``w_mean[j]`` = mean over rows of |W| normalized per group),
   try ``s = x_mean^a / w_mean^(1-a)`` (or ``x_mean^a``) for ``a = 0, 1/n_grid, ...``,
   normalized to geometric mean 1, plus ``s = 1`` (plain RTN), and keep the ``s`` minimizing
   ``|| x W.T - (x / s) Q(W diag(s)).T ||^2`` on the calibration tokens. Salient input channels
   (large activations) get larger weights, hence relatively finer quantization.
   Scales are folded into the producer (norm weight / Linear rows), so nothing changes at run
   time and AutoAWQ checkpoints can store the result.
2. Clip search (after all scales are folded): per output row and group, shrink the clamp range
   ``max|W|`` by ``1 - i/n_grid`` for ``i < max_shrink * n_grid`` and keep the one minimizing the
   group's output error on a token subsample. q and k rows are not clipped (AutoAWQ's rule:
   attention scores are sensitive to them).
3. Round to nearest int4 (quant=int4's code path).

The loss is the Linear's own output (AutoAWQ measures q/k/v and gate/up on the attention /
MLP block output instead); the activations come from one full-precision forward over the
calibration text, captured by hooks. Search results are cached (calibration.py).

Pre-quantized AutoAWQ checkpoints (config.json ``quantization_config.quant_method == "awq"``,
GEMM version, zero points) load directly: no calibration, their group size wins.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from infer.quant import calibration as cal
from infer.quant.base import QuantContext
from infer.quant.fold import fold_input_scale, producers
from infer.quant.int4 import Int4WeightOnly
from infer.quant.quantize import int4_fake_quant

NO_CLIP_SHARDS = ("q", "k")


class AWQ(Int4WeightOnly):
    """AWQ int4 weight-only quantization.

    Args:
        group_size: inputs per quantization group (SmolLM2: 64 or 32).
        n_grid: grid points of the scale exponent search (and the clip grid's denominator).
        duo_scaling: search ``x_mean^a / w_mean^(1-a)`` (AutoAWQ's default) instead of the
            paper's ``x_mean^a``.
        clip: run the clipping search.
        max_shrink: largest clip shrink tried (0.5 = down to half of max|W|).
        clip_tokens: calibration tokens used by the clip search.
        calib: calibration text settings (``CalibConfig`` fields).
        cache_dir: where search results are cached (None = the default cache dir).
    """

    name = "awq"

    def __init__(
        self,
        group_size: int = 64,
        n_grid: int = 20,
        duo_scaling: bool = True,
        clip: bool = True,
        max_shrink: float = 0.5,
        clip_tokens: int = 512,
        calib: Any = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__(group_size)
        self.n_grid = int(n_grid)
        self.duo_scaling = bool(duo_scaling)
        self.clip = bool(clip)
        self.max_shrink = float(max_shrink)
        self.clip_tokens = int(clip_tokens)
        self.calib = cal.CalibConfig.from_any(calib)
        self.cache_dir = cal.resolve_cache_dir(cache_dir)

    @property
    def calibrates(self) -> bool:  # type: ignore[override]
        """Scale and clip searches need the full model, unless the checkpoint is pre-quantized."""
        return not self.prequantized

    def accept_checkpoint(self, quant_config: dict[str, Any] | None) -> None:
        if not quant_config:
            self.prequantized = False
            return
        qc = {k.lower(): v for k, v in quant_config.items()}
        method = str(qc.get("quant_method", "")).lower()
        problems = []
        if method != "awq":
            problems.append(f"quant_method={method!r} (need 'awq')")
        if int(qc.get("bits", qc.get("w_bit", 4))) != 4:
            problems.append(f"bits={qc.get('bits', qc.get('w_bit'))} (need 4)")
        if not qc.get("zero_point", True):
            problems.append("zero_point=false (need asymmetric with zero points)")
        if str(qc.get("version", "gemm")).lower() != "gemm":
            problems.append(f"version={qc.get('version')!r} (need the GEMM packing)")
        # the LM head is never quantized here anyway; other exclusions are not supported
        skipped = [m for m in (qc.get("modules_to_not_convert") or []) if m != "lm_head"]
        if skipped:
            problems.append(f"modules_to_not_convert={skipped} (unsupported)")
        if problems:
            raise ValueError("cannot load this quantized checkpoint with quant=awq: " + "; ".join(problems))
        self.group_size = int(qc.get("group_size", qc.get("q_group_size", 128)))
        self.prequantized = True

    # -- calibration --------------------------------------------------------------------------
    def settings(self, model: nn.Module) -> dict[str, Any]:
        return cal.settings_of(
            self.calib, group_size=self.group_size, n_grid=self.n_grid, duo=self.duo_scaling,
            clip=self.clip, max_shrink=self.max_shrink, clip_tokens=self.clip_tokens,
            dtype=str(next(model.parameters()).dtype),
        )

    @torch.no_grad()
    def prepare_model(self, model: nn.Module, ctx: QuantContext) -> None:
        super().prepare_model(model, ctx)
        if self.prequantized:
            return
        path = cal.cache_path(self.cache_dir, "awq", ctx.model_folder, self.settings(model))
        found = cal.load_cached(path)
        prods = producers(model)
        if found is not None:
            for name, s in found["scales"].items():
                fold_input_scale(model, name, prods[name], s)  # type: ignore[arg-type]
            for name, mx in found["clips"].items():
                apply_clip(model.get_submodule(name), mx, self.group_size)
            return
        result = self.search(model, ctx, prods)
        cal.save_cached(path, result)

    def search(self, model: nn.Module, ctx: QuantContext, prods: dict) -> dict[str, Any]:  # type: ignore[type-arg]
        """Steps 1-2 of the module docstring; folds and clips ``model`` in place and returns
        {"scales": {linear: s [K]}, "clips": {linear: max [N, K/G]}} for the cache."""
        g = self.group_size
        scales: dict[str, torch.Tensor] = {}
        samples: dict[str, torch.Tensor] = {}

        def on_input(name: str, lin: nn.Module, x: torch.Tensor) -> None:
            x = x.detach().float()
            if prods.get(name) is not None:
                scales[name] = search_scale(lin.weight.data.float(), x, g, self.n_grid, self.duo_scaling)
            step = max(1, x.shape[0] // self.clip_tokens)
            samples[name] = x[::step][: self.clip_tokens].clone()

        seqs = cal.calibration_sequences(self.calib, ctx.tokenizer(), self.cache_dir)
        cal.run_with_hooks(model, ctx, seqs, on_input)
        for name, s in scales.items():
            fold_input_scale(model, name, prods[name], s)
        clips: dict[str, torch.Tensor] = {}
        if self.clip:
            for name, lin in cal.linear_layers(model):
                x = samples[name]
                if name in scales:
                    x = x / scales[name]
                keep = clip_rows(lin)
                mx = search_clip(lin.weight.data.float(), x, g, self.n_grid, self.max_shrink)
                orig = weight_group_absmax(lin.weight.data.float(), g)
                mx[~keep] = orig[~keep]  # unclipped rows keep their own range
                clips[name] = mx
                apply_clip(lin, mx, g)
        return {"scales": scales, "clips": clips}


def clip_rows(lin: nn.Module) -> torch.Tensor:
    """bool [N]: output rows the clip search may touch (not the q/k shards)."""
    keep = torch.ones(lin.out_features, dtype=torch.bool)
    for shard in NO_CLIP_SHARDS:
        if shard in getattr(lin, "shard_names", []):
            a, n = lin.shard_offset(shard)
            keep[a : a + n] = False
    return keep


def weight_group_absmax(w: torch.Tensor, group_size: int) -> torch.Tensor:
    n, k = w.shape
    return w.reshape(n, k // group_size, group_size).abs().amax(-1)


def search_scale(
    w: torch.Tensor, x: torch.Tensor, group_size: int, n_grid: int, duo: bool
) -> torch.Tensor:
    """Best per-input-channel scale s [K] for ``w [N, K]`` on inputs ``x [T, K]``."""
    n, k = w.shape
    x_mean = x.abs().mean(0)
    wa = w.abs().reshape(n, k // group_size, group_size)
    w_mean = (wa / (wa.amax(-1, keepdim=True) + 1e-6)).reshape(n, k).mean(0)
    ref = x @ w.t()
    candidates = [torch.ones(k, dtype=w.dtype, device=w.device)]  # a = "off": plain RTN
    for i in range(n_grid):
        a = i / n_grid
        s = x_mean.pow(a) / (w_mean.pow(1 - a) + 1e-4) if duo else x_mean.pow(a)
        s = s.clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s[~torch.isfinite(s)] = 1.0
        candidates.append(s)
    best, best_s = float("inf"), candidates[0]
    for s in candidates:
        wq = int4_fake_quant(w * s[None, :], group_size) / s[None, :]
        err = (x @ wq.t() - ref).pow(2).mean().item()
        if err < best:
            best, best_s = err, s
    return best_s


def search_clip(
    w: torch.Tensor, x: torch.Tensor, group_size: int, n_grid: int, max_shrink: float,
    rows_per_batch: int = 1024,
) -> torch.Tensor:
    """Best clamp value max [N, K/G] per output row and group (AutoAWQ's clip search)."""
    n, k = w.shape
    ng = k // group_size
    xg = x.reshape(-1, ng, group_size).permute(1, 0, 2)  # [ng, T, G]
    out = torch.empty(n, ng, dtype=w.dtype, device=w.device)
    for r0 in range(0, n, rows_per_batch):
        wb = w[r0 : r0 + rows_per_batch]
        nb = wb.shape[0]
        wg = wb.reshape(nb, ng, group_size)
        org_max = wg.abs().amax(-1)  # [nb, ng]
        ref = torch.bmm(xg, wg.permute(1, 2, 0))  # [ng, T, nb]
        best_max, best_err = org_max.clone(), torch.full_like(org_max, float("inf"))
        for i in range(int(max_shrink * n_grid)):
            mx = org_max * (1 - i / n_grid)
            wc = torch.maximum(torch.minimum(wg, mx[..., None]), -mx[..., None])
            wq = int4_fake_quant(wc.reshape(nb, k), group_size).reshape(nb, ng, group_size)
            err = (torch.bmm(xg, wq.permute(1, 2, 0)) - ref).pow(2).mean(1).t()  # [nb, ng]
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_max = torch.where(better, mx, best_max)
        out[r0 : r0 + nb] = best_max
    return out


@torch.no_grad()
def apply_clip(lin: nn.Module, mx: torch.Tensor, group_size: int) -> None:
    """Clamp ``lin.weight`` per (row, group) to [-mx, mx] in place."""
    w = lin.weight.data
    n, k = w.shape
    wg = w.view(n, k // group_size, group_size)
    m = mx.to(w.dtype)[..., None]
    wg.copy_(torch.maximum(torch.minimum(wg, m), -m))
