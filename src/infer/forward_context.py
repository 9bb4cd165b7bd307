"""Per-step state passed explicitly through a model's forward (no module globals, so a
draft and a target model can coexist in one process)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from infer.attention.base import AttentionBackend, AttentionMetadata


@dataclass
class ForwardContext:
    """backend + its step metadata + this model's per-layer (k_cache, v_cache) tensors."""

    backend: AttentionBackend
    metadata: AttentionMetadata
    kv_caches: list[tuple[torch.Tensor, torch.Tensor]]
