"""``quant=none``: plain floating-point weights.

On CPU with fp32 / bf16 weights (and ``cpu_kernel=True``, configs/quant/none.yaml) the weight
is packed after loading into the C++ dense kernel's panels (``dense_cpu.pack``; the [N, K]
``weight`` is replaced by ``weight_packed``, one copy) and ``apply`` runs that kernel: decode
streams the weights at about the memory read bandwidth, on every intra-op thread.
``cpu_kernel=False`` keeps ``weight`` and plain ``F.linear``, the oracle path.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infer.quant import dense_cpu
from infer.quant.base import (
    STACK_DENSE,
    QuantMethodBase,
    StackLinear,
    replace_param,
    set_dims,
    stack_linear,
)


class NoQuant(QuantMethodBase):
    """Unquantized linear: the CPU dense kernel on packed weights, else ``F.linear`` on the
    model dtype. Also the full-precision stage of the methods that quantize after loading
    (they register the same ``weight`` through ``create_weights``)."""

    name = "none"
    shard_local = True  # processing only packs rows into panels

    def __init__(self, cpu_kernel: bool = True) -> None:
        # read by the model too: its (always unquantized) LM head follows the same choice
        self.cpu_kernel = cpu_kernel

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype), requires_grad=False)
        layer.register_parameter("weight", set_dims(weight, 0, 1))

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Pack ``weight`` [N, K] into ``weight_packed`` (kernel layout) when the kernel applies."""
        w = layer.weight
        if not (self.cpu_kernel and dense_cpu.usable(w)):
            return
        packed = dense_cpu.pack(w.data)
        del layer._parameters["weight"]  # one copy of the matrix: the packed one
        # dim 0: panels of PANEL outputs; dim 1: K (bf16: pairs of k)
        pairs = {"input_pack": 2} if w.dtype == torch.bfloat16 else {}
        replace_param(layer, "weight_packed", packed, 0, 1, output_pack=dense_cpu.PANEL,
                      rows=w.shape[0], **pairs)

    def stack_linear(self, layer: nn.Module) -> StackLinear | None:
        wp = layer._parameters.get("weight_packed")
        return None if wp is None else stack_linear(STACK_DENSE, wp, wp.rows, layer.bias)  # type: ignore[attr-defined]

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        wp = layer._parameters.get("weight_packed")
        if wp is not None:
            return dense_cpu.packed_linear(x, wp, wp.rows, bias)  # type: ignore[attr-defined]
        return F.linear(x, layer.weight, bias)
