"""``quant=int4``: round-to-nearest 4-bit weight-only, group-wise asymmetric (AWQ's control).

Runtime storage depends on the device the weights live on:
  CPU:   ``w4`` uint8 [N, K/2] (two codes per byte, the C++ kernel's layout),
         ``w4_scale`` / ``w4_offset`` fp32 [N, K/G]: W = code * scale + offset.
  other: AutoAWQ GEMM tensors ``qweight`` int32 [K, N/8], ``qzeros`` int32 [K/G, N/8],
         ``scales`` [K/G, N] (model dtype) for the ``awq_gemm`` kernel.
Both come from one canonical form (codes, scales, zeros), which is also what an AutoAWQ
checkpoint holds (``quant=awq`` loads those; see awq.py).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from infer_kernels import get_op
from torch import nn

from infer.quant import cpu_kernel
from infer.quant.base import QuantContext, QuantMethodBase, replace_param
from infer.quant.none import NoQuant
from infer.quant.quantize import (
    from_autoawq,
    int4_groups,
    pack_int4_cpu,
    to_autoawq,
    unpack_int4_cpu,
)


class Int4WeightOnly(QuantMethodBase):
    """Group-wise asymmetric int4 weights (round to nearest), fp activations.

    Args:
        group_size: inputs per (scale, zero) group; must divide every layer's input size
            (SmolLM2: 64 or 32) and be a multiple of 32 for the CPU kernel.
    """

    name = "int4"
    shard_local = True  # rounding is per (output row, input group)

    def __init__(self, group_size: int = 64) -> None:
        if int(group_size) <= 0:
            raise ValueError(f"quant.group_size must be a positive int, got {group_size}")
        self.group_size = int(group_size)
        self.prequantized = False  # True: the checkpoint holds AutoAWQ tensors
        self.ops: Any = None
        self.dtype = torch.float32  # the model dtype (create_weights records it)

    # -- loading ---------------------------------------------------------------------------
    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        self.dtype = dtype
        if not self.prequantized:
            NoQuant().create_weights(layer, in_features, out_features, dtype)
            return
        k, n, g = in_features, out_features, self.group_size
        if k % g or n % 8:
            raise ValueError(
                f"AutoAWQ layer [{n}, {k}] needs in_features % group_size ({g}) == 0 and "
                "out_features % 8 == 0"
            )
        replace_param(layer, "qweight", torch.empty(k, n // 8, dtype=torch.int32), 1, 0, output_pack=8)
        replace_param(layer, "qzeros", torch.empty(k // g, n // 8, dtype=torch.int32), 1, 0,
                      output_pack=8, input_group=g)
        replace_param(layer, "scales", torch.empty(k // g, n, dtype=torch.float32), 1, 0, input_group=g)

    def prepare_model(self, model: nn.Module, ctx: QuantContext) -> None:
        self.ops = ctx.ops

    def canonical(self, layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(codes uint8 [N, K], scales fp32 [N, K/G], zeros uint8 [N, K/G]) of a layer that is
        loaded but not yet processed."""
        if self.prequantized:
            return from_autoawq(layer.qweight.data, layer.qzeros.data, layer.scales.data)
        return int4_groups(layer.weight.data, self.group_size)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        codes, scales, zeros = self.canonical(layer)
        for name in ("weight", "qweight", "qzeros", "scales"):
            layer._parameters.pop(name, None)
        store_int4(layer, codes, scales, zeros, self.group_size, self.dtype)

    # -- forward ---------------------------------------------------------------------------
    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        g = self.group_size
        if "w4" in layer._parameters:
            if cpu_kernel.usable(x):
                return cpu_kernel.linear(x, layer.w4, layer.w4_scale, bias, cpu_kernel.INT4,
                                         layer.w4_offset, g)
            return F.linear(x, dequant_cpu_layout(layer, g).to(x.dtype), bias)
        awq_gemm = self.ops.awq_gemm if self.ops is not None else get_op(
            "awq_gemm", "triton" if x.is_cuda else "torch"
        )
        y = awq_gemm(x.contiguous(), layer.qweight, layer.qzeros, layer.scales.to(x.dtype), g)
        return y + bias if bias is not None else y


def store_int4(
    layer: nn.Module,
    codes: torch.Tensor,
    scales: torch.Tensor,
    zeros: torch.Tensor,
    group_size: int,
    dtype: torch.dtype,
) -> None:
    """Register the runtime int4 parameters of ``layer`` for its device (see module doc)."""
    k = codes.shape[1]
    if codes.device.type == "cpu" and k % 32 == 0 and group_size % 32 == 0:
        replace_param(layer, "w4", pack_int4_cpu(codes), 0, 1, input_pack=2)
        replace_param(layer, "w4_scale", scales.contiguous(), 0, 1, input_group=group_size)
        offset = (-zeros.float() * scales).contiguous()
        replace_param(layer, "w4_offset", offset, 0, 1, input_group=group_size)
        return
    qweight, qzeros, sc = to_autoawq(codes, scales, zeros, dtype=dtype)
    replace_param(layer, "qweight", qweight, 1, 0, output_pack=8)
    replace_param(layer, "qzeros", qzeros, 1, 0, output_pack=8, input_group=group_size)
    replace_param(layer, "scales", sc, 1, 0, input_group=group_size)


def dequant_cpu_layout(layer: nn.Module, group_size: int) -> torch.Tensor:
    """fp32 [N, K] weight of a layer stored in the CPU layout."""
    codes = unpack_int4_cpu(layer.w4).float()
    n, k = codes.shape
    w = codes.view(n, k // group_size, group_size) * layer.w4_scale.unsqueeze(-1) + layer.w4_offset.unsqueeze(-1)
    return w.view(n, k)


def int4_canonical_from_runtime(
    layer: nn.Module, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scales, zeros) back from a processed layer (either runtime layout)."""
    if "w4" in layer._parameters:
        scales = layer.w4_scale.data.float()
        zeros = torch.round(-layer.w4_offset.data / scales).clamp(0, 15).to(torch.uint8)
        return unpack_int4_cpu(layer.w4.data), scales, zeros
    return from_autoawq(layer.qweight.data, layer.qzeros.data, layer.scales.data)
