"""Calibration data and activation capture for SmoothQuant (w8a8) and AWQ.

Text comes through ``datasets`` (``infer.eval.data.load_text``: ``builtin:pydoc`` offline,
a local file / dataset folder, or a hub name such as ``wikitext-2-raw-v1`` online).
Sequences are drawn from the SECOND half of the token stream; ``task=eval`` scores windows
and greedy prompts from the first half only (``infer.eval.data``), so calibration never sees
evaluation tokens, whatever the eval settings.

Results (small tensors: per-channel statistics, searched scales and clip values) are cached
under ``<cache_dir>/quant_calib/`` keyed by the model's weight files and every setting that
changes them, so a repeated run skips the calibration forward and the search.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from infer.quant.base import QuantContext
from infer.quant.none import NoQuant


@dataclass(frozen=True)
class CalibConfig:
    """Which text and how much of it (``quant.calib.*`` in the YAML)."""

    data: str = "builtin:pydoc"
    split: str = "train"
    field: str = "text"
    num_seqs: int = 16
    seq_len: int = 256
    seed: int = 0

    @classmethod
    def from_any(cls, c: Any) -> CalibConfig:
        if isinstance(c, CalibConfig):
            return c
        d = dict(c or {})
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(
                f"unknown quant.calib key(s) {unknown}; valid: {sorted(cls.__dataclass_fields__)}"
            )
        return cls(**d)


def calibration_sequences(cfg: CalibConfig, tokenizer: Any, cache_dir: Path) -> list[list[int]]:
    """``num_seqs`` random windows of ``seq_len`` tokens from the text's calibration part
    (its second half: ``infer.eval.data.calibration_part``; evaluation reads only the first)."""
    from infer.eval.data import corpus_ids, load_text, split_point

    text = load_text(cfg.data, cache_dir, cfg.split, cfg.field)
    ids = corpus_ids(tokenizer, text)  # tokenized exactly as evaluation tokenizes it
    lo = split_point(len(ids))
    span = len(ids) - lo - cfg.seq_len
    if span < cfg.num_seqs:
        raise ValueError(
            f"calibration text {cfg.data!r} has {len(ids)} tokens: too few for "
            f"{cfg.num_seqs} x {cfg.seq_len}-token sequences from its second half"
        )
    rng = random.Random(cfg.seed)
    starts = sorted(rng.sample(range(lo, lo + span), cfg.num_seqs))
    return [ids[s : s + cfg.seq_len] for s in starts]


def resolve_cache_dir(cache_dir: str | Path | None) -> Path:
    from infer.models.sources import default_cache_dir

    return Path(cache_dir).expanduser() if cache_dir else default_cache_dir()


def cache_path(cache_dir: Path, method: str, model_folder: Path, settings: dict[str, Any]) -> Path:
    """File for one (method, model weights, settings) combination."""
    files = sorted(model_folder.glob("*.safetensors"))
    fp = [str(model_folder.resolve())] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    blob = json.dumps({"v": 1, "method": method, "model": fp, "settings": settings},
                      sort_keys=True, default=str)
    return cache_dir / "quant_calib" / f"{method}-{hashlib.sha1(blob.encode()).hexdigest()[:16]}.pt"


def load_cached(path: Path) -> dict[str, Any] | None:
    return torch.load(path, weights_only=True) if path.exists() else None


def save_cached(path: Path, obj: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def linear_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, module) of every quantizable Linear (modules with ``out_sizes``)."""
    for name, m in model.named_modules():
        if hasattr(m, "out_sizes") and hasattr(m, "quant"):
            yield name, m


@contextmanager
def full_precision(model: nn.Module) -> Iterator[None]:
    """Run every Linear with plain F.linear on its loaded fp ``weight`` (the method's own
    ``apply`` expects processed storage, which does not exist yet)."""
    fp = NoQuant(cpu_kernel=False)  # calibration statistics stay those of F.linear
    saved = {n: m.quant for n, m in linear_layers(model)}
    try:
        for _, m in linear_layers(model):
            m.quant = fp
        yield
    finally:
        for n, m in linear_layers(model):
            m.quant = saved[n]


@torch.inference_mode()
def run_with_hooks(
    model: nn.Module,
    ctx: QuantContext,
    seqs: list[list[int]],
    on_input: Callable[[str, nn.Module, torch.Tensor], None],
) -> None:
    """Forward ``seqs`` through the full-precision model; ``on_input(name, linear, x [T, K])``
    sees every Linear's input (all sequences' tokens packed along T)."""
    handles = [
        m.register_forward_pre_hook(lambda mod, args, _n=name: on_input(_n, mod, args[0]))
        for name, m in linear_layers(model)
    ]
    try:
        with full_precision(model):
            ctx.forward(seqs)
    finally:
        for h in handles:
            h.remove()


def settings_of(cfg: CalibConfig, **more: Any) -> dict[str, Any]:
    return {**asdict(cfg), **more}
