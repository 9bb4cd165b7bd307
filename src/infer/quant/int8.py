"""``quant=int8``: weight-only int8, symmetric per output channel; activations stay fp.

Storage: ``weight`` int8 [N, K] and ``weight_scale`` fp32 [N] (W ~= weight * scale[n]).
On CPU (fp32) the C++ kernels run it (cpu_kernel.linear); other devices / dtypes convert
the codes to the activation dtype inside F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infer.quant import cpu_kernel
from infer.quant.base import QuantMethodBase, replace_param
from infer.quant.none import NoQuant
from infer.quant.quantize import int8_per_channel


class Int8WeightOnly(QuantMethodBase):
    """int8 weights, fp activations (W8A16/W8A32)."""

    name = "int8"

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        NoQuant().create_weights(layer, in_features, out_features, dtype)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        q, scale = int8_per_channel(layer.weight.data)
        replace_param(layer, "weight", q, 0, 1)
        replace_param(layer, "weight_scale", scale, 0, None)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return int8_matmul(x, layer.weight, layer.weight_scale, bias)


def int8_matmul(
    x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [T, K] @ (w int8 [N, K] * scale [N]).T + bias, in x's dtype."""
    if cpu_kernel.usable(x):
        return cpu_kernel.linear(x, w, scale, bias, cpu_kernel.INT8)
    y = F.linear(x, w.to(x.dtype)) * scale.to(x.dtype)
    return y + bias if bias is not None else y
