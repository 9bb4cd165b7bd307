"""``quant=none``: plain floating-point weights.

On CPU with fp32 / bf16 weights ``apply`` runs the C++ dense kernel (``dense_cpu.linear``: the
weights streamed at close to the memory read bandwidth in decode, every intra-op thread used);
``cpu_kernel=False`` (configs/quant/none.yaml) keeps plain ``F.linear``, the oracle path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infer.quant import dense_cpu
from infer.quant.base import QuantMethodBase, set_dims


class NoQuant(QuantMethodBase):
    """Unquantized linear: ``F.linear`` on the model dtype. Also the full-precision stage of
    the methods that quantize after loading (they register the same ``weight``)."""

    name = "none"

    def __init__(self, cpu_kernel: bool = True) -> None:
        # read by the model too: its (always unquantized) LM head follows the same choice
        self.cpu_kernel = cpu_kernel

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        layer.register_parameter("weight", set_dims(weight, 0, 1))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        return None

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        if self.cpu_kernel:
            return dense_cpu.linear(x, layer.weight, bias)
        return F.linear(x, layer.weight, bias)
