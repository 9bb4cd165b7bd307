"""The QuantMethod protocol: a linear layer owns its parameters, the method owns the math."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class QuantMethod(Protocol):
    """How a linear layer stores and applies its weight.

    ``create_weights`` registers parameters on the layer (each parameter carries
    ``output_dim``/``input_dim`` attributes so tensor parallelism can shard it without
    knowing the method); the loader fills them with the checkpoint's fp weights through
    ``param.weight_loader``; ``process_weights_after_loading`` converts them (quantizes,
    packs); ``apply`` computes ``x @ W.T + bias``.
    """

    name: str

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        """Register the layer's weight parameter(s): logical shape [out_features, in_features]."""
        ...

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Convert loaded full-precision weights into the method's storage (in place)."""
        ...

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [T, in_features] -> [T, out_features] in x's dtype."""
        ...
