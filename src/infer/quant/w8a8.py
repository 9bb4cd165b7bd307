"""``quant=w8a8``: int8 weights (per output channel) x int8 activations (dynamic, per token),
with SmoothQuant smoothing calibrated on text.

SmoothQuant (Xiao et al. 2023): activation outliers live in a few input channels, so
per-token int8 activations lose the small channels. Per input channel j,
``s_j = max|X_j|^alpha / max|W_:,j|^(1 - alpha)`` moves the range from x to W
(``y = (W diag(s)) (x / s)``), then both are quantized. ``max|X_j|`` comes from a
calibration forward; the ``1/s`` is folded into the producing norm / Linear rows (fold.py)
or, where none exists (o_proj under GQA), multiplied into x inside ``apply`` (``smooth_inv``).

Math per layer: ``y = (q_x @ q_w.T) * s_x[t] * s_w[n] + bias`` with int32 accumulation (the
``w8a8_int8_gemm`` contract; Triton on GPUs). On CPU (fp32) the int8 weight kernels run on
the dequantized int8 activations: the same products, summed in fp32 instead of int32 (exact
below 2^24; a relative 6e-8 difference beyond), at int8 weight-only speed.
"""

from __future__ import annotations

from typing import Any

import torch
from infer_kernels import get_op
from torch import nn

from infer.quant import calibration as cal
from infer.quant import cpu_kernel
from infer.quant.base import QuantContext, QuantMethodBase, replace_param
from infer.quant.fold import fold_input_scale, producers
from infer.quant.none import NoQuant
from infer.quant.quantize import int8_per_channel


class W8A8Int8(QuantMethodBase):
    """SmoothQuant W8A8.

    Args:
        alpha: migration strength in [0, 1]; 0 = no smoothing (plain W8A8).
        calib: calibration text settings (``CalibConfig`` fields).
        cache_dir: where calibration statistics are cached (None = the default cache dir).
    """

    name = "w8a8"

    def __init__(self, alpha: float = 0.5, calib: Any = None, cache_dir: str | None = None) -> None:
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(f"quant.alpha must be in [0, 1], got {alpha}")
        self.alpha = float(alpha)
        self.calibrates = self.alpha != 0.0  # SmoothQuant statistics of the full model
        self.calib = cal.CalibConfig.from_any(calib)
        self.cache_dir = cal.resolve_cache_dir(cache_dir)
        self.ops: Any = None

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        NoQuant().create_weights(layer, in_features, out_features, dtype)

    # -- calibration ------------------------------------------------------------------------
    def activation_amax(self, model: nn.Module, ctx: QuantContext) -> dict[str, torch.Tensor]:
        """Per-input-channel max |x| of every Linear over the calibration tokens (cached)."""
        path = cal.cache_path(self.cache_dir, "smoothquant-amax", ctx.model_folder,
                              cal.settings_of(self.calib, dtype=str(next(model.parameters()).dtype)))
        cached = cal.load_cached(path)
        if cached is not None:
            return cached
        amax: dict[str, torch.Tensor] = {}

        def record(name: str, _m: nn.Module, x: torch.Tensor) -> None:
            a = x.detach().abs().amax(0).float().cpu()
            amax[name] = a if name not in amax else torch.maximum(amax[name], a)

        seqs = cal.calibration_sequences(self.calib, ctx.tokenizer(), self.cache_dir)
        cal.run_with_hooks(model, ctx, seqs, record)
        cal.save_cached(path, amax)
        return amax

    @torch.no_grad()
    def prepare_model(self, model: nn.Module, ctx: QuantContext) -> None:
        self.ops = ctx.ops
        if self.alpha == 0.0:
            return
        amax = self.activation_amax(model, ctx)
        prods = producers(model)
        for name, lin in cal.linear_layers(model):
            w = lin.weight.data
            ax = amax[name].to(w.device).clamp(min=1e-5)
            aw = w.abs().amax(0).float().clamp(min=1e-5)
            s = (ax.pow(self.alpha) / aw.pow(1.0 - self.alpha)).clamp(min=1e-5)
            prod = prods.get(name)
            if prod is not None:
                fold_input_scale(model, name, prod, s)
            else:
                w.mul_(s.to(w.dtype)[None, :])
                replace_param(lin, "smooth_inv", (1.0 / s).to(w.dtype), None, 0)

    # -- storage and math -------------------------------------------------------------------
    def process_weights_after_loading(self, layer: nn.Module) -> None:
        q, scale = int8_per_channel(layer.weight.data)
        replace_param(layer, "weight", q, 0, 1)
        replace_param(layer, "weight_scale", scale, 0, None)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        smooth = layer._parameters.get("smooth_inv")
        if smooth is not None:
            x = x * smooth
        if cpu_kernel.usable(x):
            xq = cpu_kernel.load().fake_quant_rows(x.contiguous(), False)  # type: ignore[union-attr]
            return cpu_kernel.linear(xq, layer.weight, layer.weight_scale, bias, cpu_kernel.INT8)
        impl = "triton" if x.is_cuda else "torch"
        quant = self.ops.quantize_per_token_int8 if self.ops else get_op("quantize_per_token_int8", impl)
        gemm = self.ops.w8a8_int8_gemm if self.ops else get_op("w8a8_int8_gemm", impl)
        xq, sx = quant(x.contiguous())
        return gemm(xq, layer.weight, sx, layer.weight_scale, x.dtype, bias)
