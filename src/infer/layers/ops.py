"""The model's swappable ops (``kernels`` config group), resolved once per engine.

``Ops`` holds one callable per op, chosen per op between the torch path, the Triton
kernel of ``infer_kernels`` and (model ops on CPU) the C++ kernel of ``infer.layers.cpu_ops``.
``build`` resolves it from the kernels config and passes it to the model's constructor;
layers call ``ops.<op>(...)``; nothing is global, so two models with different ops can share
a process.

The ``torch`` implementations of the model ops are the model's own fast paths (fused
``F.rms_norm`` in fp32, per-step rope factors shared by all layers), not the kernel
references: the references define the kernels' numerics, these define single-stream CPU
decode speed; they stay the eager oracle of the C++ ops, which do the same math in one call
each (``kernels=auto`` picks those on CPU when the extension builds). Attention is not an op
here: it is the ``attention`` group's backend (``attention=triton`` is the Triton one).

Shape legend: T tokens, H heads, D head dim, I intermediate size.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from infer_kernels import get_op

from infer.kernel_select import IMPL_CHOICES, resolve_impl, triton_op
from infer.layers import cpu_ops
from infer.layers.norm import rms_norm_ref
from infer.layers.rotary import apply_rope, rope_cos_sin

# ops the model calls
MODEL_OPS = ("rms_norm", "fused_add_rms_norm", "rotary", "silu_and_mul")
# entry points for quant methods (same signatures as infer_kernels' launchers, see its README)
QUANT_OPS = (
    "w8a8_int8_gemm",
    "fp8_scaled_gemm",
    "awq_gemm",
    "quantize_per_token_int8",
    "quantize_per_token_fp8",
)
OP_NAMES = MODEL_OPS + QUANT_OPS

log = logging.getLogger(__name__)

# per-step rope state from ``rope_factors``; opaque to the model, consumed by ``rotary``
RopeFactors = tuple[torch.Tensor, torch.Tensor]


# --- torch paths (the model's own, fast on CPU) ---------------------------------------------
def _fused_add_rms_norm_torch(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    residual = x + residual
    return rms_norm_ref(residual, weight, eps), residual


def _silu_and_mul_torch(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]


def _rotary_torch(x: torch.Tensor, rope: RopeFactors) -> torch.Tensor:
    return apply_rope(x, *rope)


# --- Triton wrappers: adapt the model's calls to the launchers' 2-D / in-place contracts ------
def _triton_model_ops(device: torch.device) -> dict[str, Callable]:
    """Model-facing wrappers of one op each; only the requested ones are built."""

    def rms_norm() -> Callable:
        k = triton_op("rms_norm", device)

        def f(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
            return k(x.reshape(-1, x.shape[-1]), weight, eps).view(x.shape)

        return f

    def fused_add_rms_norm() -> Callable:
        k = triton_op("fused_add_rms_norm", device)

        def f(
            x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
        ) -> tuple[torch.Tensor, torch.Tensor]:
            h = x.shape[-1]
            out, res = k(x.reshape(-1, h), residual.reshape(-1, h), weight, eps)
            return out.view(x.shape), res.view(x.shape)

        return f

    def rotary() -> Callable:
        k = triton_op("rotary_embedding", device)

        def f(x: torch.Tensor, rope: RopeFactors) -> torch.Tensor:
            positions, cos_sin = rope
            # every head of x is rotated alike: pass them all as "q" and no "k" heads
            k(positions, x, x[:, :0], cos_sin)
            return x

        return f

    def silu_and_mul() -> Callable:
        k = triton_op("silu_and_mul", device)
        return lambda x: k(x)

    return {
        "rms_norm": rms_norm,
        "fused_add_rms_norm": fused_add_rms_norm,
        "rotary": rotary,
        "silu_and_mul": silu_and_mul,
    }  # type: ignore[return-value]


@dataclass(frozen=True)
class Ops:
    """Resolved op implementations. ``impls`` maps each op name to ``torch`` | ``triton`` |
    ``cpp`` (model ops only).

    Model ops (activations fp32/fp16/bf16; fp32 math inside the kernels):
      rms_norm(x [..., H], weight [H], eps) -> [..., H]
      fused_add_rms_norm(x, residual [..., H], weight, eps) -> (normed, x + residual)
      rope_factors(positions int64 [T], cos_sin [max_pos, rot_dim], dtype) -> RopeFactors:
          once per step, shared by all layers
      rotary(x [T, H, D], rope) -> x rotated (neox layout, first rot_dim dims). May work in
          place (Triton and C++ do): use the returned tensor and do not reuse the input.
      silu_and_mul(x [T, 2I]) -> silu(x[:, :I]) * x[:, I:]  [T, I]
    Quant entry points (``infer_kernels`` signatures, torch reference or Triton launcher):
      w8a8_int8_gemm, fp8_scaled_gemm, awq_gemm, quantize_per_token_int8,
      quantize_per_token_fp8.
    """

    impls: Mapping[str, str]
    rms_norm: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
    fused_add_rms_norm: Callable[
        [torch.Tensor, torch.Tensor, torch.Tensor, float], tuple[torch.Tensor, torch.Tensor]
    ]
    rope_factors: Callable[[torch.Tensor, torch.Tensor, torch.dtype], RopeFactors]
    rotary: Callable[[torch.Tensor, RopeFactors], torch.Tensor]
    silu_and_mul: Callable[[torch.Tensor], torch.Tensor]
    w8a8_int8_gemm: Callable[..., torch.Tensor]
    fp8_scaled_gemm: Callable[..., torch.Tensor]
    awq_gemm: Callable[..., torch.Tensor]
    quantize_per_token_int8: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    quantize_per_token_fp8: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    # run the decoder layers as one C++ call where every op of a layer is a C++ kernel
    # (models/decoder_stack.py); False keeps the eager per-module loop
    decoder_stack: bool = False


STACK_CHOICES = ("auto", "off")  # kernels.decoder_stack


def torch_ops() -> Ops:
    """All-torch ops (what ``kernels=torch`` resolves to on any device)."""
    return resolve_ops("torch", None, "cpu")


def _triton_rope_factors(
    positions: torch.Tensor, cos_sin: torch.Tensor, dtype: torch.dtype
) -> RopeFactors:
    # the kernel gathers cos/sin per token itself; the table stays fp32
    return positions, cos_sin


@lru_cache(maxsize=1)
def _warn_no_cpp() -> None:
    log.warning("kernels auto on CPU: the C++ model ops are unavailable; using the torch paths")


def _resolve_one(raw: str, impl: str, op: str, device: torch.device, what: str) -> str:
    """Refine ``resolve_impl``'s answer for one op: auto on CPU -> cpp for model ops when the
    extension builds; cpp for a quant entry point -> torch; cpp off CPU or unbuilt -> error."""
    if raw == "auto" and device.type == "cpu" and op in MODEL_OPS:
        if cpu_ops.available():
            return "cpp"
        _warn_no_cpp()
        return "torch"
    if impl != "cpp" or op not in MODEL_OPS:
        return "torch" if impl == "cpp" else impl
    if device.type != "cpu":
        raise ValueError(
            f"{what}=cpp runs on CPU only (device {device.type}); use auto, torch or triton"
        )
    if not cpu_ops.available():
        raise ValueError(
            f"{what}=cpp: the C++ CPU model ops did not build (see the warning above) or "
            "INFER_DISABLE_CPU_KERNEL is set; use kernels=torch"
        )
    return "cpp"


def resolve_ops(
    impl: str,
    overrides: Mapping[str, Any] | None,
    device: torch.device | str,
    dtype: torch.dtype | None = None,
    decoder_stack: str = "auto",
) -> Ops:
    """Resolve every op: ``overrides[op]`` if set (not None), else ``impl``.

    impl / override values: ``torch`` | ``triton`` | ``cpp`` | ``auto``. ``auto`` is Triton on
    CUDA; on CPU it is ``cpp`` for the model ops when the C++ extension builds (else torch, with
    a warning) and torch for the quant entry points. ``cpp`` needs a CPU device and the built
    extension; it has no quant entry points, so there it means torch. Triton off CUDA runs
    under the Triton interpreter, which mis-loads bf16, so ``dtype`` (the model's, if given)
    bf16 with a Triton op off CUDA is refused. ``decoder_stack``: ``auto`` runs the decoder
    layers as one C++ call when every model op resolved to cpp (the model still checks its
    attention and linears per step), ``off`` keeps the eager loop. Raises ValueError naming
    the bad op / impl / choice and listing the valid ones.
    """
    device = torch.device(device)
    if decoder_stack not in STACK_CHOICES:
        raise ValueError(f"kernels.decoder_stack={decoder_stack!r} is not one of {', '.join(STACK_CHOICES)}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(OP_NAMES))
    if unknown:
        raise ValueError(
            f"unknown op(s) {unknown} in kernels.overrides; valid ops: {', '.join(OP_NAMES)}"
        )
    impls: dict[str, str] = {}
    for op in OP_NAMES:
        choice = overrides.get(op)
        what = "kernels.impl" if choice is None else f"impl for kernels.overrides.{op}"
        raw = str(impl if choice is None else choice)
        impls[op] = _resolve_one(raw, resolve_impl(raw, device, what), op, device, what)
    if dtype == torch.bfloat16 and device.type != "cuda":
        bad = [op for op in OP_NAMES if impls[op] == "triton"]
        if bad:
            raise ValueError(
                f"Triton ops {bad} on {device.type} run under the Triton interpreter, which "
                "mis-loads bfloat16; use model.dtype=float32/float16 or kernels=torch"
            )
    fns: dict[str, Any] = {
        "rms_norm": rms_norm_ref,
        "fused_add_rms_norm": _fused_add_rms_norm_torch,
        "rotary": _rotary_torch,
        "silu_and_mul": _silu_and_mul_torch,
    }
    triton_model = _triton_model_ops(device)
    cpp = cpu_ops.load() if any(impls[op] == "cpp" for op in MODEL_OPS) else None
    for op in MODEL_OPS:
        if impls[op] == "triton":
            fns[op] = triton_model[op]()
        elif impls[op] == "cpp":
            fns[op] = getattr(cpp, op)  # the extension's function itself: no Python layer
    fns["rope_factors"] = {
        "triton": _triton_rope_factors, "cpp": cpu_ops.rope_factors
    }.get(impls["rotary"], rope_cos_sin)
    for op in QUANT_OPS:
        fns[op] = triton_op(op, device) if impls[op] == "triton" else get_op(op, "torch")
    stack = decoder_stack == "auto" and all(impls[op] == "cpp" for op in MODEL_OPS)
    return Ops(impls=impls, decoder_stack=stack, **fns)


__all__ = [
    "IMPL_CHOICES",
    "MODEL_OPS",
    "OP_NAMES",
    "QUANT_OPS",
    "STACK_CHOICES",
    "Ops",
    "RopeFactors",
    "resolve_ops",
    "torch_ops",
]
