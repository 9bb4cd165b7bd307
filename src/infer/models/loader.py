"""Build a model from a local HF folder: uninitialized parameters, then tensor-by-tensor fill.

Only one copy of the weights is ever resident: parameters are materialized empty and each
checkpoint tensor (memory-mapped) is copied into place before the next is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from infer.layers.linear import Linear
from infer.layers.ops import Ops
from infer.models.checkpoint import CheckpointError, iter_safetensors
from infer.models.config import SUPPORTED_MODEL_TYPES, ModelArgs
from infer.models.llama import STACKED, LlamaForCausalLM
from infer.quant.base import QuantContext, QuantMethod


def load_hf_config(folder: Path):  # type: ignore[no-untyped-def]
    """transformers config of a local folder (remote code stays off).

    The model_type is checked against the supported families first, so an architecture
    transformers does not know (or one we do not implement) fails with the supported list.
    """
    from transformers import AutoConfig

    cfg_file = folder / "config.json"
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except (OSError, json.JSONDecodeError, AttributeError) as e:
        raise CheckpointError(f"cannot read {cfg_file}: {e}") from e
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"unsupported model_type {model_type!r} in {cfg_file}; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    try:
        return AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:
        raise CheckpointError(f"cannot read config.json in {folder}: {e}") from e


def checkpoint_name(name: str) -> str:
    """Our parameter name (``layers.0.self_attn.qkv_proj.weight:k``) -> the HF checkpoint
    tensor name (``model.layers.0.self_attn.k_proj.weight``), for error messages."""
    name, _, shard = name.partition(":")
    if shard:
        for ckpt, (fused, sid) in STACKED.items():
            if sid == shard and f".{fused}." in name:
                name = name.replace(f".{fused}.", f".{ckpt}.")
                break
    return name if name.startswith("lm_head.") else f"model.{name}"


def load_model(
    folder: Path,
    quant: QuantMethod,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    ops: Ops | None = None,
    tokenizer: Any = None,
    parallel: Any = None,
) -> LlamaForCausalLM:
    """Instantiate the family's module from ``folder`` and load its safetensors weights.
    ``ops``: the resolved kernels config (None = all torch). ``tokenizer``: the engine's (for
    calibration text); None = loaded from ``folder`` only if a quant method asks for it.
    ``parallel``: a ``ParallelState`` with more than one rank: after calibration (on the full
    model, so scales are the one-process ones) the model is cut to this rank's stage and
    shard (parallel/shard.py). Methods that calibrate on the full model (``quant.calibrates``)
    hold it whole until then; the others cut each layer as soon as it is loaded."""
    hf_cfg = load_hf_config(folder)
    args = ModelArgs.from_hf(hf_cfg)
    quant.accept_checkpoint(checkpoint_quant_config(hf_cfg))
    # parameters are allocated uninitialized (torch.empty) on the target device; not on
    # "meta", because to_empty() would drop the per-parameter loader/sharding attributes
    with torch.device(device):
        model = LlamaForCausalLM(args, quant, dtype, max_positions, ops)
    cutter = None
    if parallel is not None and parallel.world_size > 1 and not getattr(quant, "calibrates", False):
        from infer.parallel.shard import LayerCutter

        cutter = LayerCutter(model, parallel)  # each layer cut to this rank once it is filled
    expected = model.expected_weights()  # before any cut renames a parameter
    loaded = model.load_weights(iter_safetensors(folder), cutter.on_loaded if cutter else None)
    missing = sorted(checkpoint_name(n) for n in expected - loaded)
    if missing:
        raise CheckpointError(
            f"checkpoint in {folder} is incomplete: {len(missing)} tensors missing, "
            f"e.g. {missing[:5]}"
        )
    model.init_rope()  # calibration forwards need rope
    ctx = QuantContext(folder, calibration_forward(model, dtype, device),
                       (lambda: tokenizer) if tokenizer is not None else (lambda: _tokenizer(folder)),
                       getattr(model, "ops", None))
    quant.prepare_model(model, ctx)
    if parallel is not None and parallel.world_size > 1:
        from infer.parallel.shard import shard_model

        shard_model(model, parallel, cutter.done if cutter else None)
        return model.eval()
    for m in model.modules():
        if isinstance(m, Linear):
            m.quant.process_weights_after_loading(m)
    model.process_weights_after_loading()  # the LM head (not a quantized Linear)
    return model.eval()


def checkpoint_quant_config(hf_cfg) -> dict | None:  # type: ignore[no-untyped-def,type-arg]
    """config.json's ``quantization_config`` as a dict (None for full-precision checkpoints)."""
    qc = getattr(hf_cfg, "quantization_config", None)
    if qc is None or isinstance(qc, dict):
        return qc
    return qc.to_dict() if hasattr(qc, "to_dict") else dict(vars(qc))


def _tokenizer(folder: Path):  # type: ignore[no-untyped-def]
    from infer.models.tokenizer import load_tokenizer

    return load_tokenizer(folder)  # a clear error when the folder has none


def calibration_forward(model: LlamaForCausalLM, dtype: torch.dtype, device: torch.device):  # type: ignore[no-untyped-def]
    """``run(seqs)``: one full forward of the token-id sequences (packed, causal per sequence,
    reference attention over a throwaway contiguous KV cache). For quant calibration hooks."""
    from infer.attention.base import SeqSlice
    from infer.attention.torch_ref import TorchRefBackend
    from infer.forward_context import ForwardContext

    @torch.inference_mode()
    def run(seqs: list[list[int]]) -> None:
        a, backend, n = model.args, TorchRefBackend(), max(len(s) for s in seqs)
        shape = (len(seqs), n, a.num_kv_heads, a.head_dim)
        caches = [(torch.empty(shape, dtype=dtype, device=device),
                   torch.empty(shape, dtype=dtype, device=device)) for _ in range(a.num_layers)]
        md = backend.plan([SeqSlice(0, len(s), [i]) for i, s in enumerate(seqs)], n, device)
        ids = torch.tensor([t for s in seqs for t in s], dtype=torch.long, device=device)
        pos = torch.cat([torch.arange(len(s), device=device) for s in seqs])
        model(ids, pos, ForwardContext(backend, md, caches))

    return run
