"""The decoder layers of a step as one C++ call on CPU (csrc/decoder_stack_cpu.cpp).

Single-stream decode on CPU streams every weight once per token; what the eager model adds
on top is ~12 Python-level kernel calls per layer (module ``__call__``, quant dispatch,
pybind argument conversion), several milliseconds per token over 30 layers. The stack
holds each layer's packed weights and norms once and calls the same C++ kernels in the same
order with the same arguments through the extensions' entry-point tables, so its outputs
equal the eager loop's bit for bit (``tests/unit/test_decoder_stack.py``); the eager loop
stays the oracle (``kernels.decoder_stack=off``) and the fallback.

It applies when every piece of a layer is a C++ kernel: fp32 model on CPU, the C++ model
ops (``kernels`` resolved to cpp), the paged backend on its CPU kernel (fp32 KV), every
projection packed for a C++ linear (quant none / int8 / int4 / awq / gptq on the panel
kernels; ``QuantMethod.stack_linear``) and no tensor-parallel reduction. Anything else
(Triton or torch ops, quantized KV, w8a8, fp8, tensor parallelism) runs the Python loop.
Methods that pack lazily on their first forward (int8, int4) are picked up once packed.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from infer.attention.paged_torch import PagedTorchBackend
from infer.cpp_ext import load_cpp_extension
from infer.forward_context import ForwardContext

_SRC = Path(__file__).parent / "csrc" / "decoder_stack_cpu.cpp"
_TRIES = 3  # forwards after which a model whose layers never became stackable stops asking


@lru_cache(maxsize=1)
def load() -> ModuleType | None:
    """Compile (first time) and import the extension; None if impossible or disabled."""
    return load_cpp_extension("infer_decoder_stack_cpu", _SRC, ["-O2"], "CPU decoder stack")


def _entry_points() -> tuple[int, int, int] | None:
    """Addresses of the dense-linear, model-ops and paged-attention tables; None if any
    extension is missing."""
    from infer.attention import cpu_kernel
    from infer.layers import cpu_ops
    from infer.quant import dense_cpu

    mods = (dense_cpu.load(), cpu_ops.load(), cpu_kernel.load())
    if any(m is None for m in mods):
        return None
    return tuple(int(m.entry_points()) for m in mods)  # type: ignore[union-attr,return-value]


def _layer_linears(layer: nn.Module) -> list[Any] | None:
    """The four projections' ``StackLinear`` specs, or None if one is not stackable."""
    out = []
    for lin in (layer.self_attn.qkv_proj, layer.self_attn.o_proj, layer.mlp.gate_up_proj,
                layer.mlp.down_proj):
        if lin.tp_reduce is not None:
            return None
        spec_fn = getattr(lin.quant, "stack_linear", None)
        spec = spec_fn(lin) if spec_fn is not None else None
        if spec is None:
            return None
        out.append(tuple(spec))
    return out


def build(model: nn.Module) -> Any | None:
    """A ``DecoderStack`` holding every layer of ``model`` (a LlamaForCausalLM) that this
    process runs; None when some layer is not (yet) stackable."""
    mod, tables = load(), _entry_points()
    if mod is None or tables is None:
        return None
    a = model.args  # type: ignore[attr-defined]
    layers = [model.layers[i] for i in model.layer_range]  # type: ignore[attr-defined,index]
    if not layers or model.norm.weight.dtype != torch.float32:  # type: ignore[attr-defined,union-attr]
        return None
    attn0 = layers[0].self_attn
    # one epsilon for every norm (checked per layer below), as the C++ stack takes it
    stack = mod.DecoderStack(*tables, attn0.nh, attn0.nkv, attn0.hd, float(a.rms_norm_eps),
                             float(attn0.scale))
    index = {}
    for i in model.layer_range:  # type: ignore[attr-defined]
        layer = model.layers[i]  # type: ignore[index]
        at = layer.self_attn
        if (at.nh, at.nkv, at.hd, at.scale) != (attn0.nh, attn0.nkv, attn0.hd, attn0.scale):
            return None
        norms = [layer.input_layernorm, layer.post_attention_layernorm, at.q_norm, at.k_norm]
        if any(n is not None and n.eps != a.rms_norm_eps for n in norms):
            return None
        lins = _layer_linears(layer)
        if lins is None:
            return None
        stack.add_layer([None if n is None else n.weight for n in norms], lins)
        index[i] = len(index)
    return _Stack(stack, index)


class _Stack:
    """A built ``DecoderStack`` plus the map from model layer index to its position."""

    def __init__(self, stack: Any, index: dict[int, int]) -> None:
        self.stack, self.index = stack, index
        # steps run, and those over a subset of the layers (layer-skip drafts, stages)
        self.calls = self.partial_calls = 0

    def run(self, which: list[int], x: torch.Tensor, residual: torch.Tensor | None,
            positions: torch.Tensor, cos_sin: torch.Tensor, ctx: ForwardContext
            ) -> tuple[torch.Tensor, torch.Tensor]:
        md, caches = ctx.metadata, ctx.kv_caches
        self.calls += 1
        self.partial_calls += len(which) < len(self.index)
        return self.stack.run(
            x, residual, [self.index[i] for i in which], positions, cos_sin,
            [caches[i][0] for i in which], [caches[i][1] for i in which],
            md.slot_mapping, md.block_tables, md.query_start_loc, md.context_lens,
        )


class StackSlot:
    """A model's lazily built stack: ``get(model, ctx)`` returns it when this step can run on
    it (CPU kernel attention, fp32 activations), building it on first use; None otherwise."""

    def __init__(self) -> None:
        self.stack: _Stack | None = None
        self.tries = 0

    def get(self, model: nn.Module, ctx: ForwardContext, x: torch.Tensor) -> _Stack | None:
        b = ctx.backend
        if not (isinstance(b, PagedTorchBackend) and b.use_kernel) or x.dtype != torch.float32:
            return None
        if self.stack is None:
            if self.tries >= _TRIES:
                return None
            self.tries += 1
            self.stack = build(model)
        return self.stack

    def reset(self) -> None:
        """Forget the stack. The stack holds the layers' tensors as they were when it was
        built (after the first forward, once lazy packing is done); code that later replaces a
        layer's parameters must call this, or the stack keeps running the old ones."""
        self.stack, self.tries = None, 0
