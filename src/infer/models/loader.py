"""Build a model from a local HF folder: uninitialized parameters, then tensor-by-tensor fill.

Only one copy of the weights is ever resident: parameters are materialized empty and each
checkpoint tensor (memory-mapped) is copied into place before the next is read.
"""

from __future__ import annotations

from pathlib import Path

import torch

from infer.layers.linear import Linear
from infer.models.checkpoint import CheckpointError, iter_safetensors
from infer.models.config import ModelArgs
from infer.models.llama import LlamaForCausalLM
from infer.quant.base import QuantMethod


def load_hf_config(folder: Path):  # type: ignore[no-untyped-def]
    """transformers config of a local folder (remote code stays off)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:
        raise CheckpointError(f"cannot read config.json in {folder}: {e}") from e


def load_model(
    folder: Path,
    quant: QuantMethod,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
) -> LlamaForCausalLM:
    """Instantiate the family's module from ``folder`` and load its safetensors weights."""
    args = ModelArgs.from_hf(load_hf_config(folder))
    # parameters are allocated uninitialized (torch.empty) on the target device; not on
    # "meta", because to_empty() would drop the per-parameter loader/sharding attributes
    with torch.device(device):
        model = LlamaForCausalLM(args, quant, dtype, max_positions)
    loaded = model.load_weights(iter_safetensors(folder))
    missing = model.expected_weights() - loaded
    if missing:
        raise CheckpointError(
            f"checkpoint in {folder} is incomplete: {len(missing)} tensors missing, "
            f"e.g. {sorted(missing)[:5]}"
        )
    for m in model.modules():
        if isinstance(m, Linear):
            m.quant.process_weights_after_loading(m)
    model.init_rope()
    return model.eval()
