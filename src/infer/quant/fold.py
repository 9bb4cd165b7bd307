"""Per-input-channel scaling that leaves the full-precision function unchanged.

SmoothQuant and AWQ both rewrite ``y = W x`` as ``y = (W diag(s)) (x / s)``: the weight's
columns grow by ``s`` and the input shrinks by ``s``. The division is free when the module that
produces ``x`` is linear per channel: an RMSNorm (divide its weight by ``s``) or a Linear's
output rows (divide those rows, and their bias, by ``s``). Where no such module exists the
division has to happen at run time (SmoothQuant then applies ``x / s`` inside ``apply``; AWQ,
whose checkpoints have nowhere to store it, leaves that layer unscaled).

The producers in the Llama family (models/llama.py), per decoder layer:
  self_attn.qkv_proj  <- input_layernorm
  self_attn.o_proj    <- the v rows of self_attn.qkv_proj, only without GQA (each o_proj input
                         channel is then one v channel; with GQA a v channel feeds several)
  mlp.gate_up_proj    <- post_attention_layernorm
  mlp.down_proj       <- the up rows of mlp.gate_up_proj (silu(gate) * up is linear in up)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Producer:
    """The module whose output is the input of a Linear: ``rows`` None for a norm, else the
    [start, stop) output rows of a Linear."""

    module: str
    rows: tuple[int, int] | None = None


def producers(model: nn.Module) -> dict[str, Producer | None]:
    """Linear name -> its foldable producer (None: no per-channel producer)."""
    out: dict[str, Producer | None] = {}
    for name, layer in model.named_modules():
        if not (hasattr(layer, "self_attn") and hasattr(layer, "mlp")):
            continue
        attn, mlp = layer.self_attn, layer.mlp
        p = f"{name}."
        out[p + "self_attn.qkv_proj"] = Producer(p + "input_layernorm")
        v_start, v_size = attn.qkv_proj.shard_offset("v")
        if v_size == attn.o_proj.in_features:
            out[p + "self_attn.o_proj"] = Producer(p + "self_attn.qkv_proj", (v_start, v_start + v_size))
        else:
            out[p + "self_attn.o_proj"] = None
        out[p + "mlp.gate_up_proj"] = Producer(p + "post_attention_layernorm")
        up_start, up_size = mlp.gate_up_proj.shard_offset("up")
        out[p + "mlp.down_proj"] = Producer(p + "mlp.gate_up_proj", (up_start, up_start + up_size))
    return out


@torch.no_grad()
def fold_input_scale(model: nn.Module, linear: str, producer: Producer, s: torch.Tensor) -> None:
    """W[:, j] *= s[j] on ``linear`` and divide the producer's output channel j by s[j]."""
    lin = model.get_submodule(linear)
    prod = model.get_submodule(producer.module)
    s = s.to(lin.weight.dtype)
    lin.weight.mul_(s[None, :])
    if producer.rows is None:
        prod.weight.div_(s.to(prod.weight.dtype))
        return
    a, b = producer.rows
    prod.weight[a:b].div_(s[:, None].to(prod.weight.dtype))
    if getattr(prod, "bias", None) is not None:
        prod.bias[a:b].div_(s.to(prod.bias.dtype))
