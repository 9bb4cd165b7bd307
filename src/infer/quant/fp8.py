"""``quant=fp8``: float8_e4m3fn weights (per output channel scales) x float8_e4m3fn
activations (dynamic per-token scales), fp32 accumulation.

Rounding of the weights (``rounding``): ``nearest`` casts ``W / s_w`` to e4m3 (what dynamic FP8
in serving engines does); ``gptq`` (default) picks the e4m3 codes with GPTQ's error feedback on
calibration text (gptq.py), layer by layer in one forward, each layer seeing the already
rounded layers before it. Same grid, same scales (``s_w = max|W_n| / 448``), same kernels; only
which e4m3 code each weight takes changes (a nearby one, chosen with error feedback). On
SmolLM2, weight-only FP8 goes from +2.46% perplexity / KL 0.018 (nearest) to +0.17% / KL 0.005
(experiments/README.md, study 02).

Storage: ``weight`` float8_e4m3fn [N, K], ``weight_scale`` fp32 [N].
Math: ``y = (fp8(x / s_x) @ fp8(W / s_w).T) * s_x[t] * s_w[n] + bias``.
  CUDA sm89+ (Ada/Hopper): ``torch._scaled_mm`` with row-wise scales for bf16 models, else
      the ``fp8_scaled_gemm`` op (Triton kernel or torch reference: the kernels config's
      choice; fp32/fp16 outputs).
  elsewhere: emulation with the same roundings. Both operands are rounded through
      torch.float8_e4m3fn; every e4m3 value is exact in fp32, so dequantize + fp32 matmul
      gives the FP8 GEMM's products (accumulation order aside). On CPU the C++ kernels decode
      e4m3 bytes in registers (1 byte per weight moved; cpu_kernel.linear).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from infer_kernels import get_op
from torch import nn

from infer.quant import cpu_kernel
from infer.quant.base import QuantContext, QuantMethodBase, replace_param
from infer.quant.gptq import ColumnQuantizer, GPTQSettings, gptq_model, take_result
from infer.quant.none import NoQuant
from infer.quant.quantize import fp8_codes, fp8_per_channel

ROUNDINGS = ("gptq", "nearest")


def fp8_grid(w: torch.Tensor) -> tuple[ColumnQuantizer, Any]:
    """GPTQ grid of ``w [N, K]``: e4m3 with nearest's per-channel scale ``max|W_n| / 448``;
    stored as (float8_e4m3fn codes [N, K], fp32 scale [N])."""
    scale = w.float().abs().amax(1) / 448.0

    def to_grid(col: torch.Tensor, _j: int) -> torch.Tensor:
        return fp8_codes(col[:, None], scale).float()[:, 0] * scale

    return to_grid, lambda q: (fp8_codes(q, scale), scale)


def _hw_fp8(x: torch.Tensor) -> bool:
    return x.is_cuda and torch.cuda.get_device_capability(x.device) >= (8, 9)


class FP8WeightAct(QuantMethodBase):
    """FP8 (e4m3) weights and dynamic per-token FP8 activations.

    Args:
        use_scaled_mm: on sm89+ GPUs call ``torch._scaled_mm`` (else the fp8 GEMM op).
        act_quant: quantize activations (the FP8 W8A8 scheme); False = weight-only FP8
            (activations stay in the model dtype, as FP8 checkpoints run on pre-Ada GPUs).
        rounding: ``gptq`` (calibrated error feedback) or ``nearest`` (plain cast).
        damp, block_size, act_order: GPTQ settings (gptq.gptq_round).
        calib: calibration text settings (``CalibConfig`` fields), for ``gptq``.
        cache_dir: where the calibration text is cached (None = the default cache dir).
    """

    name = "fp8"

    def __init__(
        self,
        use_scaled_mm: bool = True,
        act_quant: bool = True,
        rounding: str = "gptq",
        damp: float = 0.01,
        block_size: int = 128,
        act_order: bool = True,
        calib: Any = None,
        cache_dir: str | None = None,
    ) -> None:
        if rounding not in ROUNDINGS:
            raise ValueError(f"quant.method.rounding={rounding!r} is not one of {list(ROUNDINGS)}")
        self.use_scaled_mm = bool(use_scaled_mm)
        self.act_quant = bool(act_quant)
        self.rounding = rounding
        self.calibrates = rounding == "gptq"  # GPTQ rounding runs on calibration activations
        self.gptq = GPTQSettings.build(damp, block_size, act_order, calib, cache_dir)
        self.ops: Any = None

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        NoQuant().create_weights(layer, in_features, out_features, dtype)

    def prepare_model(self, model: nn.Module, ctx: QuantContext) -> None:
        self.ops = ctx.ops
        if self.rounding == "gptq":
            gptq_model(model, ctx, self.gptq, fp8_grid)

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        if self.rounding == "gptq":
            q, scale = take_result(layer, "fp8")
        else:
            q, scale = fp8_per_channel(layer.weight.data)
        replace_param(layer, "weight", q, 0, 1)
        replace_param(layer, "weight_scale", scale, 0, None)

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        w, sw = layer.weight, layer.weight_scale
        if cpu_kernel.usable(x):
            x = x.contiguous()
            xq = cpu_kernel.load().fake_quant_rows(x, True) if self.act_quant else x  # type: ignore[union-attr]
            return cpu_kernel.linear(xq, w.view(torch.uint8), sw, bias, cpu_kernel.FP8)
        if not self.act_quant:
            y = F.linear(x, w.to(x.dtype)) * sw.to(x.dtype)
            return y + bias if bias is not None else y
        impl = "triton" if _hw_fp8(x) else "torch"
        quant = self.ops.quantize_per_token_fp8 if self.ops else get_op("quantize_per_token_fp8", impl)
        xq, sx = quant(x.contiguous())
        if self.use_scaled_mm and x.dtype == torch.bfloat16 and _hw_fp8(x):
            try:  # cuBLASLt row-wise scaled FP8 GEMM (bf16 out)
                y = torch._scaled_mm(xq, w.t(), scale_a=sx, scale_b=sw.view(1, -1),
                                     out_dtype=torch.bfloat16)
                return y + bias if bias is not None else y
            except RuntimeError:
                pass  # a shape or build the cuBLASLt path refuses: the GEMM op takes it
        gemm = self.ops.fp8_scaled_gemm if self.ops else get_op("fp8_scaled_gemm", impl)
        return gemm(xq, w, sx, sw, x.dtype, bias)
