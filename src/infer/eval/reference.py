"""The reference configuration (default: same model, unquantized fp32, attention=torch,
kernels=torch, no speculation) and its on-disk cache of per-window log-probabilities and
greedy continuations, computed once per (model, reference config, token window).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import DictConfig, OmegaConf, open_dict

from infer.config_loader import config_dir

# the config subtrees that decide what the model computes
ENGINE_GROUPS = ("model", "attention", "quant", "spec", "kernels", "parallel")
# top-level keys that also change what the model computes (value when absent)
ENGINE_KEYS = {"kv_cache_dtype": "auto"}
CACHE_VERSION = 1


def derive_config(cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """A copy of ``cfg`` with ``group=option`` (replaces the group's node with
    configs/<group>/<option>.yaml) and ``dotted.key=value`` overrides applied."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        for ov in overrides:
            key, sep, val = str(ov).partition("=")
            if not sep:
                raise ValueError(f"eval.reference entry {ov!r} must look like group=option or key=value")
            group_dir = config_dir() / key
            if "." not in key and group_dir.is_dir():
                f = group_dir / f"{val}.yaml"
                if not f.exists():
                    opts = sorted(p.stem for p in group_dir.glob("*.yaml"))
                    raise ValueError(f"eval.reference: {key}={val} is not an option; allowed: {opts}")
                node = OmegaConf.load(f)
                if "defaults" in node:
                    del node["defaults"]
                out[key] = node
            else:
                OmegaConf.update(out, key, yaml.safe_load(val), merge=False)
    return out


def same_engine(a: DictConfig, b: DictConfig) -> bool:
    """Whether two configs compute the same thing (equal ENGINE_GROUPS subtrees and
    ENGINE_KEYS values)."""
    return all(_plain(a.get(g)) == _plain(b.get(g)) for g in ENGINE_GROUPS) and all(
        a.get(k, d) == b.get(k, d) for k, d in ENGINE_KEYS.items()
    )


def _plain(node: Any) -> Any:
    if isinstance(node, DictConfig):
        return OmegaConf.to_container(node, resolve=True)
    return node


def model_fingerprint(folder: Path) -> str:
    """Path, sizes and mtimes of the model folder's weight files (changes when weights do)."""
    files = sorted(list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")))
    parts = [str(folder.resolve())] + [f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]
    return "|".join(parts)


def reference_key(ref_cfg: DictConfig, model_folder: Path, topk: int | None) -> str:
    """Hash of everything the reference outputs depend on (except the tokens)."""
    cfg = {g: _plain(ref_cfg.get(g)) for g in ENGINE_GROUPS}
    # ENGINE_KEYS enter only when not at their default, so existing cache keys stay valid
    cfg.update({k: ref_cfg.get(k) for k, d in ENGINE_KEYS.items() if ref_cfg.get(k, d) != d})
    blob = json.dumps(
        {"v": CACHE_VERSION, "model": model_fingerprint(model_folder), "topk": topk, "cfg": cfg},
        sort_keys=True, default=str,
    )
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def tokens_key(token_ids: list[int]) -> str:
    return hashlib.sha1(torch.tensor(token_ids, dtype=torch.int64).numpy().tobytes()).hexdigest()[:20]


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    if path.suffix == ".json":
        tmp.write_text(json.dumps(obj))
    else:
        torch.save(obj, tmp)
    tmp.replace(path)


class ReferenceStore:
    """Per-window reference log-probs under ``root`` (one file per window).

    Full mode (topk None): ``logprobs`` fp16 [n-1, vocab] log-softmax (exact KL up to fp16
    rounding; ~0.1 MB per token for a 49k vocab). Top-k mode: ``top_lp`` fp32 [n-1, k] and
    ``top_ids`` int32 [n-1, k]; KL then lumps the rest of the vocabulary into one bucket
    (a lower bound, tight when the top k hold most of the mass). Both keep ``nll`` fp32 [n-1]
    (of the actual next tokens) and ``top1`` int64 [n-1].
    """

    def __init__(self, root: Path, topk: int | None) -> None:
        self.root = root
        self.topk = int(topk) if topk else None

    def path(self, token_ids: list[int]) -> Path:
        return self.root / f"{tokens_key(token_ids)}.pt"

    def has(self, token_ids: list[int]) -> bool:
        return self.path(token_ids).exists()

    def get(self, token_ids: list[int]) -> dict[str, torch.Tensor]:
        return torch.load(self.path(token_ids), weights_only=True)

    def put(self, token_ids: list[int], logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """Compress fp32 logits [n, vocab] of window ``token_ids`` and save them."""
        lp = torch.log_softmax(logits[:-1].float(), dim=-1)
        nxt = torch.as_tensor(token_ids[1:], dtype=torch.long)
        rec: dict[str, torch.Tensor] = {
            "nll": -lp.gather(1, nxt[:, None]).squeeze(1),
            "top1": lp.argmax(-1),
        }
        if self.topk is None:
            rec["logprobs"] = lp.half()
        else:
            v, i = lp.topk(self.topk, dim=-1)
            rec["top_lp"], rec["top_ids"] = v, i.int()
        _atomic_save(rec, self.path(token_ids))
        return rec

    def greedy_path(self, prompts: list[list[int]], max_tokens: int) -> Path:
        h = hashlib.sha1(json.dumps([prompts, max_tokens]).encode()).hexdigest()[:20]
        return self.root / f"greedy-{h}.json"

    def get_greedy(self, prompts: list[list[int]], max_tokens: int) -> list[list[int]] | None:
        p = self.greedy_path(prompts, max_tokens)
        return json.loads(p.read_text()) if p.exists() else None

    def put_greedy(self, prompts: list[list[int]], max_tokens: int, outs: list[list[int]]) -> None:
        _atomic_save(outs, self.greedy_path(prompts, max_tokens))


def build_reference(ref_cfg: DictConfig, max_len: int, num_seqs: int) -> Any:
    """Build the reference engine, sized for ``num_seqs`` sequences of ``max_len`` tokens."""
    from infer.build import build

    c = copy.deepcopy(ref_cfg)
    with open_dict(c):
        c.engine.max_model_len = int(max_len)
        c.engine.kv_cache_tokens = int(max_len) * max(1, int(num_seqs))
        c.engine.max_num_seqs = max(1, int(num_seqs))
        c.engine.max_num_batched_tokens = max(int(c.engine.max_num_batched_tokens), int(max_len))
    return build(c)
