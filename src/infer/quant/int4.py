"""``quant=int4``: round-to-nearest 4-bit weight-only, group-wise asymmetric (AWQ's control).

Runtime storage depends on the device the weights live on:
  CPU:   ``w4`` uint8 [N, K/2] (two codes per byte, the C++ kernel's layout),
         ``w4_scale`` / ``w4_offset`` fp32 [N, K/G]: W = code * scale + offset.
  other: AutoAWQ GEMM tensors ``qweight`` int32 [K, N/8], ``qzeros`` int32 [K/G, N/8],
         ``scales`` [K/G, N] (model dtype) for the ``awq_gemm`` kernel.
Both come from one canonical form (codes, scales, zeros), which is also what an AutoAWQ
checkpoint holds (``quant=awq`` loads those; see awq.py).
On CPU with fp32 activations the first forward repacks ``w4`` / ``w4_scale`` / ``w4_offset``
into the dense kernel's 64-column panels (``w4_packed`` [N/64, K/2, 64] uint8,
``w4_panel_scale`` / ``w4_panel_offset`` [N/64, K/G, 64]; dense_cpu.pack_int4), replacing
them, and runs ``dense_cpu.packed_linear_int4``: decode streams each matrix as one sequential
read. The repacking waits for the first forward so that sharding (which gptq does after
processing) still cuts the row-major tensors. ``panel_kernel = False`` keeps the row-major
kernels (cpu_kernel.linear).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from infer_kernels import get_op
from torch import nn

from infer.quant import cpu_kernel, dense_cpu
from infer.quant.base import (
    STACK_INT4,
    QuantContext,
    QuantMethodBase,
    StackLinear,
    replace_param,
    stack_linear,
)
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
    panel_kernel = True  # CPU fp32: repack into 64-column panels on first forward (module doc)
    # read by the model: its fp32 LM head runs the dense panel kernel too (one packed copy;
    # awq_format unpacks it when writing a checkpoint)
    cpu_kernel = True

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
    def stack_linear(self, layer: nn.Module) -> StackLinear | None:
        # panels are made on the first fp32 CPU forward (apply); before that the stack waits
        if "w4_packed" not in layer._parameters:
            return None
        wp = layer.w4_packed
        return stack_linear(STACK_INT4, wp, wp.rows, layer.bias, scale=layer.w4_panel_scale,  # type: ignore[attr-defined]
                            offset=layer.w4_panel_offset, group=self.group_size)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        g = self.group_size
        if self.panel_kernel and "w4" in layer._parameters and dense_cpu.quant_usable(x):
            _pack_panels(layer)
        if "w4_packed" in layer._parameters:
            wp = layer.w4_packed
            if dense_cpu.quant_usable(x):
                return dense_cpu.packed_linear_int4(x, wp, wp.rows, layer.w4_panel_scale,
                                                    layer.w4_panel_offset, g, bias)
            return F.linear(x, dequant_cpu_layout(layer, g).to(x.dtype), bias)
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


def _pack_panels(layer: nn.Module) -> None:
    """Replace ``w4`` / ``w4_scale`` / ``w4_offset`` by their panel layout (module doc); tags:
    dim 0 counts panels of 64 outputs, dim 1 pairs of k (codes) or groups (scale, offset)."""
    codes, scale, offset = _cpu_groups(layer)
    g = layer.w4_scale.input_group
    wp, sp, op = dense_cpu.pack_int4(codes, scale.data, offset.data)
    for name in ("w4", "w4_scale", "w4_offset"):
        del layer._parameters[name]
    pan = dense_cpu.PANEL
    replace_param(layer, "w4_packed", wp, 0, 1, output_pack=pan, input_pack=2, rows=codes.shape[0])
    replace_param(layer, "w4_panel_scale", sp, 0, 1, output_pack=pan, input_group=g)
    replace_param(layer, "w4_panel_offset", op, 0, 1, output_pack=pan, input_group=g)


def _cpu_groups(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes uint8 [N, K], scale fp32 [N, K/G], offset fp32 [N, K/G]) of a layer in either CPU
    layout (row-major ``w4`` or panels ``w4_packed``)."""
    if "w4_packed" in layer._parameters:
        wp = layer.w4_packed
        return dense_cpu.unpack_int4(wp, layer.w4_panel_scale.data, layer.w4_panel_offset.data, wp.rows)
    return unpack_int4_cpu(layer.w4.data), layer.w4_scale.data, layer.w4_offset.data


def dequant_cpu_layout(layer: nn.Module, group_size: int) -> torch.Tensor:
    """fp32 [N, K] weight of a layer stored in a CPU layout."""
    codes, scale, offset = _cpu_groups(layer)
    n, k = codes.shape
    w = codes.float().view(n, k // group_size, group_size) * scale.unsqueeze(-1) + offset.unsqueeze(-1)
    return w.view(n, k)


def int4_canonical_from_runtime(
    layer: nn.Module, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(codes, scales, zeros) back from a processed layer (either runtime layout)."""
    if "w4" in layer._parameters or "w4_packed" in layer._parameters:
        codes, scales, offset = _cpu_groups(layer)
        scales = scales.float()
        zeros = torch.round(-offset / scales).clamp(0, 15).to(torch.uint8)
        return codes, scales, zeros
    return from_autoawq(layer.qweight.data, layer.qzeros.data, layer.scales.data)
