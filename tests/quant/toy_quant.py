"""A user's own quant method (not part of infer): fp16 weight storage, fp32 math."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infer.quant.base import QuantMethodBase, replace_param
from infer.quant.none import NoQuant


class Fp16Weights(QuantMethodBase):
    name = "toy"
    applied = 0

    def create_weights(self, layer: nn.Module, in_features: int, out_features: int,
                       dtype: torch.dtype) -> None:
        NoQuant().create_weights(layer, in_features, out_features, dtype)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        replace_param(layer, "weight", layer.weight.data.half(), 0, 1)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        Fp16Weights.applied += 1
        return F.linear(x, layer.weight.to(x.dtype), bias)
