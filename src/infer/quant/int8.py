"""``quant=int8``: weight-only int8, symmetric per output channel; activations stay fp.

Storage: ``weight`` int8 [N, K] and ``weight_scale`` fp32 [N] (W ~= weight * scale[n]).
On CPU with fp32 activations (and ``cpu_kernel=True``) the first forward repacks the codes
into the dense kernel's 64-column k-major panels (``weight_packed``, replacing ``weight``: one
copy) and every call runs ``dense_cpu.packed_linear_int8``: decode streams each matrix as one
sequential read, like fp32 but 1/4 of the bytes. The repacking waits for the first forward
because the layer is quantized on the full matrix and sharded afterwards (shard_local=False),
and a 64-column panel cannot be cut at arbitrary shard boundaries; by the first forward the
row-major codes are already this rank's shard. ``cpu_kernel=False`` keeps the row-major GEMV
kernels (cpu_kernel.linear); other devices / dtypes convert the codes inside F.linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from infer.quant import cpu_kernel, dense_cpu
from infer.quant.base import STACK_INT8, QuantMethodBase, StackLinear, replace_param, stack_linear
from infer.quant.none import NoQuant
from infer.quant.quantize import int8_per_channel


class Int8WeightOnly(QuantMethodBase):
    """int8 weights, fp activations (W8A16/W8A32)."""

    name = "int8"

    def __init__(self, cpu_kernel: bool = True) -> None:
        self.cpu_kernel = cpu_kernel

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        NoQuant().create_weights(layer, in_features, out_features, dtype)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        q, scale = int8_per_channel(layer.weight.data)
        replace_param(layer, "weight", q, 0, 1)
        replace_param(layer, "weight_scale", scale, 0, None)

    def stack_linear(self, layer: nn.Module) -> StackLinear | None:
        # packed on the first fp32 CPU forward (apply); before that the stack waits
        wp = layer._parameters.get("weight_packed")
        if wp is None:
            return None
        return stack_linear(STACK_INT8, wp, wp.rows, layer.bias, scale=layer.weight_scale)  # type: ignore[attr-defined]

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        wp = layer._parameters.get("weight_packed")
        if wp is None and self.cpu_kernel and dense_cpu.quant_usable(x):
            wp = _pack(layer)
        if wp is None:
            return int8_matmul(x, layer.weight, layer.weight_scale, bias)
        if dense_cpu.quant_usable(x):
            return dense_cpu.packed_linear_int8(x, wp, wp.rows, layer.weight_scale, bias)  # type: ignore[attr-defined]
        # another activation dtype after packing (not seen in one model run): rebuild the codes
        codes = dense_cpu.unpack_rows(wp, torch.arange(wp.rows, device=wp.device), wp.shape[1])  # type: ignore[attr-defined]
        return int8_matmul(x, codes, layer.weight_scale, bias)


def _pack(layer: nn.Module) -> torch.Tensor:
    """Replace ``weight`` int8 [N, K] by ``weight_packed`` [ceil(N/64), K, 64] (tagged like
    quant=none's packed weight: panels of 64 outputs along dim 0, K along dim 1)."""
    w = layer.weight
    packed = dense_cpu.pack(w.data)
    del layer._parameters["weight"]  # one copy of the codes: the packed one
    replace_param(layer, "weight_packed", packed, 0, 1, output_pack=dense_cpu.PANEL, rows=w.shape[0])
    return layer.weight_packed


def int8_matmul(
    x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """x [T, K] @ (w int8 [N, K] * scale [N]).T + bias, in x's dtype."""
    if cpu_kernel.usable(x):
        return cpu_kernel.linear(x, w, scale, bias, cpu_kernel.INT8)
    y = F.linear(x, w.to(x.dtype)) * scale.to(x.dtype)
    return y + bias if bias is not None else y
