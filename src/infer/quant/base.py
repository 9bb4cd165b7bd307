"""The QuantMethod protocol: a linear layer owns its parameters, the method owns the math.

Life of a quantized model (``models/loader.py`` drives it):
  1. ``accept_checkpoint(quant_config)``: the checkpoint's ``quantization_config`` (None for a
     full-precision checkpoint). A method that cannot load it raises; one that loads
     pre-quantized tensors (AWQ) switches ``create_weights`` to that layout.
  2. ``create_weights`` on every Linear; the loader fills the parameters tensor by tensor.
  3. ``prepare_model(model, ctx)``: one model-level step with every weight loaded, still in
     full precision: calibration on text (SmoothQuant, AWQ), folding scales into the
     preceding norms. Most methods do nothing here.
  4. ``process_weights_after_loading`` on every Linear: quantize / pack / repack in place.
  5. ``apply`` on every forward.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import torch
from torch import nn


@dataclass
class QuantContext:
    """What ``prepare_model`` may use besides the model itself.

    model_folder: the HF folder the weights came from (calibration caches are keyed by it).
    forward: runs the full-precision model over token-id sequences (no logits, no KV cache
        kept); forward hooks on the Linear layers see their inputs ``x [T, in_features]``.
    tokenizer: loads the model's tokenizer (lazily: only calibrating methods need it).
    ops: the model's resolved kernels (``infer.layers.ops.Ops``) or None.
    """

    model_folder: Path
    forward: Callable[[list[list[int]]], None]
    tokenizer: Callable[[], Any]
    ops: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class QuantMethod(Protocol):
    """How a linear layer stores and applies its weight.

    ``create_weights`` registers parameters on the layer (each parameter carries
    ``output_dim``/``input_dim`` attributes, plus ``output_pack``/``input_pack`` when several
    logical elements share one stored element, so tensor parallelism can shard it without
    knowing the method); the loader fills them through ``param.weight_loader``;
    ``process_weights_after_loading`` converts them (quantizes, packs); ``apply`` computes
    ``x @ W.T + bias``.
    """

    name: str
    # True when process_weights_after_loading works per output row and input group only
    # (packing, group-wise rounding): tensor parallelism then shards the full-precision weight
    # first and processes the shard; False: it processes the full matrix and shards the result
    shard_local: bool
    # True when prepare_model calibrates on the full model's activations: tensor/pipeline
    # parallel loading then keeps the whole model until calibration is done; False lets it cut
    # every layer to the rank's shard as soon as the layer is loaded
    calibrates: bool

    def accept_checkpoint(self, quant_config: dict[str, Any] | None) -> None:
        """Check the checkpoint's ``quantization_config`` (config.json) before any weight is
        created; raise ValueError naming the right ``quant=`` option if it cannot be loaded."""
        ...

    def create_weights(
        self, layer: nn.Module, in_features: int, out_features: int, dtype: torch.dtype
    ) -> None:
        """Register the layer's weight parameter(s): logical shape [out_features, in_features]."""
        ...

    def prepare_model(self, model: nn.Module, ctx: QuantContext) -> None:
        """Model-level step after loading, before the per-layer processing (weights are still
        as loaded). May modify any module's weights (e.g. fold scales into norms)."""
        ...

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        """Convert loaded weights into the method's storage (in place)."""
        ...

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """x: [T, in_features] -> [T, out_features] in x's dtype."""
        ...


class StackLinear(NamedTuple):
    """How the C++ decoder stack (models/decoder_stack.py) runs one projection: the packed
    kernel ``kind`` (DENSE: ``dense_cpu.packed_linear``, INT8: ``packed_linear_int8``, INT4:
    ``packed_linear_int4``) and its arguments. Parts a kind does not use are empty tensors."""

    kind: int
    packed: torch.Tensor
    n: int  # output features
    scale: torch.Tensor
    offset: torch.Tensor
    group: int
    bias: torch.Tensor  # [n] or empty


STACK_DENSE, STACK_INT8, STACK_INT4 = 0, 1, 2  # the C++ stack's LinearKind


def stack_linear(kind: int, packed: torch.Tensor, n: int, bias: torch.Tensor | None,
                 scale: torch.Tensor | None = None, offset: torch.Tensor | None = None,
                 group: int = 0) -> StackLinear:
    """A ``StackLinear`` with empty tensors for the parts not given."""
    none = packed.new_empty(0, dtype=torch.float32)
    return StackLinear(kind, packed, n, none if scale is None else scale,
                       none if offset is None else offset, group,
                       none if bias is None else bias.contiguous())


class QuantMethodBase:
    """Defaults for a method that quantizes full-precision weights after loading: refuse
    pre-quantized checkpoints, no model-level step. Subclass it and write ``create_weights``,
    ``process_weights_after_loading`` and ``apply`` (see int8.py for a 40-line example)."""

    name = "base"
    shard_local = False  # see QuantMethod.shard_local
    calibrates = False  # see QuantMethod.calibrates

    def stack_linear(self, layer: nn.Module) -> StackLinear | None:
        """The packed kernel call that ``apply`` makes for fp32/bf16 CPU activations, for the
        C++ decoder stack; None when ``apply`` does something else (the model then keeps its
        Python loop). An override must describe exactly what ``apply`` computes."""
        return None

    def accept_checkpoint(self, quant_config: dict[str, Any] | None) -> None:
        reject_quantized_checkpoint(self.name, quant_config)

    def prepare_model(self, model: nn.Module, ctx: QuantContext) -> None:
        return None


def reject_quantized_checkpoint(method: str, quant_config: dict[str, Any] | None) -> None:
    """For methods that quantize full-precision weights themselves: a pre-quantized checkpoint
    cannot be loaded (its tensors are qweight/scales, not weights)."""
    if quant_config:
        kind = quant_config.get("quant_method", "unknown")
        hint = " (run it with quant=awq)" if kind == "awq" else ""
        raise ValueError(
            f"the checkpoint is already quantized (quantization_config.quant_method={kind!r})"
            f"{hint}; quant={method} needs a full-precision checkpoint"
        )


def set_dims(p: nn.Parameter, output_dim: int | None, input_dim: int | None, **extra: int) -> nn.Parameter:
    """Tag a parameter with the sharding attributes (``output_dim``, ``input_dim`` and e.g.
    ``output_pack=8`` for AutoAWQ's 8 codes per int32)."""
    if output_dim is not None:
        p.output_dim = output_dim  # type: ignore[attr-defined]
    if input_dim is not None:
        p.input_dim = input_dim  # type: ignore[attr-defined]
    for k, v in extra.items():
        setattr(p, k, v)
    return p


def replace_param(layer: nn.Module, name: str, value: torch.Tensor, output_dim: int | None,
                  input_dim: int | None, **extra: int) -> None:
    """Register ``value`` as parameter ``name`` (replacing any old one), frozen and tagged."""
    if name in layer._parameters:
        del layer._parameters[name]
    p = nn.Parameter(value, requires_grad=False)
    layer.register_parameter(name, set_dims(p, output_dim, input_dim, **extra))
