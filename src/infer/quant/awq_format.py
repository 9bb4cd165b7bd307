"""Save a 4-bit model (quant=awq or int4) as an AutoAWQ "GEMM" checkpoint.

Layout written (what AutoAWQ / transformers / vLLM read, and what ``quant=awq`` loads):
  model.layers.{i}.self_attn.{q,k,v,o}_proj.{qweight,qzeros,scales}, mlp.{gate,up,down}_proj.*
      qweight int32 [K, N/8], qzeros int32 [K/G, N/8] (nibble order 0,2,4,6,1,3,5,7),
      scales fp16 [K/G, N]; biases (if any) as ``.bias``;
  every other tensor (embeddings, norms with AWQ's folded scales, lm_head) as it is in the model;
  config.json = the source config + ``quantization_config`` {quant_method: awq, bits: 4,
      group_size, zero_point: true, version: gemm}; tokenizer files copied from the source.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from infer.quant import dense_cpu
from infer.quant.int4 import int4_canonical_from_runtime
from infer.quant.quantize import to_autoawq

# checkpoint projection name of each (fused module, shard id)
_UNFUSED = {("qkv_proj", "q"): "q_proj", ("qkv_proj", "k"): "k_proj", ("qkv_proj", "v"): "v_proj",
            ("gate_up_proj", "gate"): "gate_proj", ("gate_up_proj", "up"): "up_proj"}
_COPY = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
         "merges.txt", "tokenizer.model", "chat_template.jinja", "generation_config.json")


def quantization_config(group_size: int) -> dict[str, object]:
    return {"quant_method": "awq", "bits": 4, "group_size": int(group_size), "zero_point": True,
            "version": "gemm", "modules_to_not_convert": None}


@torch.no_grad()
def awq_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], int]:
    """HF-named tensors of a processed int4 model and its group size."""
    out: dict[str, torch.Tensor] = {}
    group = None
    linears = {n: m for n, m in model.named_modules() if hasattr(m, "out_sizes") and hasattr(m, "quant")}
    for name, lin in linears.items():
        g = getattr(lin.quant, "group_size", None)
        if g is None:
            raise ValueError(f"{name} is not int4-quantized (quant={lin.quant.name}); use quant=awq, int4 or gptq")
        group = g
        codes, scales, zeros = int4_canonical_from_runtime(lin, g)
        parent, _, fused = name.rpartition(".")
        for sid in lin.shard_names:
            start, size = lin.shard_offset(sid) if len(lin.out_sizes) > 1 else (0, lin.out_features)
            proj = _UNFUSED.get((fused, sid), fused)
            prefix = f"model.{parent}.{proj}"
            qw, qz, sc = to_autoawq(codes[start : start + size], scales[start : start + size],
                                    zeros[start : start + size])
            out[f"{prefix}.qweight"], out[f"{prefix}.qzeros"], out[f"{prefix}.scales"] = qw, qz, sc
            if lin.bias is not None:
                out[f"{prefix}.bias"] = lin.bias.data[start : start + size].contiguous()
    for pname, p in model.named_parameters():
        mod = pname.rpartition(".")[0]
        if mod in linears:
            continue
        if pname == "head_packed":  # the LM head (tied: the embedding) packed for the CPU kernel
            args = model.args  # type: ignore[attr-defined]
            rows = torch.arange(args.vocab_size)
            head = dense_cpu.unpack_rows(p.data, rows, args.hidden_size).contiguous()
            out["model.embed_tokens.weight" if args.tie_word_embeddings else "lm_head.weight"] = head
            continue
        key = pname if pname.startswith("lm_head.") else f"model.{pname}"
        out[key] = p.data.contiguous()
    if group is None:
        raise ValueError("the model has no quantized Linear layers")
    return {k: v.cpu() for k, v in out.items()}, group


def save_awq_checkpoint(model: nn.Module, source_folder: Path | str, out_dir: Path | str) -> Path:
    """Write ``model`` (loaded with quant=awq, int4 or gptq) to ``out_dir`` in AutoAWQ GEMM layout;
    ``source_folder`` supplies config.json and the tokenizer. Returns ``out_dir``."""
    src, out = Path(source_folder), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tensors, group = awq_state_dict(model)
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((src / "config.json").read_text())
    cfg["quantization_config"] = quantization_config(group)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for f in _COPY:
        if (src / f).exists():
            shutil.copy(src / f, out / f)
    return out
