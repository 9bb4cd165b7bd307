"""A researcher's own attention backend, living outside ``infer`` (see test_extend.py)."""

from __future__ import annotations

import torch

from infer.attention.torch_ref import TorchRefBackend


class CountingBackend(TorchRefBackend):
    """The reference backend plus a call counter (proof that this class did the attending)."""

    name = "toy"
    calls = 0  # class-level: the instance lives inside the built engine

    def forward(self, q, k, v, kv_cache, metadata, scale) -> torch.Tensor:  # type: ignore[no-untyped-def]
        type(self).calls += 1
        return super().forward(q, k, v, kv_cache, metadata, scale)
